"""ancsync: keep active-noise-cancelling devices in sync with AWS IoT Core, asyncio-native.

Everything public is re-exported here; import from ``ancsync`` only.
"""

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

__version__ = "0.1.0"

__all__ = [
    "AncSyncError",
    "BufferFull",
    "ConfigError",
    "ConnectError",
    "InvalidPayload",
    "InvalidTopic",
    "NotAuthorized",
    "NotStarted",
    "PayloadTooLarge",
    "PublishTimeout",
    "ShadowRejected",
    "ShadowTimeout",
    "StorageError",
    "TLSError",
    "__version__",
]
