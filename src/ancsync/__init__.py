"""ancsync: keep active-noise-cancelling devices in sync with AWS IoT Core, asyncio-native.

Everything public is re-exported here; import from ``ancsync`` only.
"""

from ancsync.config import Settings
from ancsync.errors import (
    AncSyncError,
    BufferFull,
    ConfigError,
    ConnectError,
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
from ancsync.topics import ShadowTopics, TelemetryKind

__version__ = "0.1.0"

__all__ = [
    "AncDesiredState",
    "AncMetrics",
    "AncReportedState",
    "AncSyncError",
    "AudioMetrics",
    "BufferFull",
    "Command",
    "ConfigError",
    "ConnectError",
    "DeviceStatus",
    "EmergencyEvent",
    "EmergencyInput",
    "ErrorRecord",
    "InvalidPayload",
    "InvalidTopic",
    "NotAuthorized",
    "NotStarted",
    "PayloadTooLarge",
    "PublishTimeout",
    "Settings",
    "ShadowRejected",
    "ShadowTimeout",
    "ShadowTopics",
    "StorageError",
    "SystemMetrics",
    "TLSError",
    "TelemetryBatch",
    "TelemetryKind",
    "__version__",
    "json_schemas",
    "utc_now",
]
