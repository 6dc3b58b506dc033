"""The pure batching rules of the telemetry publisher, on a fake clock."""

from __future__ import annotations

import pytest

from ancsync.batching import (
    BATCH_OVERHEAD_BYTES,
    RecordBuffer,
    batch_payload,
    encode_record,
    kind_of_topic,
)
from ancsync.codec import decode_model
from ancsync.errors import InvalidPayload, PayloadTooLarge
from ancsync.models import SystemMetrics, TelemetryBatch


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def record(n: int, size: int = 20) -> bytes:
    return f'{{"n":{n}}}'.encode().ljust(size)


def test_a_kind_is_due_when_batch_size_records_wait(clock: FakeClock) -> None:
    buffer = RecordBuffer(batch_size=3, batch_interval=30, clock=clock)

    assert buffer.add("anc", record(1)) is True  # first record: its interval starts
    assert buffer.add("anc", record(2)) is False
    assert buffer.due() is None
    assert buffer.add("anc", record(3)) is True
    assert buffer.due() == "anc"
    assert buffer.take("anc") == [record(1), record(2), record(3)]
    assert buffer.due() is None


def test_a_kind_is_due_when_its_oldest_record_has_waited_batch_interval(clock: FakeClock) -> None:
    buffer = RecordBuffer(batch_size=10, batch_interval=30, clock=clock)
    buffer.add("system", record(1))
    clock.now += 20
    buffer.add("system", record(2))

    assert buffer.seconds_until_due() == pytest.approx(10)
    clock.now += 9.9
    assert buffer.due() is None
    clock.now += 0.1
    assert buffer.due() == "system"
    assert buffer.take("system") == [record(1), record(2)]
    assert buffer.seconds_until_due() is None


def test_the_interval_restarts_from_the_oldest_record_still_waiting(clock: FakeClock) -> None:
    buffer = RecordBuffer(batch_size=2, batch_interval=30, clock=clock)
    for n in range(3):
        buffer.add("anc", record(n))
        clock.now += 10
    buffer.take("anc")  # records 0 and 1 (due by size)

    # Record 2 arrived 10 s ago: 20 s to go.
    assert buffer.seconds_until_due() == pytest.approx(20)


def test_the_kind_whose_oldest_record_is_oldest_goes_first(clock: FakeClock) -> None:
    buffer = RecordBuffer(batch_size=2, batch_interval=30, clock=clock)
    buffer.add("audio", record(1))
    buffer.add("anc", record(2))
    buffer.add("anc", record(3))
    buffer.add("audio", record(4))

    assert buffer.due() == "audio"
    buffer.take("audio")
    assert buffer.due() == "anc"


def test_flush_makes_every_waiting_kind_due(clock: FakeClock) -> None:
    buffer = RecordBuffer(batch_size=10, batch_interval=30, clock=clock)
    buffer.add("errors", record(1))

    assert buffer.due() is None
    assert buffer.due(flush=True) == "errors"


def test_a_batch_never_passes_the_payload_limit(clock: FakeClock) -> None:
    limit = BATCH_OVERHEAD_BYTES + 100
    buffer = RecordBuffer(batch_size=10, max_payload=limit, clock=clock)
    for n in range(10):
        buffer.add("anc", record(n, size=30))

    sizes = []
    while buffer.depth("anc"):
        batch = buffer.take("anc")
        sizes.append(len(batch))
        # the records joined by commas must fit the room left for them
        assert sum(map(len, batch)) + len(batch) - 1 <= limit - BATCH_OVERHEAD_BYTES
    assert sizes == [3, 3, 3, 1]
    assert buffer.waiting_bytes == 0


def test_past_max_records_the_oldest_record_of_any_kind_is_dropped_and_counted(
    clock: FakeClock,
) -> None:
    buffer = RecordBuffer(batch_size=100, max_records=3, clock=clock)
    buffer.add("anc", record(1))
    buffer.add("system", record(2))
    buffer.add("anc", record(3))
    buffer.add("audio", record(4))  # drops anc 1
    buffer.add("audio", record(5))  # drops system 2

    assert len(buffer) == 3
    assert buffer.dropped == {"anc": 1, "audio": 0, "system": 1, "errors": 0}
    assert buffer.accepted == {"anc": 2, "audio": 2, "system": 1, "errors": 0}
    assert buffer.take("anc") == [record(3)]
    assert buffer.waiting_bytes == 2 * len(record(0))


def test_records_in_flight_count_against_the_bound_until_settled(clock: FakeClock) -> None:
    buffer = RecordBuffer(batch_size=2, max_records=4, clock=clock)
    for n in range(4):
        buffer.add("anc", record(n))
    assert buffer.take("anc") == [record(0), record(1)]

    buffer.add("anc", record(4))  # 2 waiting + 2 in flight + 1 new: the oldest waiting goes
    assert buffer.dropped["anc"] == 1
    assert buffer.take("anc") == [record(3), record(4)]

    buffer.settle(2)
    buffer.add("anc", record(5))  # 0 waiting + 2 in flight + 1: room again
    assert buffer.dropped["anc"] == 1
    assert buffer.in_flight == 2


def test_when_everything_allowed_is_in_flight_new_records_are_dropped(clock: FakeClock) -> None:
    buffer = RecordBuffer(batch_size=2, max_records=2, clock=clock)
    buffer.add("anc", record(0))
    buffer.add("anc", record(1))
    buffer.take("anc")

    buffer.add("anc", record(2))

    assert len(buffer) == 0
    assert buffer.dropped["anc"] == 1


def test_a_readmitted_stored_batch_is_accepted_and_in_flight_until_settled(
    clock: FakeClock,
) -> None:
    buffer = RecordBuffer(batch_size=5, max_records=4, clock=clock)
    buffer.readmit("system", 3)  # a batch of 3 a previous run left in the store
    assert (buffer.accepted["system"], buffer.in_flight, len(buffer)) == (3, 3, 0)

    buffer.add("anc", record(0))
    buffer.add("anc", record(1))  # 3 in flight + 2 waiting: past the bound
    assert buffer.dropped["anc"] == 1

    buffer.settle(3)
    assert buffer.in_flight == 0


def test_encoded_records_spliced_into_a_batch_make_a_valid_batch() -> None:
    records = [
        encode_record("system", {"battery_level": 85, "cpu_usage": 45.2}, limit=1000),
        encode_record(
            "system",
            SystemMetrics(timestamp="2025-11-16T14:30:00Z", battery_level=84, cpu_usage=1),
            limit=1000,
        ),
    ]
    payload = batch_payload("anc-device-001", "system", "m1", 7, records)

    batch = decode_model(payload, TelemetryBatch)
    assert (batch.device_id, batch.kind, batch.msg_id, batch.seq) == (
        "anc-device-001",
        "system",
        "m1",
        7,
    )
    assert [r.battery_level for r in batch.records] == [85, 84]
    assert batch.records[1].timestamp == "2025-11-16T14:30:00Z"
    assert b"memory_usage" not in payload  # unset optional fields are not sent as null


def test_a_bad_or_oversize_record_is_refused_with_the_reason() -> None:
    with pytest.raises(InvalidPayload, match="cpu_usage"):
        encode_record("system", {"battery_level": 85}, limit=1000)
    with pytest.raises(InvalidPayload, match="mapping or a SystemMetrics"):
        encode_record("system", "85%", limit=1000)  # type: ignore[arg-type]
    with pytest.raises(PayloadTooLarge, match="one errors telemetry record"):
        encode_record("errors", {"component": "dsp", "message": "x" * 2000}, limit=500)


def test_the_kind_of_a_stored_batch_comes_from_its_topic() -> None:
    assert kind_of_topic("anc/telemetry/anc-device-001/errors") == "errors"
    with pytest.raises(InvalidPayload):
        kind_of_topic("anc/devices/anc-device-001/emergency")
