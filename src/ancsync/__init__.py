"""ancsync: keep active-noise-cancelling devices in sync with AWS IoT Core, asyncio-native.

Everything public is re-exported here; import from ``ancsync`` only.
"""

import importlib
from typing import TYPE_CHECKING, Any

from ancsync._version import __version__

# The public names, by the module that defines them: the one list to edit. They are imported on
# first use (PEP 562), so that `import ancsync.cli` (the command line) does not pay for the
# models and the MQTT stack before it needs them.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "ancsync.codec": (
        "decode_model",
        "encode",
    ),
    "ancsync.config": ("Settings",),
    "ancsync.connection": ("IoTConnection",),
    "ancsync.durable.store": ("DurableStore",),
    "ancsync.emergency": ("EmergencyReporter",),
    "ancsync.errors": (
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
        "TerminalStateReached",
        "TLSError",
        "TopicNotAllowed",
        "VersionMismatch",
    ),
    "ancsync.jobs": (
        "DeviceJobs",
        "Job",
        "JobStatus",
    ),
    "ancsync.lifecycle": (
        "Component",
        "ComponentState",
    ),
    "ancsync.models": (
        "AncDesiredState",
        "AncMetrics",
        "AncReportedState",
        "AudioMetrics",
        "Command",
        "DeviceStatus",
        "EmergencyEvent",
        "EmergencyInput",
        "ErrorRecord",
        "json_schemas",
        "SystemMetrics",
        "TelemetryBatch",
        "utc_now",
    ),
    "ancsync.mqtt.backoff": ("BackoffPolicy",),
    "ancsync.mqtt.outbox": (
        "Lane",
        "LaneLimits",
        "PublishHandle",
    ),
    "ancsync.mqtt.session": ("ConnectionEvent",),
    "ancsync.orchestrator": ("DataSyncOrchestrator",),
    "ancsync.provisioning.claim": (
        "FleetProvisioning",
        "provision_by_claim",
    ),
    "ancsync.provisioning.identity": ("DeviceIdentity",),
    "ancsync.provisioning.rotation": (
        "CertificateRotator",
        "rotate_certificate",
    ),
    "ancsync.shadow": (
        "DeviceShadowSync",
        "ShadowState",
    ),
    "ancsync.status": (
        "CommandsStatus",
        "ComponentStatus",
        "ConnectionStatus",
        "EmergencyStatus",
        "ErrorInfo",
        "JobsStatus",
        "LaneStatus",
        "OrchestratorEmergencyStatus",
        "OrchestratorShadowStatus",
        "OrchestratorStatus",
        "RateLimitStatus",
        "RecordCounts",
        "RouterStatus",
        "RouteStatus",
        "SessionError",
        "SessionStatus",
        "ShadowStatus",
        "TelemetryStatus",
    ),
    "ancsync.telemetry": ("TelemetryPublisher",),
    "ancsync.testing": (
        "FakeBroker",
        "FakeTransport",
    ),
    "ancsync.tools.operator": (
        "OperatorCredentials",
        "ShadowDocument",
        "ShadowOperator",
    ),
    "ancsync.topics": (
        "commands_topic",
        "emergency_topic",
        "ShadowTopics",
        "status_topic",
        "TELEMETRY_KINDS",
        "telemetry_topic",
        "TelemetryKind",
    ),
}
_LAZY = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [*_LAZY, "__version__"]

if TYPE_CHECKING:  # the same names, for type checkers (a unit test keeps them in step)
    from ancsync.codec import (
        decode_model as decode_model,
    )
    from ancsync.codec import (
        encode as encode,
    )
    from ancsync.config import Settings as Settings
    from ancsync.connection import IoTConnection as IoTConnection
    from ancsync.durable.store import DurableStore as DurableStore
    from ancsync.emergency import EmergencyReporter as EmergencyReporter
    from ancsync.errors import (
        AncSyncError as AncSyncError,
    )
    from ancsync.errors import (
        BufferFull as BufferFull,
    )
    from ancsync.errors import (
        CertificateRejected as CertificateRejected,
    )
    from ancsync.errors import (
        ConfigError as ConfigError,
    )
    from ancsync.errors import (
        ConnectError as ConnectError,
    )
    from ancsync.errors import (
        ConnectTimeout as ConnectTimeout,
    )
    from ancsync.errors import (
        DataDirInUse as DataDirInUse,
    )
    from ancsync.errors import (
        InvalidPayload as InvalidPayload,
    )
    from ancsync.errors import (
        InvalidTopic as InvalidTopic,
    )
    from ancsync.errors import (
        JobRejected as JobRejected,
    )
    from ancsync.errors import (
        NotAuthorized as NotAuthorized,
    )
    from ancsync.errors import (
        NotStarted as NotStarted,
    )
    from ancsync.errors import (
        PayloadTooLarge as PayloadTooLarge,
    )
    from ancsync.errors import (
        ProvisionError as ProvisionError,
    )
    from ancsync.errors import (
        ProvisioningRejected as ProvisioningRejected,
    )
    from ancsync.errors import (
        PublishTimeout as PublishTimeout,
    )
    from ancsync.errors import (
        ShadowRejected as ShadowRejected,
    )
    from ancsync.errors import (
        ShadowTimeout as ShadowTimeout,
    )
    from ancsync.errors import (
        StorageError as StorageError,
    )
    from ancsync.errors import TerminalStateReached as TerminalStateReached
    from ancsync.errors import (
        TLSError as TLSError,
    )
    from ancsync.errors import (
        TopicNotAllowed as TopicNotAllowed,
    )
    from ancsync.errors import VersionMismatch as VersionMismatch
    from ancsync.jobs import (
        DeviceJobs as DeviceJobs,
    )
    from ancsync.jobs import (
        Job as Job,
    )
    from ancsync.jobs import (
        JobStatus as JobStatus,
    )
    from ancsync.lifecycle import (
        Component as Component,
    )
    from ancsync.lifecycle import (
        ComponentState as ComponentState,
    )
    from ancsync.models import (
        AncDesiredState as AncDesiredState,
    )
    from ancsync.models import (
        AncMetrics as AncMetrics,
    )
    from ancsync.models import (
        AncReportedState as AncReportedState,
    )
    from ancsync.models import (
        AudioMetrics as AudioMetrics,
    )
    from ancsync.models import (
        Command as Command,
    )
    from ancsync.models import (
        DeviceStatus as DeviceStatus,
    )
    from ancsync.models import (
        EmergencyEvent as EmergencyEvent,
    )
    from ancsync.models import (
        EmergencyInput as EmergencyInput,
    )
    from ancsync.models import (
        ErrorRecord as ErrorRecord,
    )
    from ancsync.models import (
        SystemMetrics as SystemMetrics,
    )
    from ancsync.models import (
        TelemetryBatch as TelemetryBatch,
    )
    from ancsync.models import (
        json_schemas as json_schemas,
    )
    from ancsync.models import (
        utc_now as utc_now,
    )
    from ancsync.mqtt.backoff import BackoffPolicy as BackoffPolicy
    from ancsync.mqtt.outbox import (
        Lane as Lane,
    )
    from ancsync.mqtt.outbox import (
        LaneLimits as LaneLimits,
    )
    from ancsync.mqtt.outbox import (
        PublishHandle as PublishHandle,
    )
    from ancsync.mqtt.session import ConnectionEvent as ConnectionEvent
    from ancsync.orchestrator import DataSyncOrchestrator as DataSyncOrchestrator
    from ancsync.provisioning.claim import (
        FleetProvisioning as FleetProvisioning,
    )
    from ancsync.provisioning.claim import (
        provision_by_claim as provision_by_claim,
    )
    from ancsync.provisioning.identity import DeviceIdentity as DeviceIdentity
    from ancsync.provisioning.rotation import (
        CertificateRotator as CertificateRotator,
    )
    from ancsync.provisioning.rotation import (
        rotate_certificate as rotate_certificate,
    )
    from ancsync.shadow import (
        DeviceShadowSync as DeviceShadowSync,
    )
    from ancsync.shadow import (
        ShadowState as ShadowState,
    )
    from ancsync.status import (
        CommandsStatus as CommandsStatus,
    )
    from ancsync.status import (
        ComponentStatus as ComponentStatus,
    )
    from ancsync.status import (
        ConnectionStatus as ConnectionStatus,
    )
    from ancsync.status import (
        EmergencyStatus as EmergencyStatus,
    )
    from ancsync.status import (
        ErrorInfo as ErrorInfo,
    )
    from ancsync.status import (
        JobsStatus as JobsStatus,
    )
    from ancsync.status import (
        LaneStatus as LaneStatus,
    )
    from ancsync.status import (
        OrchestratorEmergencyStatus as OrchestratorEmergencyStatus,
    )
    from ancsync.status import (
        OrchestratorShadowStatus as OrchestratorShadowStatus,
    )
    from ancsync.status import (
        OrchestratorStatus as OrchestratorStatus,
    )
    from ancsync.status import (
        RateLimitStatus as RateLimitStatus,
    )
    from ancsync.status import (
        RecordCounts as RecordCounts,
    )
    from ancsync.status import (
        RouterStatus as RouterStatus,
    )
    from ancsync.status import (
        RouteStatus as RouteStatus,
    )
    from ancsync.status import (
        SessionError as SessionError,
    )
    from ancsync.status import (
        SessionStatus as SessionStatus,
    )
    from ancsync.status import (
        ShadowStatus as ShadowStatus,
    )
    from ancsync.status import (
        TelemetryStatus as TelemetryStatus,
    )
    from ancsync.telemetry import TelemetryPublisher as TelemetryPublisher
    from ancsync.testing import (
        FakeBroker as FakeBroker,
    )
    from ancsync.testing import (
        FakeTransport as FakeTransport,
    )
    from ancsync.tools.operator import (
        OperatorCredentials as OperatorCredentials,
    )
    from ancsync.tools.operator import (
        ShadowDocument as ShadowDocument,
    )
    from ancsync.tools.operator import (
        ShadowOperator as ShadowOperator,
    )
    from ancsync.topics import (
        TELEMETRY_KINDS as TELEMETRY_KINDS,
    )
    from ancsync.topics import (
        ShadowTopics as ShadowTopics,
    )
    from ancsync.topics import (
        TelemetryKind as TelemetryKind,
    )
    from ancsync.topics import (
        commands_topic as commands_topic,
    )
    from ancsync.topics import (
        emergency_topic as emergency_topic,
    )
    from ancsync.topics import (
        status_topic as status_topic,
    )
    from ancsync.topics import (
        telemetry_topic as telemetry_topic,
    )


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
