"""The edges of the telemetry batching rules: exact limits, counts past one, settings checks."""

from __future__ import annotations

import orjson
import pytest
from fake_time import FakeClock

from ancsync.batching import RecordBuffer, encode_record, kind_of_topic
from ancsync.config import TelemetrySettings
from ancsync.errors import InvalidPayload, PayloadTooLarge
from ancsync.topics import TELEMETRY_KINDS

SYSTEM = {"timestamp": "2026-01-02T03:04:05Z", "battery_level": 80, "cpu_usage": 12}


def record(n: int, size: int) -> bytes:
    return f'{{"n":{n}}}'.encode().ljust(size)


# --- encode_record ------------------------------------------------------------------------------


def test_a_record_keeps_the_timestamp_it_was_given() -> None:
    encoded = orjson.loads(encode_record("system", SYSTEM, limit=1000))

    assert encoded["timestamp"] == SYSTEM["timestamp"]


def test_a_record_exactly_at_the_limit_is_accepted_and_one_byte_more_is_not() -> None:
    size = len(encode_record("system", SYSTEM, limit=10_000))

    assert len(encode_record("system", SYSTEM, limit=size)) == size
    with pytest.raises(PayloadTooLarge) as too_large:
        encode_record("system", SYSTEM, limit=size - 1)
    assert (too_large.value.size, too_large.value.limit) == (size, size - 1)
    assert f"is {size} bytes, over the AWS IoT limit of {size - 1} bytes" in str(too_large.value)


def test_a_record_of_the_wrong_type_names_the_type_given() -> None:
    with pytest.raises(InvalidPayload, match="takes a mapping or a SystemMetrics, not list"):
        encode_record("system", [1, 2], limit=1000)  # type: ignore[arg-type]


def test_a_topic_that_is_not_a_telemetry_topic_is_refused_with_the_expected_shape() -> None:
    for topic in ("garbage", "anc/telemetry/dev-1/weather"):
        with pytest.raises(InvalidPayload, match=r"is not a telemetry topic \(anc/telemetry/"):
            kind_of_topic(topic)


# --- RecordBuffer settings ----------------------------------------------------------------------


def test_the_buffer_defaults_are_the_configured_telemetry_defaults() -> None:
    buffer, settings = RecordBuffer(), TelemetrySettings()

    assert buffer.batch_size == settings.batch_size
    assert buffer.batch_interval == settings.batch_interval
    assert buffer.max_records == settings.max_buffer_size


def test_the_smallest_settings_are_accepted() -> None:
    buffer = RecordBuffer(batch_size=1, max_records=1, batch_interval=0.5)

    assert buffer.add("anc", b"{}") is True
    assert buffer.due() == "anc"  # one record is a full batch


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"batch_size": 0}, "^batch_size and max_records must be at least 1$"),
        ({"max_records": 0}, "^batch_size and max_records must be at least 1$"),
        ({"batch_interval": 0}, "^batch_interval must be greater than 0 seconds$"),
        ({"batch_interval": -1}, "^batch_interval must be greater than 0 seconds$"),
    ],
)
def test_an_impossible_setting_is_refused_naming_it(
    settings: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        RecordBuffer(**settings)  # type: ignore[arg-type]


# --- bytes per batch ----------------------------------------------------------------------------


def test_records_that_fit_with_a_byte_to_spare_go_in_one_batch() -> None:
    buffer = RecordBuffer(batch_size=10, max_payload=10_000)
    # Three records joined by two commas, one byte under the limit.
    size = (buffer.max_record_bytes - 1 - 2) // 3
    spare = buffer.max_record_bytes - 1 - 2 - 3 * size
    records = [record(1, size), record(2, size), record(3, size + spare)]
    for data in records:
        buffer.add("anc", data)

    batch = buffer.take("anc")

    assert batch == records
    assert len(b",".join(batch)) == buffer.max_record_bytes - 1


def test_a_batch_never_holds_more_bytes_than_the_limit() -> None:
    buffer = RecordBuffer(batch_size=10, max_payload=10_000)
    # Two records whose comma-joined bytes are one over the limit.
    size = buffer.max_record_bytes // 2
    records = [record(1, size), record(2, buffer.max_record_bytes - size)]
    for data in records:
        buffer.add("anc", data)

    assert buffer.take("anc") == records[:1]
    assert buffer.take("anc") == records[1:]


# --- the bound and its counters -----------------------------------------------------------------


def test_every_dropped_record_is_counted() -> None:
    buffer = RecordBuffer(batch_size=100, max_records=2)
    for n in range(5):
        buffer.add("audio", record(n, 10))

    assert buffer.dropped["audio"] == 3
    assert buffer.take("audio") == [record(3, 10), record(4, 10)]


def test_a_record_added_while_batches_in_flight_fill_the_bound_is_dropped() -> None:
    buffer = RecordBuffer(batch_size=2, max_records=2)
    buffer.add("anc", record(1, 10))
    buffer.add("anc", record(2, 10))
    assert len(buffer.take("anc")) == 2  # in flight, not delivered yet

    buffer.add("anc", record(3, 10))

    assert len(buffer) == 0
    assert buffer.dropped["anc"] == 1
    assert buffer.waiting_bytes == 0


def test_readmitted_records_count_as_accepted_and_push_out_waiting_ones() -> None:
    buffer = RecordBuffer(batch_size=10, max_records=3)
    for n in range(3):
        buffer.add("system", record(n, 10))

    buffer.readmit("system", 2)
    buffer.readmit("system", 1)
    buffer.add("system", record(3, 10))

    assert buffer.accepted["system"] == 3 + 3 + 1
    assert buffer.in_flight == 3
    assert len(buffer) == 0  # the bound counts in-flight records: all four waiting ones went
    assert buffer.dropped["system"] == 4


def test_records_readmitted_past_the_bound_leave_no_room_and_each_new_one_is_dropped() -> None:
    # A previous run stored more undelivered batches than the bound: they are re-sent anyway.
    buffer = RecordBuffer(batch_size=10, max_records=3)
    buffer.readmit("anc", 5)

    buffer.add("anc", record(1, 10))
    buffer.add("anc", record(2, 10))

    assert len(buffer) == 0
    assert buffer.dropped["anc"] == 2
    assert buffer.accepted["anc"] == 7


# --- which kind, and when -----------------------------------------------------------------------


def test_of_two_due_kinds_the_one_with_the_oldest_record_goes_first() -> None:
    clock = FakeClock()
    buffer = RecordBuffer(batch_size=10, batch_interval=30, clock=clock)
    first, *_, last = TELEMETRY_KINDS
    buffer.add(first, record(1, 10))
    clock.now += 1
    buffer.add(last, record(2, 10))
    clock.now += 30  # both have waited the interval

    assert buffer.due() == first


def test_seconds_until_due_counts_down_below_one_second() -> None:
    clock = FakeClock()
    buffer = RecordBuffer(batch_interval=30, clock=clock)
    buffer.add("errors", record(1, 10))
    clock.now += 29.75

    assert buffer.seconds_until_due() == pytest.approx(0.25)
