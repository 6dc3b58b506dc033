"""ancsync.blocking from plain threads against the emulator over real TLS: state, telemetry,
an emergency and commands, as the asynchronous API does them."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
from device import THING, orchestrator_options

from ancsync import Command, InvalidPayload, NotStarted, OperatorCredentials, ShadowOperator
from ancsync.blocking import DataSyncOrchestrator
from ancsync.emulator.server import Emulator
from ancsync.models import new_id, utc_now
from ancsync.mqtt.backoff import BackoffPolicy
from ancsync.topics import commands_topic

TIMEOUT = 20
FAST = BackoffPolicy(base=0.02, cap=0.1)
THREADS, RECORDS = 4, 25


def blocking_device(emulator: Emulator, tmp_path: Path) -> DataSyncOrchestrator:
    return DataSyncOrchestrator(**orchestrator_options(emulator, tmp_path, batch_size=10))


def anc(n: int) -> dict[str, float]:
    return {"latency_ms": 30.0 + n, "cancellation_db": 42.5, "snr_improvement_db": 38.2}


async def test_the_blocking_api_from_plain_threads(emulator: Emulator, tmp_path: Path) -> None:
    device = blocking_device(emulator, tmp_path)
    applied: list[tuple[dict[str, Any], str]] = []
    rebooted = threading.Event()

    @device.on_desired_state
    def apply(changes: dict[str, Any]) -> dict[str, Any]:
        applied.append((changes, threading.current_thread().name))
        return changes

    device.on_command("reboot", lambda command: rebooted.set())

    def control_loop() -> Any:
        device.start()
        device.wait_connected(TIMEOUT)
        device.update_anc_state(enabled=True, intensity=0.5, algorithm="nlms", wait=True)
        workers = [
            threading.Thread(
                target=lambda: [device.publish_metrics(anc_metrics=anc(i)) for i in range(RECORDS)]
            )
            for _ in range(THREADS)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        with pytest.raises(InvalidPayload, match="latency_ms"):
            device.publish_metrics(anc_metrics={"cancellation_db": 1.0})  # clear error, no loss
        return device.report_emergency(
            is_emergency=True, predicted_class="fire_alarm", confidence=0.9, action="anc_bypassed"
        )

    credentials = OperatorCredentials.from_certs_dir(emulator.certs.root, port=emulator.port)
    try:
        with anyio.fail_after(TIMEOUT):
            event = await anyio.to_thread.run_sync(control_loop)
            await emulator.rules.wait_for(
                lambda sink: (
                    sink.record_count(THING, "anc") == THREADS * RECORDS
                    and len(sink.emergencies(THING)) == 1
                )
            )
            async with ShadowOperator(credentials.connection(reconnect=FAST), THING) as cloud:
                with cloud.watch() as documents:
                    await cloud.update_desired({"anc_intensity": 0.9})
                    async for document in documents:
                        if document.reported.get("anc_intensity") == 0.9 and document.converged:
                            break
                order = Command(
                    command_id=new_id(), command="reboot", params={}, issued_at=utc_now()
                )
                await cloud.connection.publish(commands_topic(THING), order)
                await anyio.to_thread.run_sync(rebooted.wait, TIMEOUT)
    finally:
        await anyio.to_thread.run_sync(device.stop)

    [stored] = emulator.rules.emergencies(THING)
    assert stored.event_id == event.event_id
    assert emulator.rules.gaps(THING) == []
    [(changes, thread)] = applied
    assert changes == {"anc_intensity": 0.9}
    assert thread != "ancsync"  # a worker thread, never the event loop's
    assert rebooted.is_set()
    status = device.get_status()
    assert status["running"] is False
    assert status["telemetry"]["records"]["anc"]["delivered"] == THREADS * RECORDS


def test_calls_before_start_say_what_to_do(tmp_path: Path) -> None:
    device = DataSyncOrchestrator(
        thing_name=THING, endpoint="127.0.0.1", tls=False, data_dir=tmp_path
    )
    with pytest.raises(NotStarted, match=r"call start\(\) first"):
        device.publish_metrics(anc_metrics=anc(0))
    device.stop()  # not started: nothing to do
