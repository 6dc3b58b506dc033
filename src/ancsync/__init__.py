"""ancsync: keep active-noise-cancelling devices in sync with AWS IoT Core, asyncio-native.

Everything public is re-exported here; import from ``ancsync`` only.
"""

from ancsync.codec import decode_model, encode
from ancsync.config import Settings
from ancsync.connection import IoTConnection
from ancsync.emergency import EmergencyReporter
from ancsync.errors import (
    AncSyncError,
    BufferFull,
    ConfigError,
    ConnectError,
    ConnectTimeout,
    InvalidPayload,
    InvalidTopic,
    NotAuthorized,
    NotStarted,
    PayloadTooLarge,
    PublishTimeout,
    ShadowRejected,
    ShadowTimeout,
    StorageError,
    TLSError,
)
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
from ancsync.mqtt.outbox import Lane, PublishHandle
from ancsync.mqtt.session import ConnectionEvent
from ancsync.mqtt.store import DurableStore
from ancsync.operator import OperatorCredentials, ShadowDocument, ShadowOperator
from ancsync.orchestrator import DataSyncOrchestrator
from ancsync.shadow import DeviceShadowSync, ShadowState
from ancsync.telemetry import TelemetryPublisher
from ancsync.topics import (
    TELEMETRY_KINDS,
    ShadowTopics,
    TelemetryKind,
    commands_topic,
    emergency_topic,
    status_topic,
    telemetry_topic,
)

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
    "Lane",
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
