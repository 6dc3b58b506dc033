"""DeviceShadowSync: the device side of one Device Shadow, converging honestly.

The state machine, in one place:

- **Local copy.** Every ``accepted``, ``documents`` and ``get`` reply of the shadow updates
  :class:`~ancsync.shadow.document.LocalShadow`, which ignores replies older than itself, so the
  copy always carries the version it reflects.
- **Reported updates are coalesced.** :meth:`DeviceShadowSync.report` and
  :meth:`~DeviceShadowSync.update_reported` merge into one pending patch (the latest value per
  key wins); one update request is in flight at a time and takes everything pending when it
  starts. Updates carry the local ``version``: a 409 means someone else changed the shadow, so
  the device re-reads it and tries again.
- **Deltas.** An ``update/delta`` older than the last one seen is discarded. A newer one (or the
  delta of a get) goes to the sync task, which validates each desired value against the desired
  model, hands the valid ones to the delta handler and reports exactly what the handler says it
  applied. The changes are taken from the local copy when it is as new as the delta (a newer
  update may have taken a desired value back). Invalid values and handler failures are
  reported in ``last_error``, never echoed. A desired value is offered once: it is offered
  again only when it changes, or after a reconnect (so a refused or clamped value cannot start
  an update-delta loop). A value whose handler raised is offered again at the next re-sync.
- **Re-sync.** After every connect, and every ``sync_interval`` seconds: get the shadow, handle
  its delta, send what is pending.
- **Stopping.** The sync is a :class:`~ancsync.lifecycle.Component`. When it stops while
  connected, the values still pending (and the :meth:`DeviceShadowSync.report_when_stopping`
  values, such as ``status: offline``) go out in one last update, which the stopping connection
  delivers before it disconnects.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream
from pydantic import BaseModel

from ancsync.errors import AncSyncError, ShadowRejected
from ancsync.lifecycle import Component
from ancsync.models import AncDesiredState, AncReportedState
from ancsync.mqtt.backoff import Backoff, BackoffPolicy
from ancsync.mqtt.outbox import Lane, Producer
from ancsync.shadow.deltas import DeltaApplier, DeltaHandler
from ancsync.shadow.document import (
    JsonObject,
    LocalShadow,
    ShadowState,
    as_patch,
    check_state_limits,
    combine,
)
from ancsync.shadow.reporting import ReportQueue
from ancsync.shadow.requests import ShadowRequester, limits_for
from ancsync.status import ShadowStatus
from ancsync.topics import ShadowTopics, parse_shadow_topic, validate_thing_name

if TYPE_CHECKING:
    from ancsync.connection import IoTConnection

__all__ = ["DeviceShadowSync"]

log = logging.getLogger("ancsync.shadow")


class DeviceShadowSync(Component):
    """Keep the device's state and one Device Shadow (classic or named) in step.

    ::

        shadow = DeviceShadowSync(iot)                # before `async with iot`, ideally
        @shadow.on_delta
        async def apply(changes: dict) -> dict:
            return anc.apply(changes)                 # return what was really applied

        async with iot, shadow:                       # syncs in the background
            await shadow.update_reported({"anc_enabled": True, "battery_level": 85})

    ``model`` validates reported state and ``desired_model`` desired values (``None``: no
    validation). ``sync_interval`` defaults to the connection's ``shadow.sync_interval`` setting.
    Each request waits ``request_timeout`` seconds for its reply and is tried ``attempts``
    times, with ``retry_backoff`` between tries; a version conflict re-reads the shadow and is
    retried up to ``conflict_retries`` times. ``error_field`` is the reported key that says
    why desired values were not applied (``None``: only log it).

    The shadow subscribes to its response topics when created, so create it before the
    connection connects: a request sent before the subscription is in place gets no reply
    until it is retried. ``stop_timeout`` bounds the shutdown.
    """

    name = "shadow"

    def __init__(
        self,
        connection: IoTConnection,
        thing_name: str | None = None,
        shadow_name: str | None = None,
        *,
        model: type[BaseModel] | None = AncReportedState,
        desired_model: type[BaseModel] | None = AncDesiredState,
        sync_interval: float | None = None,
        request_timeout: float = 5.0,
        attempts: int = 4,
        retry_backoff: BackoffPolicy | None = None,
        conflict_retries: int = 5,
        error_field: str | None = "last_error",
        delta_buffer: int = 16,
        stop_timeout: float = 5.0,
    ) -> None:
        super().__init__(stop_timeout=stop_timeout)
        self.thing_name = validate_thing_name(thing_name or connection.thing_name)
        self.shadow_name = shadow_name
        self.topics = ShadowTopics(self.thing_name, shadow_name)
        if sync_interval is None:
            sync_interval = connection.settings.shadow.sync_interval
        if sync_interval <= 0:
            raise ValueError(f"sync_interval must be above 0 seconds, got {sync_interval!r}")
        self.sync_interval = sync_interval
        self.model = model
        self.desired_model = desired_model
        self.on_delta_callback: DeltaHandler | None = None
        """The delta handler (the old API's attribute; :meth:`on_delta` sets it too)."""
        self._connection = connection
        self._conflict_retries = conflict_retries
        self._delta_buffer = delta_buffer
        self._retry_backoff = retry_backoff or BackoffPolicy(base=0.5, cap=10.0)
        self._requests = ShadowRequester(
            connection,
            self.topics,
            timeout=request_timeout,
            attempts=attempts,
            backoff=self._retry_backoff,
            limits=limits_for(connection, self.thing_name),
        )
        self._local = LocalShadow()
        self._counts: Counter[str] = Counter()
        self._reports = ReportQueue(self._send_report, self._check_reported)
        self._deltas = DeltaApplier(
            desired_model=desired_model,
            as_reported=self._reported_patch,
            error_field=error_field,
            name=self.topics.prefix,
        )
        # The newest whole delta waiting for the sync task, and the version of the last seen.
        self._delta_version = 0
        self._next_delta: tuple[int, JsonObject] | None = None
        # The sync task.
        self._wakeup = anyio.Event()
        self._connected = anyio.Event()
        self._resync_due = True
        self._producer: Producer | None = None
        self._stopping_report: Callable[[], Mapping[str, Any]] | None = None
        connection.subscribe(self.topics.all_responses, self._on_message)

    # --- the local copy ----------------------------------------------------------------------

    def get_state(self) -> ShadowState:
        """The device's copy of the shadow: desired, reported, delta and the version."""
        return self._local.snapshot()

    @property
    def version(self) -> int:
        """The shadow version the local copy reflects (0 before anything is known)."""
        return self._local.version

    def get_status(self) -> ShadowStatus:
        """Counters and queue state, JSON-serialisable (for logs and health checks)."""
        deltas = self._deltas.counts
        return {
            "shadow": self.topics.prefix,
            "version": self._local.version,
            "exists": self._local.exists,
            "syncing": self.running,
            "pending_keys": sorted(self._reports.pending),
            "coalesced": self._reports.coalesced,
            "requests": dict(self._requests.counts),
            "resyncs": self._counts["resyncs"],
            "conflicts": self._counts["conflicts"],
            "stale_deltas": self._counts["stale_deltas"],
            "malformed_deltas": self._counts["malformed_deltas"],
            "sync_errors": self._counts["sync_errors"],
            "deltas": deltas["deltas"],
            "deltas_handled": deltas["deltas_handled"],
            "deltas_dropped": deltas["deltas_dropped"],
            "invalid_desired": deltas["invalid_desired"],
            "handler_errors": deltas["handler_errors"],
        }

    # --- requests ----------------------------------------------------------------------------

    async def get(self) -> ShadowState:
        """Read the shadow from the service; return the updated local copy.

        A shadow that does not exist is not an error: the copy is empty with ``exists`` false.
        A delta in the reply goes to the sync task to be handled.
        """
        try:
            document = await self._requests.request("get", {})
        except ShadowRejected as exc:
            if exc.code != 404:
                raise
            self._local.apply_missing()
            return self.get_state()
        # The copy was already updated from the reply (_on_message); the delta is the news.
        version = document.get("version")
        state = document.get("state")
        if isinstance(version, int) and isinstance(state, dict):
            self._trust_the_service(version, document)
            if isinstance(state.get("delta"), dict):
                self._post_delta(version, state["delta"])
        return self.get_state()

    def _trust_the_service(self, version: int, document: JsonObject) -> None:
        """After the reply to this device's own get: versions above the service's are wrong.

        A message on the shadow topics that the service never sent (or one that arrived very
        late) may carry a version the shadow never had. Believed, it would make every update
        fail with 409 (the copy's version) or every delta look stale; the service's word wins.
        """
        if version < self._local.version:
            log.warning(
                "the copy of %s was at version %d, ahead of the service's %d: a message on the "
                "shadow topics carried a version the service never had (or arrived out of "
                "order); took the service's document",
                self.topics.prefix,
                self._local.version,
                version,
            )
            self._local.apply_get(document, force=True)
        if self._delta_version > version:
            log.warning(
                "a delta of %s had version %d, ahead of the shadow's %d (not from the Shadow "
                "service, or out of order): deltas from version %d on are handled again",
                self.topics.prefix,
                self._delta_version,
                version,
                version + 1,
            )
        self._delta_version = version

    def report(self, state: Mapping[str, Any] | BaseModel) -> None:
        """Queue reported values and return at once; the sync task sends them, coalesced.

        Validated now (against ``model``), so a bad value raises here and nothing is queued.
        ``None`` as a value deletes that key from the shadow.

        Raises:
            InvalidPayload: a value fails validation, or the state would nest too deep.
            PayloadTooLarge: the shadow state would exceed 8 KB; names the size.
        """
        self._reports.add(self._reported_patch(state))
        self._wakeup.set()

    async def update_reported(self, state: Mapping[str, Any] | BaseModel) -> ShadowState:
        """Report values and wait until the service accepted them; return the local copy.

        Updates issued while one is in flight are merged into the next request (the latest value
        per key wins), so many quick calls cost few requests. Time offline is spent waiting.

        Raises:
            InvalidPayload, PayloadTooLarge: as :meth:`report`; nothing was sent.
            ShadowRejected: the service refused the update (400, 413, or 409 after
                ``conflict_retries`` re-reads).
            ShadowTimeout: no reply after every attempt; the values stay pending and go out
                with the next sync.
        """
        generation = self._reports.add(self._reported_patch(state))
        self._wakeup.set()
        await self._reports.wait_for(generation)
        return self.get_state()

    update_reported_state = update_reported
    """The previous SDK's name for :meth:`update_reported` (now a coroutine)."""

    async def update_desired(self, state: Mapping[str, Any] | BaseModel) -> ShadowState:
        """Set desired values (the cloud's side; for tools and tests) and wait for acceptance.

        Validated against ``desired_model``; ``None`` as a value deletes the key.
        """
        patch = as_patch(state, self.desired_model, "desired state")
        check_state_limits(self._local.state_with(desired=patch))
        await self._update({"desired": patch})
        return self.get_state()

    async def delete(self) -> None:
        """Delete the shadow. Its version number is kept by the service and by the local copy.

        Raises:
            ShadowRejected: 404 if there is no shadow to delete.
        """
        document = await self._requests.request("delete", {})
        self._local.apply_deleted(document)

    async def flush(self) -> None:
        """Wait until everything reported so far has been accepted (see :meth:`update_reported`)."""
        await self._reports.flush()

    # --- desired changes ---------------------------------------------------------------------

    def on_delta(self, handler: DeltaHandler) -> DeltaHandler:
        """Set the delta handler; usable as a decorator. Handlers run in the sync task.

        ``handler(changes)`` gets the valid desired values that differ from reported (a dict),
        applies what it can and returns what it actually applied (a dict or a model; ``None``
        means nothing). Exactly that is reported. If it raises, nothing is reported as applied
        and the error goes to ``last_error``; the sync task carries on, and offers the values
        again at the next re-sync.
        """
        self.on_delta_callback = handler
        return handler

    def deltas(self) -> MemoryObjectReceiveStream[JsonObject]:
        """A stream of the valid desired changes, from now on, alongside the handler.

        ``with shadow.deltas() as deltas: async for changes in deltas: ...``. Report what you
        apply with :meth:`update_reported` yourself. A listener ``delta_buffer`` changes behind
        misses the newer ones (counted as ``deltas_dropped``).
        """
        return self._deltas.listen(self._delta_buffer)

    # --- the sync task -----------------------------------------------------------------------

    async def _serve(self, task_status: TaskStatus[None]) -> None:
        """The sync task: re-sync after every connect and every ``sync_interval``, handle
        deltas, send pending reports."""
        remove_hook = self._connection.add_connect_hook(self._on_connect)
        self._producer = self._connection.producing(self.name)
        self._resync_due = True
        try:
            task_status.started()
            failures = Backoff(self._retry_backoff)
            while True:
                if await self._sync_step():
                    failures = Backoff(self._retry_backoff)
                    await self._wait_for_work()
                    continue
                # Not a tight loop when the service or the connection is down: back off,
                # or go again as soon as the connection is (re)made.
                self._connected = anyio.Event()
                with anyio.move_on_after(failures.next_delay()):
                    await self._connected.wait()
        finally:
            remove_hook()

    async def _shutdown(self) -> None:
        """Send what is pending, and the stopping report, in one last update (no version: a
        conflict could not be retried now). Not connected: it stays pending."""
        try:
            final = dict(self._reports.pending)
            if self._stopping_report is not None:
                final = combine(final, self._reported_patch(self._stopping_report()))
            if final and self._connection.connected:
                self._connection.publish_nowait(
                    self.topics.update, {"state": {"reported": final}}, lane=Lane.SHADOW
                )
                self._reports.take_pending()
        except AncSyncError as exc:
            log.warning("the last shadow update of %s was not sent: %s", self.topics.prefix, exc)
        finally:
            if self._producer is not None:
                self._producer.finish()

    def report_when_stopping(self, values: Callable[[], Mapping[str, Any]]) -> None:
        """Add ``values()`` to the last update sent when the sync stops while connected.

        The orchestrator reports ``status: offline`` and the uptime this way.
        """
        self._stopping_report = values

    def start_sync(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> Coroutine[Any, Any, None]:
        """The original SDK's name for :meth:`run`: ``await tg.start(shadow.start_sync)``."""
        return self.run(task_status=task_status)

    async def _on_connect(self) -> None:
        # A connect hook must be quick: it only tells the sync task to re-sync, and lets every
        # desired value be offered again (the device may have restarted its ANC state).
        self._deltas.forget_offered()
        self._resync_due = True
        self._wakeup.set()
        self._connected.set()

    async def _wait_for_work(self) -> None:
        if self._resync_due or self._next_delta is not None or self._reports.pending:
            return
        self._wakeup = anyio.Event()
        with anyio.move_on_after(self.sync_interval) as timer:
            await self._wakeup.wait()
        if timer.cancelled_caught:
            self._resync_due = True

    async def _sync_step(self) -> bool:
        """Re-sync if due, handle the waiting delta, send pending reports; False on failure."""
        try:
            if self._resync_due:
                self._resync_due = False
                self._counts["resyncs"] += 1
                self._deltas.retry_failed()
                await self.get()
            if self._next_delta is not None:
                version, changes = self._next_delta
                self._next_delta = None
                report = await self._deltas.apply(
                    self._changes_now(version, changes),
                    self.on_delta_callback,
                    self._local.reported,
                )
                if report:
                    self._reports.add(report)
            if self._reports.pending:
                await self._reports.flush()
        except AncSyncError as exc:
            # The sync task carries on: pending values stay queued, the re-sync is retried.
            self._counts["sync_errors"] += 1
            self._resync_due = True
            log.warning("shadow sync of %s failed: %s", self.topics.prefix, exc)
            return False
        return True

    # --- incoming messages (the router's worker: must be quick) ------------------------------

    def _on_message(self, topic: str, document: Any) -> None:
        parsed = parse_shadow_topic(topic)
        if parsed is None:
            return
        operation, suffix = parsed.operation, parsed.suffix
        if not isinstance(document, dict):
            if suffix == "delta":
                self._malformed_delta(f"a JSON {type(document).__name__}, not an object")
            else:
                log.warning(
                    "ignored a message on %s: a JSON %s, not a shadow document (an object)",
                    topic,
                    type(document).__name__,
                )
            return
        if suffix == "accepted":
            # The copy first, so a caller woken by the reply sees it.
            if operation == "get":
                self._local.apply_get(document)
            elif operation == "update":
                self._local.apply_accepted(document)
            else:
                self._local.apply_deleted(document)
        elif suffix == "documents":
            self._local.apply_documents(document)
        elif suffix == "delta":
            self._on_delta_message(document)
        if suffix in ("accepted", "rejected"):
            self._requests.dispatch(operation, suffix == "accepted", document)

    def _on_delta_message(self, document: JsonObject) -> None:
        version, changes = document.get("version"), document.get("state")
        if not isinstance(version, int) or isinstance(version, bool):
            self._malformed_delta(f"its version is {_shown(version)}, not an integer")
            return
        if not isinstance(changes, dict):
            self._malformed_delta(f"its state is {_shown(changes)}, not an object")
            return
        if version <= self._delta_version:
            self._counts["stale_deltas"] += 1
            log.info(
                "discarded a stale delta (version %d, applied %d)", version, self._delta_version
            )
            if version >= self._local.version:
                # Stale, yet not older than the copy: the delta that made it look stale had a
                # version the shadow may never have had. Ask the service (it decides).
                self._resync_due = True
                self._wakeup.set()
            return
        self._delta_version = version
        self._post_delta(version, changes)

    def _malformed_delta(self, problem: str) -> None:
        self._counts["malformed_deltas"] += 1
        log.warning(
            "ignored a delta on %s: %s. Nothing was applied; a shadow delta is an object with "
            "an integer version and an object state (is something other than the Device "
            "Shadow service publishing on this topic?)",
            self.topics.update_delta,
            problem,
        )

    def _changes_now(self, version: int, changes: JsonObject) -> JsonObject:
        """The desired changes to handle now: the local copy's delta, unless the copy is older
        than the delta message. The copy also follows updates that publish no delta (desired
        set back to what is reported), so a superseded desired value is never applied."""
        state = self._local.snapshot()
        return state.delta if state.version >= version else changes

    def _post_delta(self, version: int, changes: JsonObject) -> None:
        if self._next_delta is not None and self._next_delta[0] > version:
            return  # a newer whole delta is already waiting
        self._next_delta = (version, changes)
        self._wakeup.set()

    # --- reporting ---------------------------------------------------------------------------

    def _reported_patch(self, state: Mapping[str, Any] | BaseModel) -> JsonObject:
        return as_patch(state, self.model, "reported state")

    def _check_reported(self, reported: JsonObject) -> None:
        check_state_limits(self._local.state_with(reported=reported))

    async def _send_report(self, batch: JsonObject) -> None:
        await self._update({"reported": batch})

    async def _update(self, state: JsonObject) -> JsonObject:
        """An update carrying the local version; on 409, re-read the shadow and try again."""
        conflicts = 0
        while True:
            body: JsonObject = {"state": state}
            if self._local.exists:
                body["version"] = self._local.version
            try:
                return await self._requests.request("update", body)
            except ShadowRejected as exc:
                if exc.code != 409 or conflicts >= self._conflict_retries:
                    raise
            conflicts += 1
            self._counts["conflicts"] += 1
            log.info("version conflict on %s; re-reading the shadow", self.topics.prefix)
            await self.get()


def _shown(value: Any) -> str:
    """A value from a bad message, short enough for a log line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."
