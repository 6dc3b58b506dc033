"""The shape of ``get_status()``: typed dictionaries that mypy checks, JSON as they are.

:meth:`ancsync.DataSyncOrchestrator.get_status` returns an :class:`OrchestratorStatus`; each part
returns its own piece (:meth:`ancsync.IoTConnection.get_status` a :class:`ConnectionStatus`, and
so on). They are plain ``dict`` objects at run time, so ``json.dumps(status)`` works and a key is
read as ``status["connection"]["state"]``; the classes only tell a type checker (and you) which
keys exist and what they hold. Times are ISO 8601 strings in UTC; ages and waits are seconds.
"""

from __future__ import annotations

from typing import Any, TypedDict

__all__ = [
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
    "RouteStatus",
    "RouterStatus",
    "SessionError",
    "SessionStatus",
    "ShadowStatus",
    "TelemetryStatus",
]


class SessionError(TypedDict):
    """The last connection error."""

    type: str
    """The exception class, e.g. ``"TLSError"``, ``"ConnectError"``."""
    message: str
    """What went wrong and what to do about it."""
    permanent: bool
    """Retrying cannot help (a refused certificate, policy or client id): the session waits
    at the longest backoff until the cloud side is fixed."""
    at: str | None
    """When it happened."""


class SessionStatus(TypedDict):
    """The MQTT session: state, attempts and in-flight publishes."""

    state: str
    """``stopped``, ``connecting``, ``connected`` or ``waiting`` (backing off before a retry)."""
    connected_since: str | None
    """When the current connection was made; ``None`` while not connected."""
    connect_attempts: int
    """Connect attempts since start, successful or not."""
    reconnect_count: int
    """Connections made after the first one."""
    last_error: SessionError | None
    """The last connection error, if any."""
    subscriptions: int
    """Topic filters the broker granted."""
    failed_subscriptions: list[str]
    """Topic filters the broker refused (check the policy's ``iot:Subscribe``)."""
    refused_topics: list[str]
    """Topics no longer published to: the broker closed the connection each time (the policy's
    ``iot:Publish``)."""
    in_flight: int
    """QoS 1 publishes written and not yet acknowledged."""
    published: int
    """Publishes written since start."""
    acknowledged: int
    """Publishes acknowledged (PUBACK) since start."""


class LaneStatus(TypedDict):
    """One outbox lane (``emergency``, ``shadow``, ``telemetry``, ``status``)."""

    messages: int
    """Messages waiting."""
    bytes: int
    """Payload bytes waiting."""
    enqueued: int
    """Messages accepted since start."""
    requeued: int
    """Messages put back after a connection was lost before their PUBACK."""
    dropped: int
    """Messages dropped, oldest first, because the lane was full."""
    coalesced: int
    """Messages replaced by a newer one for the same key (shadow reports)."""
    rejected: int
    """Messages refused because the lane was full and may not drop (emergencies)."""
    oldest_age_s: float | None
    """Seconds the oldest waiting message has waited; ``None`` when the lane is empty."""


class RateLimitStatus(TypedDict):
    """The client-side limit that keeps the device under AWS IoT's per-connection limits."""

    messages_per_second: float
    """Publishes allowed per second."""
    bytes_per_second: float
    """Payload bytes allowed per second."""
    acquired: int
    """Publishes let through since start."""
    waits: int
    """Publishes that had to wait for the limit."""
    wait_seconds: float
    """Total time spent waiting for the limit."""


class RouteStatus(TypedDict):
    """One subscription's route: its handler's queue and counters."""

    filter: str
    """The topic filter."""
    model: str | None
    """The pydantic model payloads are validated with, if any."""
    queue_size: int
    """The bound of the route's queue (oldest dropped beyond it)."""
    depth: int
    """Messages waiting for the handler."""
    queued: int
    """Messages queued for the handler since start."""
    handled: int
    """Messages the handler finished."""
    dropped: int
    """Messages dropped because the handler fell behind."""
    invalid: int
    """Payloads that were not valid JSON or did not fit the model."""
    handler_errors: int
    """Times the handler raised (the route keeps running)."""


class RouterStatus(TypedDict):
    """Incoming messages: totals over all routes (removed ones included) and each route."""

    received: int
    """Messages received from the broker."""
    unmatched: int
    """Messages no route's filter matched."""
    queued: int
    """Messages queued for a handler."""
    handled: int
    """Messages handlers finished."""
    dropped: int
    """Messages dropped because a handler fell behind."""
    invalid: int
    """Payloads refused as invalid."""
    handler_errors: int
    """Times a handler raised."""
    routes: list[RouteStatus]
    """Each current route."""


class ConnectionStatus(SessionStatus):
    """:meth:`ancsync.IoTConnection.get_status`: the session, the outbox and the router."""

    thing_name: str
    """The thing name, also the MQTT client id."""
    endpoint: str
    """The broker's host."""
    port: int
    """The broker's port."""
    dropped: int
    """Messages dropped over all lanes."""
    invalid: int
    """Incoming payloads refused as invalid, over all routes."""
    lanes: dict[str, LaneStatus]
    """Each outbox lane, by name."""
    rate_limit: RateLimitStatus
    """The client-side rate limit."""
    router: RouterStatus
    """Incoming messages."""


class RecordCounts(TypedDict):
    """One telemetry kind's records (``anc``, ``audio``, ``system``), by outcome."""

    accepted: int
    """Records accepted by ``publish_*`` (and re-sent from the store at start)."""
    waiting: int
    """Records waiting to be batched."""
    delivered: int
    """Records in batches the broker acknowledged."""
    dropped: int
    """Records pushed out by the ``max_buffer_size`` bound."""
    failed: int
    """Records in batches the connection refused or dropped."""
    unsent: int
    """Records a stop could neither send nor store."""
    unconfirmed: int
    """Records in batches whose PUBACK had not come when a stop gave up."""
    stored: int
    """Records left in the durable store, re-sent on the next start."""


class TelemetryStatus(TypedDict):
    """:meth:`ancsync.TelemetryPublisher.get_status`: every accepted record in one outcome.

    ``accepted == delivered + dropped + failed + unsent + unconfirmed + stored + waiting +
    in_flight_records``, per kind and in total.
    """

    running: bool
    """The batching task is running."""
    durable: bool
    """Batches are stored before they are sent (a ``data_dir`` was given)."""
    depth: int
    """Records waiting to be batched."""
    bytes: int
    """Encoded bytes of the waiting records."""
    in_flight_records: int
    """Records in batches handed to the connection and not yet acknowledged."""
    max_buffer_size: int
    """The bound on waiting and in-flight records."""
    dropped: int
    """Records dropped by the bound, all kinds."""
    failed: int
    """Records in refused batches, all kinds."""
    unsent: int
    """Records a stop could neither send nor store, all kinds."""
    unconfirmed: int
    """Records whose PUBACK had not come when a stop gave up, all kinds."""
    stored: int
    """Records left in the durable store, all kinds."""
    batches_sent: int
    """Batches handed to the connection."""
    batches_acknowledged: int
    """Batches the broker acknowledged."""
    records: dict[str, RecordCounts]
    """Each kind's records by outcome."""


class EmergencyStatus(TypedDict):
    """:meth:`ancsync.EmergencyReporter.get_status`."""

    running: bool
    """The reporter's task is running."""
    reported: int
    """Events stored and queued since start."""
    acknowledged: int
    """Events the broker acknowledged (PUBACK), then forgotten by the store."""
    pending: int
    """Events stored and not yet acknowledged."""
    resent_from_store: int
    """Events found in the store at start and sent again."""
    oldest_pending_age_s: float | None
    """Seconds the oldest pending event has waited; ``None`` when none is pending."""
    last_error: str | None
    """The last storage or delivery error."""


class JobsStatus(TypedDict):
    """:meth:`ancsync.DeviceJobs.get_status`."""

    running: bool
    """The jobs component is running."""
    current_job: str | None
    """The jobId being worked on; ``None`` between jobs."""
    current_status: str | None
    """Its status as last reported (``QUEUED``, ``IN_PROGRESS``...)."""
    jobs_received: int
    """Job executions handed to a handler or to ``async for`` since start."""
    jobs_resumed: int
    """Of those, executions that were already IN_PROGRESS (resumed after a restart)."""
    jobs_succeeded: int
    """Jobs this device finished as SUCCEEDED."""
    jobs_failed: int
    """Jobs this device finished as FAILED (a handler that raised counts here)."""
    jobs_rejected: int
    """Jobs this device REJECTED (e.g. a document that does not validate)."""
    jobs_canceled: int
    """Jobs canceled, removed or timed out by the service while running here."""
    updates_unanswered: int
    """Status updates in the journal the service has not answered yet."""
    updates_sent: int
    """Status updates published (first sending)."""
    updates_resent: int
    """Status updates sent again after no answer within ``reply_timeout`` or a reconnect."""
    updates_accepted: int
    """Status updates the service accepted (or had applied already)."""
    updates_rejected: int
    """Status updates the service rejected (VersionMismatch, TerminalStateReached...)."""
    last_error: str | None
    """The last rejection or unanswered update."""


class ShadowStatus(TypedDict):
    """:meth:`ancsync.DeviceShadowSync.get_status`."""

    shadow: str
    """The shadow's topic prefix (``$aws/things/<thing>/shadow`` or a named shadow's)."""
    version: int
    """The shadow version the local copy reflects (0 before anything is known)."""
    exists: bool
    """Whether the shadow exists in the service, as far as the local copy knows."""
    syncing: bool
    """The sync task is running."""
    pending_keys: list[str]
    """Reported keys queued and not yet accepted by the service."""
    coalesced: int
    """Reports merged into a newer one before they were sent."""
    requests: dict[str, int]
    """Request outcomes: ``accepted``, ``retries``, ``timeouts``, ``rejected_<code>``."""
    resyncs: int
    """Full gets after a reconnect or a version gap."""
    conflicts: int
    """Updates the service refused with 409 (version conflict) and retried."""
    stale_deltas: int
    """Deltas ignored because a newer version was already handled."""
    malformed_deltas: int
    """Messages on ``update/delta`` that are JSON but no shadow delta (not an object, or no
    integer ``version`` and object ``state``): logged with what is wrong, and ignored."""
    sync_errors: int
    """Sync-task failures (it keeps running)."""
    deltas: int
    """Deltas received."""
    deltas_handled: int
    """Deltas given to the handler."""
    deltas_dropped: int
    """Deltas dropped because the handler fell behind (the newest is kept)."""
    invalid_desired: int
    """Desired values refused as invalid (reported in ``last_error``)."""
    handler_errors: int
    """Times the delta handler raised (nothing was reported as applied)."""


class OrchestratorShadowStatus(ShadowStatus):
    """The orchestrator's shadow section: the sync's counters and the state."""

    desired: dict[str, Any]
    """The desired state, as the service last sent it."""
    reported: dict[str, Any]
    """The reported state, as the service last accepted it."""
    in_sync: bool
    """Reported matches desired (no delta)."""


class OrchestratorEmergencyStatus(EmergencyStatus):
    """The orchestrator's emergency section."""

    cloud_acknowledged: int
    """Events the cloud acknowledged with an ``emergency_ack`` command."""


class CommandsStatus(TypedDict):
    """The command dispatcher (``anc/devices/<thing>/commands``)."""

    handlers: list[str]
    """Commands with a handler."""
    received: int
    """Commands received."""
    handled: int
    """Commands whose handler finished."""
    duplicates: int
    """Repeats of a ``command_id`` already handled (ignored)."""
    unhandled: int
    """Commands with no handler."""
    errors: int
    """Times a handler raised."""
    last: dict[str, Any] | None
    """The last command: ``command`` and ``command_id``."""
    last_error: str | None
    """The last handler error."""


class ErrorInfo(TypedDict):
    """A component's last failure."""

    type: str
    """The exception class."""
    message: str
    """Its message."""
    at: str
    """When it happened."""


class ComponentStatus(TypedDict):
    """A supervised component (shadow sync, telemetry, emergencies)."""

    running: bool
    """It is running now (not failed and waiting for a restart)."""
    restarts: int
    """Times it was restarted after a failure."""
    last_error: ErrorInfo | None
    """Its last failure."""


class OrchestratorStatus(TypedDict):
    """:meth:`ancsync.DataSyncOrchestrator.get_status`: everything worth watching."""

    thing_name: str
    """The device's thing name."""
    running: bool
    """Started and not stopped."""
    started_at: str | None
    """When it started."""
    uptime_s: int
    """Seconds since it started."""
    connection: ConnectionStatus
    """The connection, outbox and router."""
    shadow: OrchestratorShadowStatus
    """The shadow sync and the ANC state."""
    telemetry: TelemetryStatus
    """Telemetry records by outcome."""
    emergency: OrchestratorEmergencyStatus
    """Emergency events."""
    jobs: JobsStatus
    """AWS IoT Jobs on this device."""
    commands: CommandsStatus
    """Commands from the cloud."""
    components: dict[str, ComponentStatus]
    """Each supervised component, by name."""
