"""DataSyncOrchestrator end to end against the emulator, over real TLS with dev certificates.

The cloud side is a :class:`~ancsync.tools.operator.ShadowOperator` with the operator
certificate: it changes desired state, sends commands and plays the emergency Lambda (an
``emergency_ack`` for each stored event). Every wait is for a message, an event or a stored
row, under ``fail_after``.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from anyio.abc import TaskStatus
from device import THING, cloud, orchestrator_options, until
from helpers import assert_typed

import ancsync.orchestrator
from ancsync import (
    Command,
    DataSyncOrchestrator,
    DeviceStatus,
    ShadowOperator,
    utc_now,
)
from ancsync.durable.store import STORE_FILE_NAME, DurableStore
from ancsync.emulator.server import Emulator
from ancsync.errors import ConfigError, InvalidPayload, NotStarted
from ancsync.models import new_id
from ancsync.mqtt.backoff import BackoffPolicy
from ancsync.status import OrchestratorStatus
from ancsync.telemetry import TelemetryPublisher
from ancsync.topics import commands_topic, status_topic

TIMEOUT = 15
FAST = BackoffPolicy(base=0.02, cap=0.1)


def orchestrator(emulator: Emulator, tmp_path: Path, **options: Any) -> DataSyncOrchestrator:
    return DataSyncOrchestrator(**orchestrator_options(emulator, tmp_path, **options))


def command(name: str, **params: Any) -> Command:
    return Command(command_id=new_id(), command=name, params=params, issued_at=utc_now())


async def test_desired_change_command_emergency_and_telemetry(
    emulator: Emulator, tmp_path: Path
) -> None:
    applied: list[dict[str, Any]] = []
    modes: list[Command] = []
    mode_set, acked = anyio.Event(), anyio.Event()
    device = orchestrator(emulator, tmp_path)

    @device.on_desired_state
    async def apply(changes: dict[str, Any]) -> dict[str, Any]:
        applied.append(changes)
        return changes

    def set_mode(received: Command) -> None:
        modes.append(received)
        mode_set.set()

    device.on_command("set_mode", set_mode)
    device.on_command("emergency_ack", lambda _: acked.set())

    async def acknowledge(topic: str, event: Any) -> None:  # the emergency Lambda's job
        ack = command("emergency_ack", event_id=event["event_id"])
        await operator.connection.publish(commands_topic(THING), ack)

    with anyio.fail_after(TIMEOUT):
        async with cloud(emulator) as operator, device:
            operator.connection.subscribe(f"anc/devices/{THING}/emergency", acknowledge)
            await device.wait_connected()
            await device.update_anc_state(enabled=True, intensity=0.5, algorithm="nlms", wait=True)

            with operator.watch() as documents:
                await operator.update_desired({"anc_intensity": 0.9, "anc_algorithm": "fxlms"})
                converged = await until(
                    documents, lambda d: d.reported.get("anc_intensity") == 0.9 and d.converged
                )

            order = command("set_mode", mode="transparency")
            await operator.connection.publish(commands_topic(THING), order)
            await operator.connection.publish(commands_topic(THING), order)  # a redelivery
            await mode_set.wait()

            event = await device.report_emergency(
                {"is_emergency": True, "predicted_class": "fire_alarm", "confidence": 0.94},
                action="anc_bypassed",
            )
            await acked.wait()
            await emulator.rules.wait_for(lambda sink: len(sink.emergencies(THING)) == 1)

            for i in range(12):
                device.publish_metrics(
                    anc_metrics={
                        "latency_ms": 35.0 + i,
                        "cancellation_db": 42.5,
                        "snr_improvement_db": 38.2,
                    },
                )
            await emulator.rules.wait_for(lambda sink: sink.record_count(THING, "anc") == 12)
            status = device.get_status()

    assert applied == [{"anc_intensity": 0.9, "anc_algorithm": "fxlms"}]
    assert converged.reported["anc_enabled"] is True
    assert converged.reported["firmware_version"] == "1.2.3"
    assert [m.params for m in modes] == [{"mode": "transparency"}]
    [stored] = emulator.rules.emergencies(THING)
    assert stored.event_id == event.event_id
    assert stored.payload["predicted_class"] == "fire_alarm"
    assert emulator.rules.gaps(THING) == []

    orjson.dumps(status)  # JSON-serialisable as promised
    assert_typed(status, OrchestratorStatus)  # exactly the documented keys, at every level
    assert status["running"] is True
    assert status["connection"]["state"] == "connected"
    assert status["shadow"]["in_sync"] is True
    assert status["shadow"]["reported"]["anc_algorithm"] == "fxlms"
    assert status["telemetry"]["records"]["anc"]["delivered"] == 12
    assert status["telemetry"]["dropped"] == 0
    assert status["emergency"]["reported"] == 1
    assert status["emergency"]["cloud_acknowledged"] == 1
    assert device.cloud_acknowledged() == {event.event_id}
    assert status["commands"]["handled"] == 2  # set_mode and emergency_ack
    assert status["commands"]["duplicates"] == 1
    assert all(c["running"] and c["last_error"] is None for c in status["components"].values())
    assert device.get_status()["running"] is False


async def test_cancelled_run_forever_flushes_and_goes_offline(
    emulator: Emulator, tmp_path: Path
) -> None:
    device = orchestrator(emulator, tmp_path, batch_interval=30.0)  # only stop() sends them
    statuses: list[DeviceStatus] = []
    offline = anyio.Event()

    def follow(topic: str, status: DeviceStatus) -> None:
        statuses.append(status)
        if status.status == "offline":
            offline.set()

    with anyio.fail_after(TIMEOUT):
        async with cloud(emulator) as operator:
            operator.connection.subscribe(status_topic(THING), follow, DeviceStatus)
            async with anyio.create_task_group() as tg:
                await tg.start(device.run_forever)
                await device.wait_connected()
                await device.update_anc_state(intensity=0.3, wait=True)
                device.publish_metrics(system_metrics={"battery_level": 85, "cpu_usage": 45.2})
                tg.cancel_scope.cancel()  # what asyncio.run does on Ctrl-C
            await offline.wait()
            document = await operator.get()
            await emulator.rules.wait_for(lambda sink: sink.record_count(THING, "system") == 1)

    assert document.reported["status"] == "offline"
    assert statuses[-1].status == "offline"
    assert device.get_status()["running"] is False
    assert device.get_status()["connection"]["state"] == "stopped"


async def test_a_failing_component_is_restarted_and_the_others_carry_on(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = TelemetryPublisher._serve
    calls = 0

    async def fails_once(self: TelemetryPublisher, task_status: TaskStatus[None]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("telemetry broke")
        await real(self, task_status)

    monkeypatch.setattr(TelemetryPublisher, "_serve", fails_once)
    device = orchestrator(emulator, tmp_path)
    with anyio.fail_after(TIMEOUT):
        async with device:
            await device.update_anc_state(intensity=0.6, wait=True)  # the shadow works
            device.publish_metrics(
                audio_metrics={"noise_type": "office", "confidence": 0.9, "rms": 0.4}
            )
            await emulator.rules.wait_for(lambda sink: sink.record_count(THING, "audio") == 1)
            telemetry = device.get_status()["components"]["telemetry"]
    assert telemetry["restarts"] == 1
    assert telemetry["last_error"]["message"] == "telemetry broke"
    assert telemetry["running"] is True


async def test_a_bad_desired_value_is_reported_not_applied(
    emulator: Emulator, tmp_path: Path
) -> None:
    applied: list[dict[str, Any]] = []
    device = orchestrator(emulator, tmp_path)
    device.on_desired_state(lambda changes: applied.append(changes) or changes)
    with anyio.fail_after(TIMEOUT):
        async with cloud(emulator) as operator, device:
            await device.update_anc_state(intensity=0.5, wait=True)
            operator_raw = ShadowOperator(operator.connection, THING, desired_model=None)
            with operator.watch() as documents:
                await operator_raw.update_desired({"anc_intensity": 7})
                document = await until(documents, lambda d: "last_error" in d.reported)
    assert applied == []
    assert document.reported["anc_intensity"] == 0.5
    assert "anc_intensity" in document.reported["last_error"]


def test_settings_come_from_arguments_env_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "ancsync.json"
    config.write_text(
        orjson.dumps(
            {
                "iot": {"thing_name": "anc-device-009", "endpoint": "127.0.0.1", "tls": False},
                "telemetry": {"batch_size": 25},
            }
        ).decode()
    )
    monkeypatch.setenv("TELEMETRY_BATCH_INTERVAL", "7")
    device = DataSyncOrchestrator.from_config_file(config)
    assert device.thing_name == "anc-device-009"
    assert device.settings.telemetry.batch_size == 25
    assert device.settings.telemetry.batch_interval == 7
    device.store.close()  # never run: free its data directory (a store is locked) for the next

    monkeypatch.setenv("ANCSYNC_CONFIG", str(config))
    device = DataSyncOrchestrator.from_env(batch_size=3)
    device.store.close()
    assert device.settings.telemetry.batch_size == 3

    monkeypatch.setenv("IOT_PORT", "eighty")
    with pytest.raises(ConfigError, match="IOT_PORT"):
        DataSyncOrchestrator.from_env()


async def test_bad_calls_raise_clear_errors_and_change_nothing(tmp_path: Path) -> None:
    device = DataSyncOrchestrator(
        thing_name=THING, endpoint="127.0.0.1", tls=False, port=1, data_dir=tmp_path
    )
    with pytest.raises(InvalidPayload, match="anc_intensity"):
        await device.update_anc_state(intensity=1.5)
    with pytest.raises(InvalidPayload, match="latency_ms"):
        device.publish_metrics(anc_metrics={"cancellation_db": 1.0, "snr_improvement_db": 1.0})
    with pytest.raises(InvalidPayload, match="confidence"):
        await device.report_emergency(is_emergency=True, predicted_class="siren", action="none")
    status = device.get_status()
    assert status["shadow"]["pending_keys"] == []
    assert status["telemetry"]["depth"] == 0
    assert status["emergency"]["reported"] == 0


@pytest.mark.parametrize("data_dir", ["device-data", None], ids=["data_dir", "default-dir"])
async def test_an_emergency_reported_offline_is_sent_by_the_next_run(
    emulator: Emulator, tmp_path: Path, data_dir: str | None
) -> None:
    """Emergencies are durable with or without ``data_dir`` (then in ``$XDG_STATE_HOME``)."""
    where = None if data_dir is None else tmp_path / data_dir
    with socket.socket() as closed:  # a port nothing listens on: the device is offline
        closed.bind(("127.0.0.1", 0))
        offline_port = closed.getsockname()[1]
    pair = emulator.certs.device(THING)
    offline = DataSyncOrchestrator(
        THING,
        "127.0.0.1",
        pair.cert,
        pair.key,
        emulator.certs.ca,
        port=offline_port,
        data_dir=where,
        stop_timeout=0.5,
        connection_options={"reconnect": FAST},
    )
    with anyio.fail_after(TIMEOUT):
        async with offline:
            event = await offline.report_emergency(
                is_emergency=True, predicted_class="siren", confidence=0.8, action="anc_bypassed"
            )
        assert offline.get_status()["emergency"]["pending"] == 1
        async with orchestrator(emulator, tmp_path, data_dir=where) as online:  # same store
            await emulator.rules.wait_for(lambda sink: len(sink.emergencies(THING)) == 1)
            await online.emergencies.wait_acknowledged()
    [stored] = emulator.rules.emergencies(THING)
    assert stored.event_id == event.event_id
    assert online.get_status()["emergency"]["resent_from_store"] == 1


async def test_the_store_is_opened_by_run_in_a_worker_thread(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow disk or a corrupt file's recovery never runs on the event loop's thread."""
    corrupt = tmp_path / "data" / STORE_FILE_NAME
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"not a database" * 100)
    opened_in: list[threading.Thread] = []
    real_open = DurableStore.open

    def recording_open(store: DurableStore) -> None:
        opened_in.append(threading.current_thread())
        real_open(store)

    monkeypatch.setattr(DurableStore, "open", recording_open)
    device = orchestrator(emulator, tmp_path, data_dir=tmp_path / "data")
    assert corrupt.read_bytes().startswith(b"not a database")  # untouched until run
    with anyio.fail_after(TIMEOUT):
        async with device:
            await device.report_emergency(
                is_emergency=True, predicted_class="siren", confidence=0.9, action="anc_bypassed"
            )
            await emulator.rules.wait_for(lambda sink: len(sink.emergencies(THING)) == 1)
    assert opened_in
    assert threading.main_thread() not in opened_in
    assert list(corrupt.parent.glob(f"{STORE_FILE_NAME}.corrupt-*"))


async def test_calls_after_stop_raise_not_started(emulator: Emulator, tmp_path: Path) -> None:
    device = orchestrator(emulator, tmp_path)
    with anyio.fail_after(TIMEOUT):
        async with device:
            await device.wait_connected()
    with pytest.raises(NotStarted, match="stopped"):
        device.publish_metrics(system_metrics={"battery_level": 85, "cpu_usage": 45.2})
    with pytest.raises(NotStarted, match="stopped"):
        await device.update_anc_state(intensity=0.2)
    with pytest.raises(NotStarted, match="stopped"):
        await device.report_emergency(
            is_emergency=True, predicted_class="siren", confidence=0.8, action="none"
        )
    with pytest.raises(NotStarted, match="already stopped; create a new one"):
        await device.start()


class _Clock:
    """time.monotonic for the orchestrator only: the test moves it forward by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


async def test_a_desired_change_reports_a_fresh_uptime(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = _Clock()
    monkeypatch.setattr(ancsync.orchestrator, "time", clock)
    device = orchestrator(emulator, tmp_path)
    device.on_desired_state(lambda changes: changes)
    with anyio.fail_after(TIMEOUT):
        async with cloud(emulator) as operator, device:
            await device.wait_connected()
            await device.update_anc_state(intensity=0.5, wait=True)
            clock.now += 42  # the device has been up 42 s when the cloud asks for a change
            with operator.watch() as documents:
                await operator.update_desired({"anc_intensity": 0.9})
                converged = await until(
                    documents, lambda d: d.reported.get("anc_intensity") == 0.9 and d.converged
                )
    assert converged.reported["uptime"] == 42


# A shielded task that never ends cannot be interrupted by fail_after: pytest-timeout is the net.
@pytest.mark.timeout(60)
@pytest.mark.parametrize("after", [0.0, 0.001, 0.005, 0.02])
async def test_cancelled_while_starting_it_stops_at_once(
    emulator: Emulator, tmp_path: Path, after: float
) -> None:
    device = orchestrator(emulator, tmp_path)
    with anyio.fail_after(TIMEOUT):
        with anyio.move_on_after(after):
            async with device:
                await anyio.sleep_forever()
    assert device.get_status()["connection"]["state"] == "stopped"


async def test_a_job_runs_through_the_orchestrator(emulator: Emulator, tmp_path: Path) -> None:
    device = orchestrator(emulator, tmp_path)
    seen: list[dict[str, Any]] = []

    @device.on_job("recalibrate")
    async def recalibrate(job: Any) -> None:
        seen.append(job.document)
        await job.progress(step="measure", percent=50)
        await job.succeed({"offset_db": "0.4"})

    with anyio.fail_after(TIMEOUT):
        async with device:
            await device.wait_connected()
            await emulator.jobs.create_job("cal-1", [THING], {"operation": "recalibrate"})
            status = await emulator.jobs.wait_for_status("cal-1", THING, "SUCCEEDED", "FAILED")
    assert status == "SUCCEEDED"
    assert seen == [{"operation": "recalibrate"}]
