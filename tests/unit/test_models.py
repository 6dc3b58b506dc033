"""Payload models: field names and ranges of DESIGN 4, strictness, and their JSON Schemas."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import pytest
from helpers import load_docs_script
from pydantic import BaseModel, ValidationError

from ancsync.models import (
    RECORD_MODELS,
    WIRE_MODELS,
    AncDesiredState,
    AncMetrics,
    AncReportedState,
    AudioMetrics,
    Command,
    DeviceStatus,
    EmergencyEvent,
    EmergencyInput,
    ErrorRecord,
    SystemMetrics,
    TelemetryBatch,
    json_schemas,
    new_id,
    utc_now,
)
from ancsync.topics import TELEMETRY_KINDS

T = "2025-11-16T14:30:00Z"


def errors_of(model: type[BaseModel], data: Any) -> list[tuple[str, str]]:
    """(location, error type) of each error, for compact assertions."""
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    return [
        (".".join(str(part) for part in error["loc"]), error["type"])
        for error in caught.value.errors()
    ]


# --- timestamps and ids ------------------------------------------------------------------------


def test_utc_now_is_iso_utc_with_milliseconds_and_now() -> None:
    stamp = utc_now()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp)
    parsed = datetime.fromisoformat(stamp)
    assert abs(parsed - datetime.now(UTC)) < timedelta(seconds=5)
    assert AncMetrics(timestamp=stamp, latency_ms=1, cancellation_db=1, snr_improvement_db=1)


def test_new_id_is_unique_hex() -> None:
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in ids)


@pytest.mark.parametrize(
    "stamp", ["2025-11-16T14:30:00Z", "2025-11-16T14:30:00.123Z", "2024-02-29T23:59:59.999999Z"]
)
def test_timestamps_accepted(stamp: str) -> None:
    assert ErrorRecord(timestamp=stamp, component="dsp", message="m").timestamp == stamp


@pytest.mark.parametrize(
    "stamp",
    [
        "2025-11-16T14:30:00",  # no zone
        "2025-11-16T14:30:00+00:00",  # UTC, but not with Z
        "2025-11-16 14:30:00Z",
        "2025-02-30T14:30:00Z",  # no such day
        "2025-11-16T24:30:00Z",
        "2025-11-16T14:60:00Z",
        "2025-11-16T14:30:60Z",  # no leap seconds, as datetime
        "2023-02-29T00:00:00Z",  # not a leap year
        "1700000000",
        "",
    ],
)
def test_timestamps_refused_with_the_expected_form(stamp: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ErrorRecord(timestamp=stamp, component="dsp", message="m")
    assert f"{stamp!r} is not an ISO 8601 UTC timestamp: use the form 2025-11-16T14:30:00Z" in str(
        caught.value
    )


# --- status, command, emergency ----------------------------------------------------------------


def test_device_status() -> None:
    status = DeviceStatus(
        device_id="anc-device-001",
        status="offline",
        firmware_version="1.2.3",
        session_id=new_id(),
        timestamp=T,
    )
    assert status.status == "offline"
    base = status.model_dump()
    assert errors_of(DeviceStatus, {**base, "status": "sleeping"}) == [("status", "literal_error")]
    assert errors_of(DeviceStatus, {**base, "device_id": "a/b"}) == [("device_id", "thing_name")]
    assert errors_of(DeviceStatus, {**base, "uptime": 3}) == [("uptime", "extra_forbidden")]


def test_command_params_default_to_empty_and_unknown_fields_fail() -> None:
    command = Command.model_validate({"command_id": "c1", "command": "reboot", "issued_at": T})
    assert command.params == {}
    assert errors_of(
        Command, {"command_id": "c1", "command": "reboot", "issued_at": T, "parameters": {}}
    ) == [("parameters", "extra_forbidden")]


README_EMERGENCY = {
    "is_emergency": True,
    "predicted_class": "fire_alarm",
    "confidence": 0.94,
    "action": "anc_bypassed",
}


def test_emergency_input_of_the_readme_becomes_a_flat_event() -> None:
    event = EmergencyInput.model_validate(README_EMERGENCY).to_event(
        device_id="anc-device-001", event_id="e1", seq=7
    )
    assert event.model_dump(exclude={"timestamp"}) == {
        "device_id": "anc-device-001",
        "event_id": "e1",
        "seq": 7,
        "is_emergency": True,
        "predicted_class": "fire_alarm",
        "confidence": 0.94,
        "action": "anc_bypassed",
        "severity": "critical",
    }
    assert datetime.fromisoformat(event.timestamp) <= datetime.now(UTC)


def test_emergency_input_timestamp_is_kept() -> None:
    data = {**README_EMERGENCY, "timestamp": T, "severity": "warning"}
    event = EmergencyInput.model_validate(data).to_event(device_id="d1", event_id="e", seq=0)
    assert (event.timestamp, event.severity) == (T, "warning")


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"confidence": 1.5}, ("confidence", "less_than_equal")),
        ({"confidence": -0.1}, ("confidence", "greater_than_equal")),
        ({"confidence": float("nan")}, ("confidence", "finite_number")),
        ({"is_emergency": "yes"}, ("is_emergency", "bool_type")),
        ({"severity": "fatal"}, ("severity", "literal_error")),
        ({"predicted_class": ""}, ("predicted_class", "string_too_short")),
        ({"class": "x"}, ("class", "extra_forbidden")),
    ],
)
def test_emergency_input_bad_values(change: dict[str, Any], error: tuple[str, str]) -> None:
    assert errors_of(EmergencyInput, {**README_EMERGENCY, **change}) == [error]


def test_emergency_event_seq_is_not_negative() -> None:
    event = {**README_EMERGENCY, "device_id": "d1", "event_id": "e", "seq": -1, "timestamp": T}
    assert errors_of(EmergencyEvent, event) == [("seq", "greater_than_equal")]


# --- telemetry ---------------------------------------------------------------------------------

README_RECORDS: dict[str, dict[str, Any]] = {
    "anc": {"latency_ms": 35.2, "cancellation_db": 42.5, "snr_improvement_db": 38.2},
    "audio": {"noise_type": "office", "confidence": 0.94, "rms": 0.45},
    "system": {"battery_level": 85, "cpu_usage": 45.2, "memory_usage": 68.5},
    "errors": {"component": "dsp", "message": "buffer underrun", "code": "E42"},
}


def batch(kind: str, *records: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "device_id": "d1",
        "kind": kind,
        "msg_id": "m1",
        "seq": 0,
        "sent_at": T,
        "records": list(records),
        **fields,
    }


@pytest.mark.parametrize("kind", TELEMETRY_KINDS)
def test_each_kind_takes_the_readme_metrics(kind: str) -> None:
    parsed = TelemetryBatch.model_validate(batch(kind, {"timestamp": T, **README_RECORDS[kind]}))
    assert type(parsed.records[0]) is RECORD_MODELS[kind]  # type: ignore[index]


def test_system_metrics_of_the_other_readme_example_without_memory_usage() -> None:
    record = SystemMetrics(timestamp=T, battery_level=85, cpu_usage=45.2, temperature=42.3)
    assert record.memory_usage is None


def test_records_must_be_of_the_batch_kind() -> None:
    audio_record = {"timestamp": T, **README_RECORDS["audio"]}
    assert errors_of(TelemetryBatch, batch("anc", audio_record)) == [
        ("records.0.latency_ms", "missing"),
        ("records.0.cancellation_db", "missing"),
        ("records.0.snr_improvement_db", "missing"),
        ("records.0.noise_type", "float_type"),  # an unknown field of a metrics record: a number
    ]
    instance = AudioMetrics.model_validate(audio_record)
    assert errors_of(TelemetryBatch, batch("system", instance)) == [("records.0", "model_type")]


def test_batch_reports_header_and_record_errors_together() -> None:
    bad = batch("anc", {"timestamp": T, **README_RECORDS["anc"], "latency_ms": -1}, seq=-1)
    assert errors_of(TelemetryBatch, bad) == [
        ("seq", "greater_than_equal"),
        ("records.0.latency_ms", "greater_than_equal"),
    ]


def test_batch_with_unknown_kind_or_no_records() -> None:
    assert errors_of(TelemetryBatch, batch("video", {"timestamp": T}))[0] == (
        "kind",
        "literal_error",
    )
    assert errors_of(TelemetryBatch, batch("anc")) == [("records", "too_short")]


def test_metric_records_take_extra_numbers_only() -> None:
    record = AncMetrics.model_validate(
        {"timestamp": T, **README_RECORDS["anc"], "mic_gain_db": 6, "residual_db": -3.5}
    )
    assert record.model_dump()["mic_gain_db"] == 6
    anc = {"timestamp": T, **README_RECORDS["anc"]}
    assert errors_of(AncMetrics, {**anc, "mode": "fast"}) == [("mode", "float_type")]
    assert errors_of(AncMetrics, {**anc, "flag": True}) == [("flag", "float_type")]
    assert errors_of(AncMetrics, {**anc, "peak": float("inf")}) == [("peak", "finite_number")]
    # Error records are not metrics: no extras at all.
    error = {"timestamp": T, **README_RECORDS["errors"]}
    assert errors_of(ErrorRecord, {**error, "extra": 1}) == [("extra", "extra_forbidden")]


@pytest.mark.parametrize(
    ("model", "field", "bad"),
    [
        (AncMetrics, "latency_ms", -0.1),
        (AudioMetrics, "confidence", 1.01),
        (AudioMetrics, "rms", -1),
        (SystemMetrics, "battery_level", 101),
        (SystemMetrics, "cpu_usage", -1),
        (SystemMetrics, "memory_usage", 100.5),
    ],
)
def test_metric_ranges(model: type[BaseModel], field: str, bad: float) -> None:
    kind = next(kind for kind, candidate in RECORD_MODELS.items() if candidate is model)
    record = {"timestamp": T, **README_RECORDS[kind], field: bad}
    assert [loc for loc, _ in errors_of(model, record)] == [field]


def test_numbers_are_not_parsed_from_strings() -> None:
    record = {"timestamp": T, **README_RECORDS["anc"], "latency_ms": "35.2"}
    assert errors_of(AncMetrics, record) == [("latency_ms", "float_type")]


# --- shadow state ------------------------------------------------------------------------------

README_REPORTED = {
    "status": "online",
    "device_id": "anc-device-001",
    "firmware_version": "1.2.3",
    "anc_enabled": True,
    "anc_intensity": 0.85,
    "anc_algorithm": "nlms",
    "battery_level": 85,
    "noise_type": "office",
    "confidence": 0.94,
    "emergency_detected": False,
    "uptime": 3600,
    "timestamp": T,
}


def test_reported_state_of_the_readme_and_partial_reports() -> None:
    assert AncReportedState.model_validate(README_REPORTED).anc_intensity == 0.85
    partial = AncReportedState(anc_intensity=0.5)
    assert partial.model_dump(exclude_none=True) == {"anc_intensity": 0.5}
    cleared = AncReportedState(last_error=None)
    assert cleared.model_dump(exclude_unset=True) == {"last_error": None}


@pytest.mark.parametrize(
    ("field", "bad", "error"),
    [
        ("anc_intensity", 1.2, "less_than_equal"),
        ("battery_level", -5, "greater_than_equal"),
        ("confidence", 2, "less_than_equal"),
        ("uptime", -1, "greater_than_equal"),
        ("status", "busy", "literal_error"),
        ("anc_enabled", 1, "bool_type"),
        ("volume", 3, "extra_forbidden"),
    ],
)
def test_reported_state_ranges(field: str, bad: Any, error: str) -> None:
    assert errors_of(AncReportedState, {field: bad}) == [(field, error)]


def test_desired_state_of_the_readme_and_its_limits() -> None:
    desired = AncDesiredState.model_validate(
        {"anc_enabled": True, "anc_intensity": 0.9, "anc_algorithm": "nlms"}
    )
    assert desired.anc_intensity == 0.9
    assert AncDesiredState.model_validate({}).model_dump(exclude_none=True) == {}
    assert errors_of(AncDesiredState, {"anc_intensity": 1.5}) == [
        ("anc_intensity", "less_than_equal")
    ]
    assert errors_of(AncDesiredState, {"battery_level": 50}) == [
        ("battery_level", "extra_forbidden")
    ]


# --- JSON Schemas ------------------------------------------------------------------------------


def test_json_schemas_cover_every_wire_model() -> None:
    schemas = json_schemas()
    assert list(schemas) == [model.__name__ for model in WIRE_MODELS]
    for schema in schemas.values():
        jsonschema.Draft202012Validator.check_schema(schema)


VALID_SAMPLES: list[tuple[str, dict[str, Any]]] = [
    (
        "DeviceStatus",
        {
            "device_id": "d1",
            "status": "online",
            "firmware_version": "1.2.3",
            "session_id": "s",
            "timestamp": T,
        },
    ),
    ("Command", {"command_id": "c", "command": "reboot", "issued_at": T}),
    (
        "EmergencyEvent",
        {**README_EMERGENCY, "device_id": "d1", "event_id": "e", "seq": 0, "timestamp": T},
    ),
    *[
        ("TelemetryBatch", batch(kind, {"timestamp": T, **README_RECORDS[kind]}))
        for kind in TELEMETRY_KINDS
    ],
    ("AncReportedState", README_REPORTED),
    ("AncDesiredState", {"anc_intensity": 0.9}),
]


@pytest.mark.parametrize(("name", "payload"), VALID_SAMPLES)
def test_schema_and_model_agree_on_valid_payloads(name: str, payload: dict[str, Any]) -> None:
    jsonschema.validate(payload, json_schemas()[name])
    model = next(model for model in WIRE_MODELS if model.__name__ == name)
    model.model_validate(payload)


INVALID_SAMPLES: list[tuple[str, dict[str, Any]]] = [
    ("DeviceStatus", {**VALID_SAMPLES[0][1], "status": "away"}),
    ("DeviceStatus", {**VALID_SAMPLES[0][1], "timestamp": "2025-11-16T14:30:00+01:00"}),
    ("DeviceStatus", {**VALID_SAMPLES[0][1], "device_id": "a/b"}),
    ("Command", {"command_id": "c", "command": "reboot", "issued_at": T, "x": 1}),
    ("EmergencyEvent", {**VALID_SAMPLES[2][1], "confidence": 1.5}),
    ("TelemetryBatch", batch("anc", {"timestamp": T, **README_RECORDS["audio"]})),
    ("TelemetryBatch", batch("anc", {"timestamp": T, **README_RECORDS["anc"], "note": "x"})),
    ("AncReportedState", {"battery_level": 101}),
    ("AncDesiredState", {"anc_enabled": "true"}),
]


@pytest.mark.parametrize(("name", "payload"), INVALID_SAMPLES)
def test_schema_and_model_agree_on_invalid_payloads(name: str, payload: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(payload, json_schemas()[name])
    model = next(model for model in WIRE_MODELS if model.__name__ == name)
    with pytest.raises(ValidationError):
        model.model_validate(payload)


def test_payload_reference_page_is_up_to_date() -> None:
    generator = load_docs_script("gen_schemas")
    page = generator.PAGE.read_text(encoding="utf-8")
    assert generator.updated(page) == page, "run: .venv/bin/python docs/gen_schemas.py"
    for model in WIRE_MODELS:
        assert f"### {model.__name__}\n" in page
