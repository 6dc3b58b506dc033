"""EmergencyReporter against the embedded broker over real TLS: durable, QoS 1, never lost."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest
from device import THING, device_connection
from publish_log import PublishLog

from ancsync import (
    BufferFull,
    EmergencyInput,
    EmergencyReporter,
    InvalidPayload,
    PublishTimeout,
    StorageError,
)
from ancsync.codec import decode_model
from ancsync.durable.store import STORE_FILE_NAME, DurableStore, StoredMessage
from ancsync.emulator.broker import EmbeddedBroker
from ancsync.emulator.certs import DevCerts
from ancsync.models import EmergencyEvent
from ancsync.mqtt.backoff import BackoffPolicy
from ancsync.mqtt.outbox import DEFAULT_LIMITS, Lane, LaneLimits
from ancsync.topics import emergency_topic

FAST_RECONNECT = BackoffPolicy(base=0.05, cap=0.2)
TOPIC = emergency_topic(THING)


def alarm(name: str = "fire_alarm", **extra: Any) -> dict[str, Any]:
    return {
        "is_emergency": True,
        "predicted_class": name,
        "confidence": 0.94,
        "action": "anc_bypassed",
        **extra,
    }


@pytest.fixture
def store(tmp_path: Path) -> AsyncIterator[DurableStore] | Any:
    with DurableStore.in_dir(tmp_path / "data") as opened:
        yield opened


async def unused_port(certs: DevCerts) -> int:
    async with EmbeddedBroker(certs) as probe:
        return probe.port


async def test_an_emergency_is_stored_sent_flat_and_removed_on_puback(
    dev_certs: DevCerts, broker: tuple[EmbeddedBroker, PublishLog], store: DurableStore
) -> None:
    server, log = broker
    with anyio.fail_after(10):
        async with (
            device_connection(dev_certs, server.port) as iot,
            EmergencyReporter(iot, store=store) as reporter,
        ):
            event = await reporter.report_emergency(alarm(), wait_for_ack=True, timeout=5)

            assert (event.device_id, event.seq, event.severity) == (THING, 1, "critical")
            # the broker acks before it hands the publish on: wait for it to arrive
            await log.wait_for(lambda log: len(log.on(TOPIC)) == 1)
            (payload,) = log.on(TOPIC)
            assert decode_model(payload, EmergencyEvent) == event
            await reporter.wait_acknowledged()
            assert store.pending() == []
            status = reporter.get_status()
            assert (status["reported"], status["acknowledged"], status["pending"]) == (1, 1, 0)
            assert status["oldest_pending_age_s"] is None

            second = await reporter.report_emergency(
                EmergencyInput(**alarm("glass_break", severity="warning"))
            )
            assert second.seq == 2
            assert second.event_id != event.event_id
            await reporter.wait_acknowledged()
            await log.wait_for(lambda log: len(log.on(TOPIC)) == 2)
            assert [decode_model(p, EmergencyEvent).seq for p in log.on(TOPIC)] == [1, 2]


async def test_when_report_emergency_returns_the_event_is_on_disk(
    dev_certs: DevCerts, tmp_path: Path
) -> None:
    """Broker unreachable: the call still returns, and another connection to the file sees it."""
    port = await unused_port(dev_certs)
    with anyio.fail_after(10), DurableStore.in_dir(tmp_path) as store:
        async with (
            device_connection(dev_certs, port, reconnect=FAST_RECONNECT) as iot,
            EmergencyReporter(iot, store=store) as reporter,
        ):
            event = await reporter.report_emergency(alarm())

            # Another SQLite connection, read-only (a second DurableStore would be refused:
            # the store is locked for its process).
            path = (tmp_path / STORE_FILE_NAME).resolve()
            with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as other_reader:
                ((msg_id, payload),) = other_reader.execute("SELECT msg_id, payload FROM messages")
            assert msg_id == event.event_id
            assert decode_model(payload, EmergencyEvent) == event
            status = reporter.get_status()
            assert status["pending"] == 1
            assert status["oldest_pending_age_s"] >= 0


async def test_waiting_for_an_ack_that_does_not_come_times_out_and_keeps_the_event(
    dev_certs: DevCerts, store: DurableStore
) -> None:
    port = await unused_port(dev_certs)
    with anyio.fail_after(10):
        async with (
            device_connection(dev_certs, port, reconnect=FAST_RECONNECT) as iot,
            EmergencyReporter(iot, store=store) as reporter,
        ):
            with pytest.raises(PublishTimeout, match="may still be delivered"):
                await reporter.report_emergency(alarm(), wait_for_ack=True, timeout=0.2)
            assert len(store.pending("emergency")) == 1
            assert reporter.get_status()["pending"] == 1


async def test_a_bad_event_is_refused_by_field_and_nothing_is_stored_or_sent(
    dev_certs: DevCerts, broker: tuple[EmbeddedBroker, PublishLog], store: DurableStore
) -> None:
    server, log = broker
    with anyio.fail_after(10):
        async with (
            device_connection(dev_certs, server.port) as iot,
            EmergencyReporter(iot, store=store) as reporter,
        ):
            with pytest.raises(InvalidPayload, match="confidence"):
                await reporter.report_emergency(alarm(confidence=1.5))
            with pytest.raises(InvalidPayload, match="predicted_class"):
                await reporter.report_emergency({"is_emergency": True, "action": "none"})
            with pytest.raises(InvalidPayload, match="mapping"):
                await reporter.report_emergency("fire!")  # type: ignore[arg-type]

            # the session keeps working: a good event after the bad ones goes out as seq 1
            event = await reporter.report_emergency(alarm(), wait_for_ack=True, timeout=5)
            assert event.seq == 1
            await log.wait_for(lambda log: len(log.on(TOPIC)) >= 1)
            assert len(log.on(TOPIC)) == 1
            assert reporter.get_status()["reported"] == 1


async def test_a_full_store_is_a_clear_error_and_nothing_reported_is_lost(
    dev_certs: DevCerts, store: DurableStore
) -> None:
    port = await unused_port(dev_certs)  # offline: nothing is acknowledged, the file only grows
    with anyio.fail_after(10):
        async with (
            device_connection(dev_certs, port, reconnect=FAST_RECONNECT) as iot,
            EmergencyReporter(iot, store=store) as reporter,
        ):
            # SQLite's own size cap gives the same SQLITE_FULL as a full disk (test_store also
            # fills a real file system).
            (pages,) = store._conn.execute("PRAGMA page_count").fetchone()
            store._conn.execute(f"PRAGMA max_page_count = {pages + 2}")
            reported, error = await report_until_error(reporter)

            assert "disk is full" in str(error)
            assert [m.msg_id for m in store.pending()] == [e.event_id for e in reported]
            status = reporter.get_status()
            assert status["reported"] == status["pending"] == len(reported)
            assert "disk is full" in status["last_error"]


async def report_until_error(
    reporter: EmergencyReporter,
) -> tuple[list[EmergencyEvent], StorageError]:
    reported: list[EmergencyEvent] = []
    for i in range(500):
        try:
            reported.append(await reporter.report_emergency(alarm(f"alarm-{i}" + "x" * 100)))
        except StorageError as error:
            return reported, error
    raise AssertionError("the store never filled up")


async def test_events_stored_by_a_previous_run_are_sent_with_their_ids_on_start(
    dev_certs: DevCerts, tmp_path: Path
) -> None:
    port = await unused_port(dev_certs)
    data = tmp_path / "data"
    with anyio.fail_after(15):
        with DurableStore.in_dir(data) as store:
            async with (
                device_connection(dev_certs, port, reconnect=FAST_RECONNECT) as iot,
                EmergencyReporter(iot, store=store) as reporter,
            ):
                earlier = [await reporter.report_emergency(alarm(f"a{i}")) for i in range(3)]

        log = PublishLog()
        server = EmbeddedBroker(dev_certs, port=port)
        server.add_publish_listener(log)
        with DurableStore.in_dir(data) as store:
            async with (
                server,
                device_connection(dev_certs, port) as iot,
                EmergencyReporter(iot, store=store) as reporter,
            ):
                later = await reporter.report_emergency(alarm("a3"))
                await reporter.wait_acknowledged()
                await log.wait_for(lambda log: len(log.on(TOPIC)) >= 4)
                sent = [decode_model(p, EmergencyEvent) for p in log.on(TOPIC)]
                assert sent == [*earlier, later]
                assert later.seq == 4  # the counter survived the restart
                assert reporter.get_status()["resent_from_store"] == 3
                assert store.pending() == []


async def test_a_corrupt_store_file_is_moved_aside_and_reporting_works(
    dev_certs: DevCerts,
    broker: tuple[EmbeddedBroker, PublishLog],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, log = broker
    (tmp_path / STORE_FILE_NAME).write_bytes(b"\x00garbage" * 1000)
    with anyio.fail_after(10):
        with caplog.at_level(logging.ERROR, logger="ancsync.durable.store"):
            store = DurableStore.in_dir(tmp_path)
        assert "moved it to" in caplog.text
        with store:
            async with (
                device_connection(dev_certs, server.port) as iot,
                EmergencyReporter(iot, store=store) as reporter,
            ):
                event = await reporter.report_emergency(alarm(), wait_for_ack=True, timeout=5)
                await log.wait_for(lambda log: len(log.on(TOPIC)) >= 1)
                assert decode_model(log.on(TOPIC)[0], EmergencyEvent) == event
        assert len(moved_aside(tmp_path)) == 1


def moved_aside(directory: Path) -> list[Path]:
    return list(directory.glob(f"{STORE_FILE_NAME}.corrupt-*"))


async def test_an_event_the_connection_cannot_take_yet_is_offered_again_until_delivered(
    dev_certs: DevCerts, tmp_path: Path
) -> None:
    """The emergency lane holds one message: the second event is refused (BufferFull) while
    offline, stays stored, and is queued again and delivered once the lane drains."""
    port = await unused_port(dev_certs)
    log = PublishLog()
    server = EmbeddedBroker(dev_certs, port=port)
    server.add_publish_listener(log)
    one_slot = {**DEFAULT_LIMITS, Lane.EMERGENCY: LaneLimits(max_messages=1, max_bytes=10_000)}
    with anyio.fail_after(15), DurableStore.in_dir(tmp_path) as store:
        async with (
            device_connection(
                dev_certs, port, reconnect=FAST_RECONNECT, lane_limits=one_slot
            ) as iot,
            EmergencyReporter(iot, store=store, retry_interval=0.05) as reporter,
        ):
            first = await reporter.report_emergency(alarm("first"))
            second = await reporter.report_emergency(alarm("second"))
            assert "full" in reporter.get_status()["last_error"]
            assert [m.msg_id for m in store.pending()] == [first.event_id, second.event_id]

            async with server:
                await reporter.wait_acknowledged()
                await log.wait_for(lambda log: len(log.on(TOPIC)) >= 2)
                sent = [decode_model(p, EmergencyEvent).event_id for p in log.on(TOPIC)]
                assert sent == [first.event_id, second.event_id]
                assert store.pending() == []


async def test_a_refused_write_leaves_no_gap_in_the_seq(
    dev_certs: DevCerts, tmp_path: Path
) -> None:
    port = await unused_port(dev_certs)  # offline: nothing is acknowledged
    with anyio.fail_after(10), DurableStore.in_dir(tmp_path / "data", max_bytes=600) as store:
        async with (
            device_connection(dev_certs, port, reconnect=FAST_RECONNECT) as iot,
            EmergencyReporter(iot, store=store) as reporter,
        ):
            first = await reporter.report_emergency(alarm())
            second = await reporter.report_emergency(alarm())
            with pytest.raises(BufferFull):
                await reporter.report_emergency(alarm())
            store.max_bytes = 10_000  # room again: the refused event must not have used a seq
            third = await reporter.report_emergency(alarm())

            assert [first.seq, second.seq, third.seq] == [1, 2, 3]


async def test_concurrent_reports_are_stored_and_sent_in_seq_order(
    dev_certs: DevCerts, broker: tuple[EmbeddedBroker, PublishLog], store: DurableStore
) -> None:
    server, log = broker
    with anyio.fail_after(10):
        async with (
            device_connection(dev_certs, server.port) as iot,
            EmergencyReporter(iot, store=store) as reporter,
        ):
            await iot.wait_connected(5)
            async with anyio.create_task_group() as reports:
                for i in range(30):
                    reports.start_soon(reporter.report_emergency, alarm(f"a{i}"))
            rows = [decode_model(m.payload, EmergencyEvent).seq for m in store.pending()]
            await reporter.wait_acknowledged()
            await log.wait_for(lambda log: len(log.on(TOPIC)) >= 30)
            sent = [decode_model(p, EmergencyEvent).seq for p in log.on(TOPIC)]

            assert sent == list(range(1, 31))  # the cloud sees no gap and no reordering
            assert rows == sorted(rows)  # a restart would re-send them in seq order too


async def test_an_event_acknowledged_while_the_reporter_stops_leaves_the_store(
    dev_certs: DevCerts, broker: tuple[EmbeddedBroker, PublishLog], store: DurableStore
) -> None:
    server, log = broker
    with anyio.fail_after(10):
        iot = device_connection(dev_certs, server.port)
        async with iot:
            await iot.wait_connected(5)
            async with EmergencyReporter(iot, store=store) as reporter:
                await reporter.report_emergency(alarm())
                # Stopped at once, before the PUBACK: the shutdown waits for the outcome.
            assert reporter.get_status()["acknowledged"] == 1

        assert store.pending() == []  # the next start does not send it again
        assert len(log.on(TOPIC)) == 1


async def test_an_event_committed_while_run_reads_the_store_is_queued_once(
    dev_certs: DevCerts, broker: tuple[EmbeddedBroker, PublishLog], store: DurableStore
) -> None:
    server, log = broker
    queued = threading.Event()
    real_put = store.put_numbered

    def put_numbered(stream: str, number: Any, **options: Any) -> StoredMessage | None:
        message = real_put(stream, number, **options)
        # Hold the report between its commit and its queueing until run() has read the store and
        # queued what it found (the race). With the fix run() waits for the report instead, so
        # this wait only times out.
        queued.wait(timeout=0.5)
        return message

    store.put_numbered = put_numbered  # type: ignore[method-assign]
    with anyio.fail_after(10):
        async with device_connection(dev_certs, server.port) as iot:
            await iot.wait_connected(5)
            real_publish = iot.publish_nowait

            def publish(*args: Any, **options: Any) -> Any:
                handle = real_publish(*args, **options)
                queued.set()
                return handle

            iot.publish_nowait = publish  # type: ignore[method-assign]
            reporter = EmergencyReporter(iot, store=store)
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(reporter.report_emergency, alarm())
                await anyio.wait_all_tasks_blocked()  # the report is writing
                await tasks.start(reporter.run)
                await reporter.wait_acknowledged()
                tasks.cancel_scope.cancel()

            assert reporter.get_status()["resent_from_store"] == 0  # not queued a second time
            assert len(log.on(TOPIC)) == 1
            assert store.pending() == []
