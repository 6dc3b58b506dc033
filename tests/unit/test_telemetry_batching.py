"""The pure batching rules of the telemetry publisher, on a fake clock."""

from __future__ import annotations

import pytest

from ancsync.batching import BATCH_OVERHEAD_BYTES, RecordBuffer


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
