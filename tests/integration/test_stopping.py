"""Stopping by cancellation, as Ctrl-C does: an ordinary path that loses nothing accepted.

A device under load is cancelled in its task group. Every record it accepted must end up
delivered (and in the emulator's rules sink) or in its durable store for the next start; an
emergency whose report was under way is delivered or stored; the shutdown keeps its deadline
even when the broker is gone. Every wait is for an event or a stored row, under ``fail_after``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup
from device import THING, orchestrator_options

from ancsync import DataSyncOrchestrator
from ancsync.durable.store import DurableStore, StoredLane, StoredMessage
from ancsync.emulator.server import Emulator
from ancsync.models import utc_now

STOP_TIMEOUT = 3.0
RECORDS = 4000


def anc_record(n: int) -> dict[str, Any]:
    return {
        "latency_ms": 30 + n % 10,
        "cancellation_db": 40.0,
        "snr_improvement_db": 35.0,
        "timestamp": utc_now(),
    }


def device(emulator: Emulator, tmp_path: Path, **options: Any) -> DataSyncOrchestrator:
    return DataSyncOrchestrator(
        **orchestrator_options(
            emulator,
            tmp_path,
            batch_size=50,
            batch_interval=0.05,
            max_buffer_size=RECORDS,
            stop_timeout=STOP_TIMEOUT,
            **options,
        )
    )


@asynccontextmanager
async def running(orchestrator: DataSyncOrchestrator) -> AsyncIterator[TaskGroup]:
    """Run ``orchestrator`` in a task group until connected; cancel the group to stop it."""
    async with anyio.create_task_group() as tg:
        await tg.start(orchestrator.run)
        await orchestrator.wait_connected(10)
        yield tg


def stored(data_dir: Path, lane: StoredLane) -> list[StoredMessage]:
    """What the device left in its durable store."""
    with DurableStore.in_dir(data_dir) as store:
        return store.pending(lane)


def stored_records(data_dir: Path) -> int:
    return sum(message.records for message in stored(data_dir, "telemetry"))


async def test_cancelling_a_busy_device_delivers_or_stores_every_record(
    emulator: Emulator, tmp_path: Path
) -> None:
    orchestrator = device(emulator, tmp_path)
    with anyio.fail_after(30):
        async with running(orchestrator) as tg:
            for n in range(RECORDS):
                orchestrator.publish_metrics(anc_metrics=anc_record(n))
                if n % 200 == 0:
                    await anyio.lowlevel.checkpoint()  # the control loop yields now and then
            tg.cancel_scope.cancel()  # what asyncio.run does on Ctrl-C

        telemetry = orchestrator.get_status()["telemetry"]
        anc = telemetry["records"]["anc"]
        assert anc["accepted"] == RECORDS
        assert (anc["dropped"], anc["failed"], anc["unsent"], anc["unconfirmed"]) == (0, 0, 0, 0)
        assert anc["delivered"] + anc["stored"] == RECORDS
        assert anc["delivered"] > 0
        # What was acknowledged reached the cloud; what was not waits in the store.
        await emulator.rules.wait_for(
            lambda sink: sink.record_count(THING, "anc") >= anc["delivered"]
        )
    assert emulator.rules.record_count(THING, "anc") == anc["delivered"]
    assert stored_records(tmp_path / "device-data") == anc["stored"]
    assert emulator.rules.gaps(THING) == []


async def test_an_emergency_under_way_when_cancelled_is_delivered_or_stored(
    emulator: Emulator, tmp_path: Path
) -> None:
    orchestrator = device(emulator, tmp_path)
    reported: list[str] = []
    with anyio.fail_after(30):
        async with running(orchestrator) as tg:

            async def report(n: int) -> None:
                event = await orchestrator.report_emergency(
                    is_emergency=True,
                    predicted_class="fire_alarm",
                    confidence=0.9,
                    action=f"bypass {n}",
                )
                reported.append(event.event_id)

            for n in range(20):
                tg.start_soon(report, n)
            await anyio.wait_all_tasks_blocked()  # the reports are being written
            tg.cancel_scope.cancel()

        left = {message.msg_id for message in stored(tmp_path / "device-data", "emergency")}
        await emulator.rules.wait_for(
            lambda sink: len(sink.emergencies(THING)) + len(left) >= len(reported)
        )
    delivered = {event.event_id for event in emulator.rules.emergencies(THING)}
    # Every event whose report returned is in the cloud or in the store, never neither.
    assert set(reported) <= delivered | left
    assert not (delivered & left)  # an acknowledged event does not stay stored


async def test_cancelled_while_the_broker_is_gone_it_stores_and_keeps_its_deadline(
    emulator: Emulator, tmp_path: Path
) -> None:
    orchestrator = device(emulator, tmp_path)
    with anyio.fail_after(30):
        async with running(orchestrator) as tg:
            with orchestrator.connection.events() as events:
                await emulator.broker.stop()  # the network is gone
                async for event in events:
                    if event.kind == "disconnected":
                        break
            for n in range(500):
                orchestrator.publish_metrics(anc_metrics=anc_record(n))
            stopping = anyio.current_time()
            tg.cancel_scope.cancel()
        took = anyio.current_time() - stopping

    assert took < STOP_TIMEOUT + 1  # the shutdown keeps its deadline
    telemetry = orchestrator.get_status()["telemetry"]
    assert telemetry["stored"] == 500
    assert stored_records(tmp_path / "device-data") == 500
