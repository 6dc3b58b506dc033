"""The exceptions ancsync raises.

Every error the library raises derives from :class:`AncSyncError`, so a caller can catch one type.
Errors from aiomqtt, paho, ssl and sqlite are translated into these at a single place in the
module that talks to that backend; nothing above that layer sees a backend exception.
"""

from __future__ import annotations

__all__ = [
    "AncSyncError",
    "BufferFull",
    "CertificateRejected",
    "ConfigError",
    "ConnectError",
    "ConnectTimeout",
    "DataDirInUse",
    "InvalidPayload",
    "InvalidTopic",
    "JobRejected",
    "NotAuthorized",
    "NotStarted",
    "PayloadTooLarge",
    "ProvisionError",
    "ProvisioningRejected",
    "PublishTimeout",
    "ShadowRejected",
    "ShadowTimeout",
    "StorageError",
    "TLSError",
    "TerminalStateReached",
    "TopicNotAllowed",
    "VersionMismatch",
]


class AncSyncError(Exception):
    """Base class of every error raised by ancsync."""


class ConfigError(AncSyncError, ValueError):
    """A setting is missing or has a value that is not allowed.

    The message names the setting, the bad value and what is allowed.
    """


class ConnectError(AncSyncError):
    """The connection to the broker could not be made or was lost.

    ``permanent`` is true when retrying cannot help (a bad certificate, not authorised) and the
    session stops trying until the configuration changes.
    """

    permanent: bool = False


class ConnectTimeout(ConnectError, TimeoutError):
    """No connection was made within the time asked for (``wait_connected(timeout=...)``).

    The session keeps trying in the background; the message carries the last connect error.
    """


class TLSError(ConnectError):
    """The TLS handshake failed: a certificate was refused or could not be verified."""

    permanent = True


class NotAuthorized(ConnectError):
    """The broker refused the connection: the certificate or client id is not authorised."""

    permanent = True


class TopicNotAllowed(AncSyncError):
    """The broker closes the connection whenever this topic is used: the policy denies it.

    AWS IoT Core answers a publish or subscription its policy denies by disconnecting (MQTT
    3.1.1). The session stops using the topic instead of reconnecting in a loop; ``topic`` is the
    topic or filter.
    """

    def __init__(self, message: str, *, topic: str) -> None:
        super().__init__(message)
        self.topic = topic


class InvalidTopic(AncSyncError, ValueError):
    """A topic or topic filter breaks MQTT syntax or an AWS IoT limit."""


class InvalidPayload(AncSyncError, ValueError):
    """A payload could not be encoded, decoded or validated against its model."""


class PayloadTooLarge(InvalidPayload):
    """A payload or shadow document is over the AWS IoT size limit; nothing was sent."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        self.what = what
        self.size = size
        self.limit = limit
        super().__init__(
            f"{what} is {size} bytes, over the AWS IoT limit of {limit} bytes; "
            "send less data per message (smaller batches or fewer fields)"
        )


class BufferFull(AncSyncError):
    """A bounded queue reached its hard limit and the message was not accepted."""


class NotStarted(AncSyncError, RuntimeError):
    """The component was used before it was started (use ``async with`` or ``await start()``)."""


class PublishTimeout(AncSyncError, TimeoutError):
    """No acknowledgement arrived in time. The broker may still have the message."""


class ShadowTimeout(AncSyncError, TimeoutError):
    """A Device Shadow request got no accepted or rejected response in time."""


class ShadowRejected(AncSyncError):
    """The Device Shadow service rejected a request with an error code."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"shadow request rejected: {code} {message}")


class ProvisionError(AncSyncError):
    """Provisioning a device in AWS IoT failed: credentials, policy, endpoint or an AWS refusal.

    The message says which step failed and what to change.
    """


class ProvisioningRejected(ProvisionError):
    """AWS IoT's fleet provisioning refused a request (its ``/rejected`` reply).

    ``step`` names the request (``CreateCertificateFromCsr``, ``CreateKeysAndCertificate``,
    ``RegisterThing``); ``status_code``, ``error_code`` and ``error_message`` are AWS's.
    """

    def __init__(self, step: str, status_code: int, error_code: str, error_message: str) -> None:
        super().__init__(
            f"{step} was rejected: {status_code} {error_code}: {error_message or 'no message'}"
        )
        self.step = step
        self.status_code = status_code
        self.error_code = error_code
        self.error_message = error_message


class StorageError(AncSyncError, OSError):
    """The durable outbox could not write (disk full, read-only or corrupt store)."""


class DataDirInUse(StorageError):
    """Another process already has this durable store open: one device process per data_dir.

    Two processes writing one outbox would send each other's messages and reuse ``seq``
    numbers, so the second is refused. ``path`` is the store file; ``holder`` the process id
    written in its lock file by the process holding it, when known.
    """

    def __init__(self, message: str, *, path: str, holder: int | None) -> None:
        super().__init__(message)
        self.path = path
        self.holder = holder


class JobRejected(AncSyncError):
    """The Jobs service rejected a request: ``code`` is AWS's error code (e.g. InvalidRequest).

    ``execution_state`` is the execution's status, statusDetails and versionNumber when the
    service sent them (InvalidStateTransition, VersionMismatch).
    """

    def __init__(
        self, code: str, message: str, execution_state: dict[str, object] | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.execution_state = execution_state


class CertificateRejected(AncSyncError):
    """A certificates request was refused: ``code`` is AWS's error code, e.g.
    ``ResourceNotFoundException`` for an unknown certificate id."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class VersionMismatch(JobRejected):
    """The execution changed since this device last saw it (someone else updated it).

    Describe the execution again before deciding what to do; nothing is retried for you.
    """


class TerminalStateReached(JobRejected):
    """The execution is already terminal: canceled or removed by an operator, or timed out.

    The device can no longer update it; stop working on the job.
    """
