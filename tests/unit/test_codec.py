"""orjson encode/decode: size limits, and the exact message a user sees for each bad input."""

from __future__ import annotations

import decimal
import tracemalloc
from collections import OrderedDict
from datetime import UTC, datetime
from types import MappingProxyType

import orjson
import pytest

from ancsync.codec import MAX_PAYLOAD_BYTES, decode, decode_model, encode
from ancsync.errors import InvalidPayload, PayloadTooLarge
from ancsync.models import AncDesiredState, AncMetrics, DeviceStatus, TelemetryBatch

T = "2025-11-16T14:30:00Z"


def test_the_limit_is_aws_128_kib() -> None:
    assert MAX_PAYLOAD_BYTES == 131072


def test_models_encode_compact_without_none_fields() -> None:
    desired = AncDesiredState(anc_intensity=0.9)
    assert encode(desired) == b'{"anc_intensity":0.9}'


def test_mappings_and_lists_may_hold_models_and_datetimes() -> None:
    payload = {
        "state": {"desired": AncDesiredState(anc_enabled=True)},
        "at": datetime(2025, 11, 16, 14, 30, tzinfo=UTC),
    }
    assert encode(payload) == (
        b'{"state":{"desired":{"anc_enabled":true}},"at":"2025-11-16T14:30:00Z"}'
    )
    assert encode(MappingProxyType({"a": 1})) == b'{"a":1}'
    assert encode(OrderedDict(b=2)) == b'{"b":2}'
    assert encode([AncDesiredState(), 1]) == b"[{},1]"


def test_str_and_bytes_are_sent_unchanged() -> None:
    assert encode(b"") == b""
    assert encode('{"clientToken":"t"}') == b'{"clientToken":"t"}'
    assert encode("é") == "é".encode()


@pytest.mark.parametrize(
    "payload",
    [
        {"latency_ms": 1.5, "cancellation_db": 42.5, "snr_improvement_db": 38.2},
        AncMetrics(
            timestamp="2026-01-01T00:00:00Z",
            latency_ms=1.5,
            cancellation_db=42.5,
            snr_improvement_db=38.2,
        ),
    ],
)
def test_an_encoded_payload_holds_no_more_memory_than_its_length(payload: object) -> None:
    """Queued messages are counted by length: orjson's own bytes keep a 4 KiB buffer each."""
    count = 1000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [encode(payload) for _ in range(count)]  # type: ignore[arg-type]
        per_message = (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        tracemalloc.stop()
    length = len(kept[0])
    assert length < 200
    # a bytes object is its length plus a ~33-byte header; allow allocator rounding and the list
    assert per_message < length + 80, f"{per_message:.0f} bytes held for {length} encoded"


def test_payload_at_the_limit_passes_and_one_byte_more_fails() -> None:
    at_limit = b"x" * MAX_PAYLOAD_BYTES
    assert encode(at_limit) is at_limit
    with pytest.raises(PayloadTooLarge) as caught:
        encode(at_limit + b"x", what="telemetry batch")
    assert (caught.value.what, caught.value.size, caught.value.limit) == (
        "telemetry batch",
        131073,
        131072,
    )
    assert str(caught.value) == (
        "telemetry batch is 131073 bytes, over the AWS IoT limit of 131072 bytes; "
        "send less data per message (smaller batches or fewer fields)"
    )


def test_size_is_measured_after_encoding() -> None:
    # 40 000 three-byte characters: 40 000 str characters but 120 002 bytes of JSON.
    payload = {"text": "€" * 40_000}
    assert len(encode(payload)) == 120_011
    with pytest.raises(PayloadTooLarge, match="shadow document is 120011 bytes"):
        encode(payload, limit=8192 * 10, what="shadow document")


def test_custom_limit_for_shadow_documents() -> None:
    document = {"state": {"reported": {"blob": "x" * 8200}}}
    with pytest.raises(PayloadTooLarge, match="over the AWS IoT limit of 8192 bytes"):
        encode(document, limit=8192, what="shadow document")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"price": decimal.Decimal("1.5")}, "Type is not JSON serializable: decimal.Decimal"),
        ({1: "one"}, "Dict key must be str"),
        ({"big": 2**70}, "Integer exceeds 64-bit range"),
    ],
)
def test_unserialisable_values_name_the_reason(payload: object, reason: str) -> None:
    with pytest.raises(InvalidPayload) as caught:
        encode(payload)  # type: ignore[arg-type]
    assert not isinstance(caught.value, PayloadTooLarge)
    assert str(caught.value) == (
        f"payload cannot be encoded as JSON: {reason}; use only str keys and JSON values "
        "(str, int, float, bool, None, list, dict, datetime, pydantic models)"
    )


def test_str_with_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(InvalidPayload, match="surrogates not allowed"):
        encode("\ud800")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "payload is empty: expected a JSON document"),
        (
            b'{"a": 1,}',
            "payload is not valid JSON: trailing comma is not allowed "
            "at line 1, column 8 (character 7)",
        ),
        (
            '{\n  "a": tru\n}',
            "payload is not valid JSON: invalid literal, expected 'true' "
            "at line 2, column 8 (character 9)",
        ),
        (
            b'{"a":',
            "payload is not valid JSON: unexpected end of data at line 1, column 6 (character 5)",
        ),
        (
            b'{"name": "caf\xe9"}',
            "payload is not UTF-8 text: byte 0xe9 at position 13 is invalid; "
            "JSON payloads must be UTF-8",
        ),
    ],
)
def test_decode_errors_name_the_reason_and_position(data: bytes | str, message: str) -> None:
    with pytest.raises(InvalidPayload) as caught:
        decode(data)
    assert str(caught.value) == message


def test_decode_uses_the_given_name() -> None:
    with pytest.raises(InvalidPayload, match=r"^shadow delta is empty"):
        decode(b"", what="shadow delta")


def test_decode_round_trips_encode() -> None:
    payload = {"a": [1, 2.5, None, True, "é"], "b": {"c": {}}}
    assert decode(encode(payload)) == payload
    assert decode(orjson.dumps(payload).decode()) == payload


def test_decode_model_round_trip() -> None:
    record = AncMetrics(
        timestamp=T, latency_ms=35.2, cancellation_db=42.5, snr_improvement_db=38.2, gain=2.0
    )
    batch = TelemetryBatch(
        device_id="d1", kind="anc", msg_id="m", seq=3, sent_at=T, records=[record]
    )
    assert decode_model(encode(batch), TelemetryBatch) == batch


def test_decode_model_names_each_bad_field_and_value() -> None:
    data = (
        b'{"device_id": "dev/1", "status": "busy", "firmware_version": "",'
        b' "timestamp": "2025-11-16 14:30"}'
    )
    with pytest.raises(InvalidPayload) as caught:
        decode_model(data, DeviceStatus)
    assert str(caught.value) == (
        "DeviceStatus payload is invalid: "
        "device_id: thing name 'dev/1' is not allowed: use 1 to 128 characters of letters, "
        "digits, ':', '_' and '-'; "
        "status: Input should be 'online' or 'offline' (got 'busy'); "
        "firmware_version: String should have at least 1 character (got ''); "
        "session_id: Field required; "
        "timestamp: '2025-11-16 14:30' is not an ISO 8601 UTC timestamp: use the form "
        "2025-11-16T14:30:00Z (milliseconds allowed: 2025-11-16T14:30:00.123Z)"
    )


def test_decode_model_locates_errors_inside_records() -> None:
    data = encode(
        {
            "device_id": "d1",
            "kind": "system",
            "msg_id": "m",
            "seq": 0,
            "sent_at": T,
            "records": [
                {"timestamp": T, "battery_level": 85, "cpu_usage": 45.2},
                {"timestamp": T, "battery_level": 185, "cpu_usage": "high"},
            ],
        }
    )
    with pytest.raises(InvalidPayload) as caught:
        decode_model(data, TelemetryBatch, what="telemetry batch on anc/telemetry/d1/system")
    assert str(caught.value) == (
        "telemetry batch on anc/telemetry/d1/system is invalid: "
        "records[1].battery_level: Input should be less than or equal to 100 (got 185); "
        "records[1].cpu_usage: Input should be a valid number (got 'high')"
    )


def test_decode_model_of_a_non_object_and_of_bad_json() -> None:
    with pytest.raises(InvalidPayload) as caught:
        decode_model(b"[1, 2]", AncDesiredState)
    assert str(caught.value) == (
        "AncDesiredState payload is invalid: (document): Input should be a valid dictionary "
        "or instance of AncDesiredState (got [1, 2])"
    )
    with pytest.raises(InvalidPayload, match=r"^AncDesiredState payload is not valid JSON"):
        decode_model(b"{", AncDesiredState)


def test_decode_model_shows_at_most_five_errors_and_shortens_values() -> None:
    data = encode({f"unknown_{index}": "v" * 100 for index in range(7)})
    with pytest.raises(InvalidPayload) as caught:
        decode_model(data, AncDesiredState)
    message = str(caught.value)
    assert message.count("Extra inputs are not permitted") == 5
    assert message.endswith("; and 2 more")
    assert f"(got '{'v' * 59}...)" in message
