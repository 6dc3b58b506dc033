"""TelemetryPublisher on the in-memory FakeBroker (with a real durable store where it matters).

Batching rules alone are in test_telemetry_batching.py and the real-broker behaviour in
tests/integration/test_telemetry.py; these drive the publisher's own decisions: when a batch
goes, how it is numbered, what is stored and re-sent, and that every accepted record is
counted in exactly one outcome.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import fake_connection

from ancsync import DurableStore, IoTConnection, TelemetryPublisher
from ancsync.codec import decode_model
from ancsync.durable.store import StoredMessage
from ancsync.errors import ConnectError, InvalidPayload, StorageError
from ancsync.models import TelemetryBatch
from ancsync.status import TelemetryStatus
from ancsync.testing import FakeBroker

THING = "anc-device-001"
TIMEOUT = 5


def anc(n: int) -> dict[str, Any]:
    return {"latency_ms": n, "cancellation_db": 40.0, "snr_improvement_db": 30.0}


def batches(broker: FakeBroker, kind: str = "anc") -> list[TelemetryBatch]:
    topic = f"anc/telemetry/{THING}/{kind}"
    return [decode_model(body, TelemetryBatch) for t, body, _, _ in broker.published if t == topic]


def latencies(broker: FakeBroker) -> list[int]:
    return [record.latency_ms for batch in batches(broker) for record in batch.records]  # type: ignore[union-attr]


def assert_accounted(status: TelemetryStatus) -> None:
    """Every accepted record is in exactly one outcome (the documented invariant)."""
    for kind, counts in status["records"].items():
        outcomes = (
            counts["delivered"]
            + counts["dropped"]
            + counts["failed"]
            + counts["unsent"]
            + counts["unconfirmed"]
            + counts["stored"]
            + counts["waiting"]
        )
        assert outcomes == counts["accepted"], (kind, counts)


@asynccontextmanager
async def connection(broker: FakeBroker) -> AsyncIterator[IoTConnection]:
    async with fake_connection(broker, THING) as iot:
        await iot.wait_connected(TIMEOUT)
        yield iot


def publisher(iot: IoTConnection, **options: Any) -> TelemetryPublisher:
    options.setdefault("batch_size", 3)
    options.setdefault("batch_interval", 3600)  # batches go when full, or at the stop
    options.setdefault("stop_timeout", 0.3)
    return TelemetryPublisher(iot, **options)


async def test_full_batches_go_at_once_and_the_rest_at_the_stop_numbered_in_order() -> None:
    broker = FakeBroker()
    with anyio.fail_after(TIMEOUT):
        async with connection(broker) as iot, publisher(iot) as telemetry:
            for n in range(7):
                telemetry.publish_anc_metrics(anc(n))
            await broker.wait_until(lambda: len(broker.published) == 2)
            assert telemetry.get_status()["depth"] == 1  # the seventh waits for more
        status = telemetry.get_status()
    sent = batches(broker)
    assert [batch.seq for batch in sent] == [1, 2, 3]
    assert [len(batch.records) for batch in sent] == [3, 3, 1]
    assert latencies(broker) == list(range(7))
    assert {batch.device_id for batch in sent} == {THING}
    assert len({batch.msg_id for batch in sent}) == 3
    assert {qos for *_, qos, _ in broker.published} == {1}
    assert status["records"]["anc"]["accepted"] == 7
    assert status["records"]["anc"]["delivered"] == 7
    assert (status["batches_sent"], status["batches_acknowledged"]) == (3, 3)
    assert status["depth"] == 0
    assert status["running"] is False
    assert status["durable"] is False
    assert_accounted(status)


async def test_each_kind_has_its_own_topic_counter_and_batches() -> None:
    broker = FakeBroker()
    with anyio.fail_after(TIMEOUT):
        async with connection(broker) as iot, publisher(iot, batch_size=2) as telemetry:
            telemetry.publish_anc_metrics(anc(1))
            telemetry.publish_system_metrics({"battery_level": 80, "cpu_usage": 10.0})
            telemetry.publish_audio_metrics(
                {"noise_type": "traffic", "confidence": 0.8, "rms": 0.1}
            )
            telemetry.publish_error({"component": "dsp", "message": "overrun"})
            telemetry.publish_system_metrics({"battery_level": 79, "cpu_usage": 11.0})
            await broker.wait_until(lambda: len(broker.published) == 1)  # system is full
            assert broker.published[0][0] == f"anc/telemetry/{THING}/system"
    for kind in ("anc", "audio", "errors"):
        [batch] = batches(broker, kind)
        assert (batch.kind, batch.seq, len(batch.records)) == (kind, 1, 1)
    [system] = batches(broker, "system")
    assert (system.seq, len(system.records)) == (1, 2)


async def test_a_batch_goes_when_its_oldest_record_has_waited_batch_interval() -> None:
    broker = FakeBroker()
    with anyio.fail_after(TIMEOUT):
        async with (
            connection(broker) as iot,
            publisher(iot, batch_size=100, batch_interval=0.05) as telemetry,
        ):
            telemetry.publish_anc_metrics(anc(1))
            telemetry.publish_anc_metrics(anc(2))
            await broker.wait_until(lambda: len(broker.published) == 1)
            assert telemetry.get_status()["records"]["anc"]["waiting"] == 0
    assert latencies(broker) == [1, 2]


async def test_a_bad_record_is_refused_with_its_field_named_and_the_rest_goes_on() -> None:
    broker = FakeBroker()
    with anyio.fail_after(TIMEOUT):
        async with connection(broker) as iot, publisher(iot) as telemetry:
            telemetry.publish_anc_metrics(anc(1))
            with pytest.raises(InvalidPayload, match="latency_ms"):
                telemetry.publish_anc_metrics({**anc(2), "latency_ms": "slow"})
            telemetry.publish_anc_metrics(anc(3))
            assert telemetry.get_status()["records"]["anc"]["accepted"] == 2
    assert latencies(broker) == [1, 3]


async def test_at_most_max_in_flight_batches_wait_for_their_puback() -> None:
    broker = FakeBroker(auto_ack=False)
    with anyio.fail_after(TIMEOUT):
        async with (
            connection(broker) as iot,
            publisher(iot, batch_size=1, max_in_flight=2) as telemetry,
        ):
            for n in range(5):
                telemetry.publish_anc_metrics(anc(n))
            await broker.wait_until(lambda: len(broker.attempted) == 2)
            await anyio.wait_all_tasks_blocked()
            assert len(broker.attempted) == 2  # the window is full
            assert telemetry.get_status()["in_flight_records"] == 2
            while len(broker.published) < 5:
                broker.ack()  # each ack opens the window for the next batch
                sent = len(broker.attempted)
                await broker.wait_until(lambda: sent == 5 or len(broker.attempted) > sent)  # noqa: B023
            status = telemetry.get_status()
    assert latencies(broker) == list(range(5))
    assert status["records"]["anc"]["delivered"] == 5
    assert_accounted(status)


async def test_offline_the_newest_records_wait_and_the_oldest_are_dropped_and_counted() -> None:
    broker = FakeBroker()
    with anyio.fail_after(TIMEOUT):
        async with connection(broker) as iot, publisher(iot, max_buffer_size=5) as telemetry:
            broker.connect_errors.extend(ConnectError("network down") for _ in range(10**6))
            broker.drop()
            await broker.wait_until(lambda: not iot.connected)
            for n in range(12):
                telemetry.publish_anc_metrics(anc(n))
            offline = telemetry.get_status()
            broker.connect_errors.clear()
            await iot.wait_connected(TIMEOUT)
            await broker.wait_until(lambda: len(broker.published) >= 1)
        status = telemetry.get_status()
    assert offline["depth"] == 5
    assert offline["dropped"] == 7
    assert latencies(broker) == list(range(7, 12))  # the newest five, in order
    assert status["records"]["anc"]["dropped"] == 7
    assert status["records"]["anc"]["delivered"] == 5
    assert_accounted(status)


async def test_stopping_offline_without_a_store_counts_the_records_as_unsent() -> None:
    broker = FakeBroker()
    with anyio.fail_after(TIMEOUT):
        async with connection(broker) as iot, publisher(iot) as telemetry:
            broker.connect_errors.extend(ConnectError("network down") for _ in range(10**6))
            broker.drop()
            await broker.wait_until(lambda: not iot.connected)
            for n in range(4):
                telemetry.publish_anc_metrics(anc(n))
        status = telemetry.get_status()
    assert status["unsent"] == 4
    assert status["records"]["anc"]["unsent"] == 4
    assert_accounted(status)


async def test_batches_unacknowledged_at_the_stop_are_unconfirmed_without_a_store() -> None:
    broker = FakeBroker(auto_ack=False)
    with anyio.fail_after(TIMEOUT):
        async with connection(broker) as iot, publisher(iot) as telemetry:
            for n in range(3):
                telemetry.publish_anc_metrics(anc(n))
            await broker.wait_until(lambda: len(broker.attempted) == 1)
        status = telemetry.get_status()
    assert status["unconfirmed"] == 3
    assert status["batches_acknowledged"] == 0
    assert_accounted(status)


async def test_durable_batches_stay_stored_until_acknowledged_and_the_next_run_sends_them(
    tmp_path: Path,
) -> None:
    store = DurableStore.in_dir(tmp_path)
    first = FakeBroker(auto_ack=False)
    with anyio.fail_after(TIMEOUT):
        async with connection(first) as iot, publisher(iot, store=store) as telemetry:
            for n in range(4):  # one full batch in flight, one record waiting
                telemetry.publish_anc_metrics(anc(n))
            await first.wait_until(lambda: len(first.attempted) == 1)
        left = telemetry.get_status()
        assert left["durable"] is True
        assert left["stored"] == 4
        assert_accounted(left)
        assert sum(m.records for m in store.pending("telemetry")) == 4

        second = FakeBroker()
        async with connection(second) as iot, publisher(iot, store=store) as again:
            await second.wait_until(lambda: len(second.published) == 2)
        status = again.get_status()
    assert store.pending() == []  # forgotten on their PUBACK (by the stop at the latest)
    assert latencies(second) == [0, 1, 2, 3]
    assert [batch.seq for batch in batches(second)] == [1, 2]  # the numbers they were stored with
    assert status["records"]["anc"]["accepted"] == 4  # re-sent records count as accepted
    assert status["records"]["anc"]["delivered"] == 4
    assert_accounted(status)


async def test_a_store_keeps_the_counters_across_runs_even_when_not_durable(
    tmp_path: Path,
) -> None:
    store = DurableStore.in_dir(tmp_path)
    seqs = []
    with anyio.fail_after(TIMEOUT):
        for _ in range(2):
            broker = FakeBroker()
            async with (
                connection(broker) as iot,
                publisher(iot, batch_size=1, store=store, durable=False) as telemetry,
            ):
                telemetry.publish_anc_metrics(anc(1))
                await broker.wait_until(lambda: len(broker.published) == 1)  # noqa: B023
            seqs += [batch.seq for batch in batches(broker)]
            assert telemetry.get_status()["durable"] is False
    assert seqs == [1, 2]
    assert store.pending() == []
    assert store.last_seq("telemetry/anc") == 2


async def test_start_publishing_is_the_original_name_for_run() -> None:
    broker = FakeBroker()
    with anyio.fail_after(TIMEOUT):
        async with connection(broker) as iot, anyio.create_task_group() as tg:
            telemetry = publisher(iot, batch_size=1)
            await tg.start(telemetry.start_publishing)
            telemetry.publish_anc_metrics(anc(5))
            await broker.wait_until(lambda: len(broker.published) == 1)
            tg.cancel_scope.cancel()
    assert latencies(broker) == [5]


def test_bad_options_are_refused_before_anything_runs() -> None:
    iot = IoTConnection(THING, "127.0.0.1", tls=False)
    with pytest.raises(ValueError, match="durable telemetry needs a store"):
        TelemetryPublisher(iot, durable=True)
    with pytest.raises(ValueError, match="max_in_flight must be at least 1, got 0"):
        TelemetryPublisher(iot, max_in_flight=0)
    assert TelemetryPublisher(iot, "other-1").device_id == "other-1"
    assert TelemetryPublisher(iot).get_status()["max_buffer_size"] == 1000


async def test_stopping_offline_with_a_store_keeps_the_records_for_the_next_start(
    tmp_path: Path,
) -> None:
    store = DurableStore.in_dir(tmp_path)
    broker = FakeBroker()
    with anyio.fail_after(TIMEOUT):
        async with connection(broker) as iot, publisher(iot, store=store) as telemetry:
            broker.connect_errors.extend(ConnectError("network down") for _ in range(10**6))
            broker.drop()
            await broker.wait_until(lambda: not iot.connected)
            for n in range(5):
                telemetry.publish_anc_metrics(anc(n))
        status = telemetry.get_status()
    assert (status["stored"], status["unsent"]) == (5, 0)
    assert status["records"]["anc"]["stored"] == 5
    assert sum(m.records for m in store.pending("telemetry")) == 5
    assert store.last_seq("telemetry/anc") == 2  # batches of 3 and 2, numbered as stored
    assert_accounted(status)


async def test_a_batch_the_store_has_no_room_for_is_counted_as_failed(tmp_path: Path) -> None:
    store = DurableStore.in_dir(tmp_path, max_bytes=300)
    store.put(StoredMessage("e1", "emergency", "anc/devices/x/emergency", bytes(290)))
    broker = FakeBroker()
    with anyio.fail_after(TIMEOUT):
        async with connection(broker) as iot, publisher(iot, store=store) as telemetry:
            for n in range(4):  # a full batch and one more: each must be stored first
                telemetry.publish_anc_metrics(anc(n))
        status = telemetry.get_status()
    assert batches(broker) == []  # nothing sent that could not be kept
    assert status["records"]["anc"]["failed"] == 4
    assert [m.msg_id for m in store.pending()] == ["e1"]  # the emergency is never evicted
    assert_accounted(status)


class BrokenStore(DurableStore):
    """A store whose writes fail, as on a disk gone bad."""

    def put_numbered(self, *args: Any, **kwargs: Any) -> Any:
        raise StorageError("durable outbox could not store a numbered message: disk I/O error")


async def test_a_store_that_cannot_write_does_not_stop_telemetry(tmp_path: Path) -> None:
    store = BrokenStore.in_dir(tmp_path)
    broker = FakeBroker()
    with anyio.fail_after(TIMEOUT):
        async with connection(broker) as iot, publisher(iot, store=store) as telemetry:
            for n in range(6):
                telemetry.publish_anc_metrics(anc(n))
            await broker.wait_until(lambda: len(broker.published) == 2)
        status = telemetry.get_status()
    # Sent without the safety net, still numbered in order.
    assert [batch.seq for batch in batches(broker)] == [1, 2]
    assert latencies(broker) == list(range(6))
    assert status["records"]["anc"]["delivered"] == 6
    assert status["stored"] == 0
    assert_accounted(status)


@pytest.mark.parametrize("durable", [False, True])
async def test_a_batch_on_a_topic_the_policy_refuses_is_failed_or_kept(
    tmp_path: Path, durable: bool
) -> None:
    store = DurableStore.in_dir(tmp_path) if durable else None
    broker = FakeBroker(denied={f"anc/telemetry/{THING}/anc"})
    with anyio.fail_after(TIMEOUT):
        async with connection(broker) as iot, publisher(iot, store=store) as telemetry:
            for n in range(3):
                telemetry.publish_anc_metrics(anc(n))
            await broker.wait_until(
                lambda: (
                    telemetry.get_status()["records"]["anc"]["failed" if not durable else "stored"]
                    == 3
                )
            )
        status = telemetry.get_status()
    anc_counts = status["records"]["anc"]
    assert (anc_counts["failed"], anc_counts["stored"]) == ((0, 3) if durable else (3, 0))
    assert anc_counts["delivered"] == 0
    assert_accounted(status)
