"""ancsync: keep active-noise-cancelling devices in sync with AWS IoT Core, asyncio-native.

Everything public is re-exported here; import from ``ancsync`` only.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ancsync.codec import decode_model, encode
    from ancsync.config import Settings
    from ancsync.connection import IoTConnection
    from ancsync.durable.store import DurableStore
    from ancsync.emergency import EmergencyReporter
    from ancsync.errors import (
        AncSyncError,
        BufferFull,
        ConfigError,
        ConnectError,
        ConnectTimeout,
        InvalidPayload,
        InvalidTopic,
        JobRejected,
        NotAuthorized,
        NotStarted,
        PayloadTooLarge,
        PublishTimeout,
        ShadowRejected,
        ShadowTimeout,
        StorageError,
        TerminalStateReached,
        TLSError,
        VersionMismatch,
    )
    from ancsync.jobs import DeviceJobs, Job, JobStatus
    from ancsync.models import (
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
        utc_now,
    )
    from ancsync.mqtt.backoff import BackoffPolicy
    from ancsync.mqtt.outbox import Lane, LaneLimits, PublishHandle
    from ancsync.mqtt.session import ConnectionEvent
    from ancsync.orchestrator import DataSyncOrchestrator
    from ancsync.shadow import DeviceShadowSync, ShadowState
    from ancsync.telemetry import TelemetryPublisher
    from ancsync.tools.operator import OperatorCredentials, ShadowDocument, ShadowOperator
    from ancsync.topics import (
        TELEMETRY_KINDS,
        ShadowTopics,
        TelemetryKind,
        commands_topic,
        emergency_topic,
        status_topic,
        telemetry_topic,
    )

# Imported on first use (PEP 562), so that `import ancsync.cli` (the command line) does not
# pay for pydantic-settings, the models and the MQTT stack before it needs them.
_LAZY = {
    "decode_model": "ancsync.codec",
    "encode": "ancsync.codec",
    "Settings": "ancsync.config",
    "IoTConnection": "ancsync.connection",
    "EmergencyReporter": "ancsync.emergency",
    "AncSyncError": "ancsync.errors",
    "BufferFull": "ancsync.errors",
    "ConfigError": "ancsync.errors",
    "ConnectError": "ancsync.errors",
    "ConnectTimeout": "ancsync.errors",
    "InvalidPayload": "ancsync.errors",
    "InvalidTopic": "ancsync.errors",
    "JobRejected": "ancsync.errors",
    "TerminalStateReached": "ancsync.errors",
    "VersionMismatch": "ancsync.errors",
    "DeviceJobs": "ancsync.jobs",
    "Job": "ancsync.jobs",
    "JobStatus": "ancsync.jobs",
    "NotAuthorized": "ancsync.errors",
    "NotStarted": "ancsync.errors",
    "PayloadTooLarge": "ancsync.errors",
    "PublishTimeout": "ancsync.errors",
    "ShadowRejected": "ancsync.errors",
    "ShadowTimeout": "ancsync.errors",
    "StorageError": "ancsync.errors",
    "TLSError": "ancsync.errors",
    "AncDesiredState": "ancsync.models",
    "AncMetrics": "ancsync.models",
    "AncReportedState": "ancsync.models",
    "AudioMetrics": "ancsync.models",
    "Command": "ancsync.models",
    "DeviceStatus": "ancsync.models",
    "EmergencyEvent": "ancsync.models",
    "EmergencyInput": "ancsync.models",
    "ErrorRecord": "ancsync.models",
    "SystemMetrics": "ancsync.models",
    "TelemetryBatch": "ancsync.models",
    "json_schemas": "ancsync.models",
    "utc_now": "ancsync.models",
    "BackoffPolicy": "ancsync.mqtt.backoff",
    "Lane": "ancsync.mqtt.outbox",
    "LaneLimits": "ancsync.mqtt.outbox",
    "PublishHandle": "ancsync.mqtt.outbox",
    "ConnectionEvent": "ancsync.mqtt.session",
    "DurableStore": "ancsync.durable.store",
    "OperatorCredentials": "ancsync.tools.operator",
    "ShadowDocument": "ancsync.tools.operator",
    "ShadowOperator": "ancsync.tools.operator",
    "DataSyncOrchestrator": "ancsync.orchestrator",
    "DeviceShadowSync": "ancsync.shadow",
    "ShadowState": "ancsync.shadow",
    "TelemetryPublisher": "ancsync.telemetry",
    "ShadowTopics": "ancsync.topics",
    "TELEMETRY_KINDS": "ancsync.topics",
    "TelemetryKind": "ancsync.topics",
    "commands_topic": "ancsync.topics",
    "emergency_topic": "ancsync.topics",
    "status_topic": "ancsync.topics",
    "telemetry_topic": "ancsync.topics",
}


def __getattr__(name: str) -> Any:
    """Import a public name's module the first time the name is used."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ancsync' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__version__ = "0.1.0"

__all__ = [
    "TELEMETRY_KINDS",
    "AncDesiredState",
    "AncMetrics",
    "AncReportedState",
    "AncSyncError",
    "AudioMetrics",
    "BackoffPolicy",
    "BufferFull",
    "Command",
    "ConfigError",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionEvent",
    "DataSyncOrchestrator",
    "DeviceJobs",
    "DeviceShadowSync",
    "DeviceStatus",
    "DurableStore",
    "EmergencyEvent",
    "EmergencyInput",
    "EmergencyReporter",
    "ErrorRecord",
    "InvalidPayload",
    "InvalidTopic",
    "IoTConnection",
    "Job",
    "JobRejected",
    "JobStatus",
    "Lane",
    "LaneLimits",
    "NotAuthorized",
    "NotStarted",
    "OperatorCredentials",
    "PayloadTooLarge",
    "PublishHandle",
    "PublishTimeout",
    "Settings",
    "ShadowDocument",
    "ShadowOperator",
    "ShadowRejected",
    "ShadowState",
    "ShadowTimeout",
    "ShadowTopics",
    "StorageError",
    "SystemMetrics",
    "TLSError",
    "TelemetryBatch",
    "TelemetryKind",
    "TelemetryPublisher",
    "TerminalStateReached",
    "VersionMismatch",
    "__version__",
    "commands_topic",
    "decode_model",
    "emergency_topic",
    "encode",
    "json_schemas",
    "status_topic",
    "telemetry_topic",
    "utc_now",
]
