"""The payloads ancsync sends and receives, as pydantic models.

Wire models are strict on purpose: a field the model does not know is an error (``extra="forbid"``),
and no value is coerced (``"0.5"`` is not a number, ``"yes"`` is not a boolean). A typo in a
command from the cloud or a metric from the control loop fails loudly instead of vanishing.

The one exception is the metric records (:class:`AncMetrics`, :class:`AudioMetrics`,
:class:`SystemMetrics`): they take extra fields so a device can report a metric this SDK does not
name, as long as its value is a finite number. Names the SDK does know are range-checked.

Timestamps are strings in ISO 8601 UTC with a ``Z`` (:data:`Timestamp`), exactly as they travel.
"""

from __future__ import annotations

import functools
import re
import time
import uuid
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ancsync.errors import InvalidTopic
from ancsync.topics import TelemetryKind, validate_thing_name

__all__ = [
    "RECORD_MODELS",
    "WIRE_MODELS",
    "AncDesiredState",
    "AncMetrics",
    "AncReportedState",
    "AudioMetrics",
    "Command",
    "DeviceStatus",
    "EmergencyEvent",
    "EmergencyInput",
    "ErrorRecord",
    "Severity",
    "SystemMetrics",
    "TelemetryBatch",
    "TelemetryRecord",
    "ThingName",
    "Timestamp",
    "json_schemas",
    "new_id",
    "utc_now",
]


def utc_now() -> str:
    """The current time in ISO 8601 UTC with milliseconds: ``2025-11-16T14:30:00.123Z``."""
    now = time.time()
    second = int(now)
    return f"{_second_text(second)}.{int((now - second) * 1000):03d}Z"


@functools.lru_cache(maxsize=4)
def _second_text(second: int) -> str:
    # Formatting a datetime is most of what stamping a record costs; a second's text is reused
    # for every record of that second.
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def new_id() -> str:
    """A fresh random identifier for ``msg_id``, ``event_id``, ``session_id`` (32 hex digits)."""
    return uuid.uuid4().hex


_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?Z")
# The same shape with the time of day in range, so only the date is left to check.
_TIMESTAMP_IN_RANGE = re.compile(
    r"(\d{4}-\d{2}-\d{2})T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d{1,6})?Z"
)


@functools.lru_cache(maxsize=64)
def _is_date(text: str) -> bool:
    """Whether ``YYYY-MM-DD`` is a real date (2025-02-30 is not); records share a few dates."""
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _check_timestamp(value: str) -> str:
    matched = _TIMESTAMP_IN_RANGE.fullmatch(value)
    if matched is not None and _is_date(matched.group(1)):
        return value
    raise PydanticCustomError(
        "timestamp",
        "{value} is not an ISO 8601 UTC timestamp: use the form 2025-11-16T14:30:00Z "
        "(milliseconds allowed: 2025-11-16T14:30:00.123Z)",
        {"value": repr(value)},
    )


def _check_thing_name(value: str) -> str:
    try:
        return validate_thing_name(value)
    except InvalidTopic as exc:
        raise PydanticCustomError("thing_name", "{reason}", {"reason": str(exc)}) from None


Timestamp = Annotated[
    str,
    AfterValidator(_check_timestamp),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "pattern": "^" + _TIMESTAMP.pattern + "$",
            "examples": ["2025-11-16T14:30:00Z", "2025-11-16T14:30:00.123Z"],
        }
    ),
]
"""ISO 8601 UTC with ``Z``, seconds or up to microseconds; kept as the string that travels."""

ThingName = Annotated[
    str,
    AfterValidator(_check_thing_name),
    WithJsonSchema({"type": "string", "pattern": "^[a-zA-Z0-9:_-]{1,128}$"}),
]
"""An AWS IoT thing name; the device id equals the thing name."""

Identifier = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Percent = Annotated[float, Field(ge=0, le=100)]
Severity = Literal["info", "warning", "critical"]


class _WireModel(BaseModel):
    """Base of every payload: unknown fields are errors, values are never coerced."""

    model_config = ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False, use_attribute_docstrings=True
    )


class DeviceStatus(_WireModel):
    """``anc/devices/{id}/status``, retained; ``"offline"`` is also the last will."""

    device_id: ThingName
    """The thing name."""
    status: Literal["online", "offline"]
    firmware_version: Label
    """e.g. ``"1.2.3"``."""
    session_id: Identifier
    """Changes on every connection, so the cloud can tell reconnects apart."""
    timestamp: Timestamp


class Command(_WireModel):
    """``anc/devices/{id}/commands``: a command from the cloud."""

    command_id: Identifier
    """Unique per command, so the device can ignore a repeat."""
    command: Label
    """What to do, e.g. ``"set_anc"``."""
    params: dict[str, Any] = Field(default_factory=dict)
    """The command's arguments."""
    issued_at: Timestamp


class EmergencyInput(_WireModel):
    """What a caller passes to ``report_emergency``; the SDK adds device id, event id and seq."""

    is_emergency: bool
    predicted_class: Label
    """What the classifier heard, e.g. ``"fire_alarm"``."""
    confidence: Fraction
    action: Label
    """What the device did about it, e.g. ``"anc_bypassed"``."""
    severity: Severity = "critical"
    timestamp: Timestamp | None = None
    """When it happened; the time of the call when omitted."""

    def to_event(self, *, device_id: str, event_id: str, seq: int) -> EmergencyEvent:
        """The flat event to publish, stamped now unless the input carries a timestamp."""
        return EmergencyEvent(
            device_id=device_id,
            event_id=event_id,
            seq=seq,
            timestamp=self.timestamp or utc_now(),
            is_emergency=self.is_emergency,
            predicted_class=self.predicted_class,
            confidence=self.confidence,
            action=self.action,
            severity=self.severity,
        )


class EmergencyEvent(_WireModel):
    """``anc/devices/{id}/emergency``, QoS 1; flat, for rules like ``WHERE is_emergency = true``."""

    device_id: ThingName
    event_id: Identifier
    """Unique per event and kept across retries, so the cloud can drop duplicates."""
    seq: int = Field(ge=0)
    """Per-device counter of emergency events, so the cloud can detect gaps."""
    timestamp: Timestamp
    is_emergency: bool
    predicted_class: Label
    """What the classifier heard, e.g. ``"fire_alarm"``."""
    confidence: Fraction
    action: Label
    """What the device did about it, e.g. ``"anc_bypassed"``."""
    severity: Severity = "critical"


class _MetricsRecord(_WireModel):
    """A telemetry record that also takes extra metrics, each a finite number."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, float] = Field(init=False)

    timestamp: Timestamp
    """When the metrics were measured."""


class AncMetrics(_MetricsRecord):
    """A record of ``anc/telemetry/{id}/anc``: noise-cancelling performance."""

    latency_ms: float = Field(ge=0)
    """Processing latency in milliseconds."""
    cancellation_db: float
    """Noise reduction achieved, in dB."""
    snr_improvement_db: float
    """Signal-to-noise ratio gained, in dB."""


class AudioMetrics(_MetricsRecord):
    """A record of ``anc/telemetry/{id}/audio``: what the classifier hears."""

    noise_type: Label
    """The classified noise, e.g. ``"office"``."""
    confidence: Fraction
    rms: float = Field(ge=0)
    """RMS level of the input signal."""


class SystemMetrics(_MetricsRecord):
    """A record of ``anc/telemetry/{id}/system``: device health."""

    battery_level: Percent
    """Percent."""
    cpu_usage: Percent
    """Percent."""
    memory_usage: Percent | None = None
    """Percent."""
    temperature: float | None = None
    """Degrees Celsius."""


class ErrorRecord(_WireModel):
    """A record of ``anc/telemetry/{id}/errors``: an error the device logged."""

    timestamp: Timestamp
    component: Label
    """Where it happened, e.g. ``"dsp"``."""
    message: Annotated[str, StringConstraints(min_length=1, max_length=2048)]
    severity: Literal["warning", "error", "critical"] = "error"
    code: Label | None = None
    """A machine-readable error code."""


TelemetryRecord = AncMetrics | AudioMetrics | SystemMetrics | ErrorRecord

RECORD_MODELS: dict[TelemetryKind, type[TelemetryRecord]] = {
    "anc": AncMetrics,
    "audio": AudioMetrics,
    "system": SystemMetrics,
    "errors": ErrorRecord,
}
"""The record model of each telemetry kind."""


class TelemetryBatch(_WireModel):
    """``anc/telemetry/{id}/{kind}``: a batch of records, all of the model of ``kind``."""

    device_id: ThingName
    kind: TelemetryKind
    msg_id: Identifier
    """Unique per batch and kept across retries, so the cloud can drop duplicates."""
    seq: int = Field(ge=0)
    """Per-device, per-kind counter, so the cloud can detect gaps."""
    sent_at: Timestamp
    """When the batch was sent; each record has its own timestamp."""
    records: list[TelemetryRecord] = Field(min_length=1)

    @model_validator(mode="wrap")
    @classmethod
    def _validate_records_as_kind(
        cls, data: Any, handler: ValidatorFunctionWrapHandler
    ) -> TelemetryBatch:
        # A plain union would accept a system record in an "anc" batch and report every
        # alternative's errors; validating against the kind's own model gives one clear error.
        kind = data.get("kind") if isinstance(data, dict) else None
        model = next((m for k, m in RECORD_MODELS.items() if k == kind), None)
        if model is None or not isinstance(data.get("records"), list):
            batch: TelemetryBatch = handler(data)
            return batch
        records: list[TelemetryRecord] = []
        errors: list[Any] = []
        for index, record in enumerate(data["records"]):
            try:
                records.append(model.model_validate(record))
            except ValidationError as exc:
                errors += _line_errors(exc, ("records", index))
        if not errors:
            batch = handler({**data, "records": records})
            return batch
        # Report the other fields' errors together with the records' ones.
        try:
            handler({**data, "records": [None]})
        except ValidationError as exc:
            others = [e for e in _line_errors(exc, ()) if e["loc"][:1] != ("records",)]
            errors = others + errors
        raise ValidationError.from_exception_data(cls.__name__, errors)


def _line_errors(exc: ValidationError, prefix: tuple[str | int, ...]) -> list[Any]:
    """``exc``'s errors, located under ``prefix``, in the form a new ValidationError takes.

    Each becomes a custom error with the original type and message, because
    ``from_exception_data`` only accepts built-in types by name.
    """
    return [
        {
            "type": PydanticCustomError(error["type"], "{reason}", {"reason": error["msg"]}),
            "loc": (*prefix, *error["loc"]),
            "input": error["input"],
        }
        for error in exc.errors()
    ]


class AncReportedState(_WireModel):
    """``state.reported`` of the shadow. Every field is optional so partial reports validate.

    Encode with ``exclude_unset=True`` when a ``None`` must travel as JSON ``null`` (which deletes
    the key from the shadow, e.g. to clear ``last_error``); the codec drops ``None`` fields.
    """

    status: Literal["online", "offline"] | None = None
    device_id: ThingName | None = None
    firmware_version: Label | None = None
    anc_enabled: bool | None = None
    anc_intensity: Fraction | None = None
    """0 is the lightest cancellation, 1 the strongest."""
    anc_algorithm: Label | None = None
    battery_level: Percent | None = None
    """Percent."""
    noise_type: Label | None = None
    confidence: Fraction | None = None
    """Confidence of ``noise_type``."""
    emergency_detected: bool | None = None
    uptime: int | None = Field(default=None, ge=0)
    """Seconds since the device started."""
    timestamp: Timestamp | None = None
    last_error: Annotated[str, StringConstraints(max_length=1024)] | None = None
    """Why the last desired value was not applied (the device kept its current value)."""
    certificate_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None
    """The AWS id of the certificate the device rotated to (reported by enable_rotation)."""
    certificate_rotated_at: Timestamp | None = None
    """When the device last rotated its certificate."""


class AncDesiredState(_WireModel):
    """``state.desired`` of the shadow: what the cloud asks the device to apply."""

    anc_enabled: bool | None = None
    anc_intensity: Fraction | None = None
    """0 is the lightest cancellation, 1 the strongest."""
    anc_algorithm: Label | None = None


WIRE_MODELS: tuple[type[BaseModel], ...] = (
    DeviceStatus,
    Command,
    EmergencyEvent,
    TelemetryBatch,
    AncReportedState,
    AncDesiredState,
)
"""Every payload that travels, in the order the docs list them."""


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema (draft 2020-12) of every wire model, by model name.

    Record models appear under ``$defs`` of ``TelemetryBatch``, whose schema also says which
    record model goes with which ``kind`` (a ``oneOf``, added here because pydantic cannot
    express a field that depends on another).
    """
    schemas = {model.__name__: model.model_json_schema() for model in WIRE_MODELS}
    schemas["TelemetryBatch"]["oneOf"] = [
        {
            "properties": {
                "kind": {"const": kind},
                "records": {"items": {"$ref": f"#/$defs/{model.__name__}"}},
            }
        }
        for kind, model in RECORD_MODELS.items()
    ]
    return schemas
