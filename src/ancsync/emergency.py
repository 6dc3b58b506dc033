"""EmergencyReporter: emergency events that are never lost.

``await reporter.report_emergency({...})`` validates the event, gives it an ``event_id`` and the
next emergency ``seq``, writes it to the durable store (an fsynced SQLite commit) and queues it on
the connection's emergency lane at QoS 1, ahead of shadow and telemetry traffic. It returns once
the event is on disk and queued: it does not wait for the network unless asked
(``wait_for_ack=True``). The store entry is deleted only when the broker acknowledges the event;
an event whose publish fails is queued again (same ``event_id``), and events a previous process
left in the store are re-sent when the reporter starts.

The reporter is a :class:`~ancsync.lifecycle.Component`. Stopping it (cancellation, Ctrl-C,
``aclose()``) lets a report being written finish and be queued, waits (within its deadline, while
connected) for the outcome of every queued event, and deletes the acknowledged ones from the
store, so they are not sent again on the next start.

The trade-off: ``report_emergency`` is the one call of the control loop that waits for a disk
write (about a millisecond on flash, far less on tmpfs). The write runs in a worker thread, so the
event loop, and the ANC loop on it, keep running meanwhile; only the caller awaits durability,
because an emergency that is reported "done" and then lost in a crash is the failure this SDK
exists to prevent. A caller that cannot wait can start the call as a task.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from pydantic import ValidationError

from ancsync.codec import describe_errors, encode
from ancsync.durable.store import DurableStore, StoredMessage
from ancsync.durable.stream import DurableStream
from ancsync.errors import (
    AncSyncError,
    InvalidPayload,
    PublishTimeout,
    TopicNotAllowed,
)
from ancsync.lifecycle import Component
from ancsync.models import EmergencyEvent, EmergencyInput, new_id
from ancsync.mqtt.outbox import Producer, PublishHandle
from ancsync.status import EmergencyStatus
from ancsync.topics import emergency_topic, validate_thing_name

if TYPE_CHECKING:
    from ancsync.connection import IoTConnection

__all__ = ["EmergencyReporter"]

logger = logging.getLogger("ancsync.emergency")

_SEQ_STREAM = "emergency"


class EmergencyReporter(Component):
    """Report emergency events durably, at QoS 1, on the emergency lane.

    Run it for the life of the connection, so acknowledged events leave the store and stored
    events of a previous run are re-sent::

        async with EmergencyReporter(iot, store=DurableStore.in_dir(data_dir)) as reporter:
            event = await reporter.report_emergency(
                {"is_emergency": True, "predicted_class": "fire_alarm",
                 "confidence": 0.94, "action": "anc_bypassed"}
            )

    (or ``await task_group.start(reporter.run)``). ``retry_interval`` is the pause before an
    event whose publish failed is queued again; ``stop_timeout`` bounds the shutdown.
    """

    name = "emergency"

    def __init__(
        self,
        connection: IoTConnection,
        device_id: str | None = None,
        *,
        store: DurableStore,
        retry_interval: float = 5.0,
        stop_timeout: float = 5.0,
    ) -> None:
        super().__init__(stop_timeout=stop_timeout)
        self._iot = connection
        self.device_id = validate_thing_name(device_id or connection.thing_name)
        self._stream = DurableStream(store, connection, "emergency")
        self._topic = emergency_topic(self.device_id)
        self._retry_interval = retry_interval
        self._tasks: TaskGroup | None = None
        self._producer: Producer | None = None
        # Events stored and not yet acknowledged (event_id -> wall-clock time stored), oldest
        # first, and the handle of each one queued by this process.
        self._pending: dict[str, float] = {}
        self._handles: dict[str, PublishHandle] = {}
        self._acknowledging: set[str] = set()
        self._reported = 0
        self._acknowledged = 0
        self._resent = 0
        self._last_error: str | None = None
        self._all_acknowledged: anyio.Event | None = None
        self._commit_lock = anyio.Lock()

    # -- running -------------------------------------------------------------------------------

    async def _serve(self, task_status: TaskStatus[None]) -> None:
        """Re-send the events stored by a previous run, then follow acknowledgements until
        cancelled."""
        self._producer = self._iot.producing(self.name)
        try:
            async with anyio.create_task_group() as tasks:
                # Under the lock no report_emergency is between its commit and its queueing:
                # every stored event is either queued already (its handle is known) or not.
                async with self._commit_lock:
                    stored = await self._stream.left_by_last_run()
                    self._tasks = tasks
                    for message in stored:
                        self._pending.setdefault(message.msg_id, message.created_at)
                        handle = self._handles.get(message.msg_id)
                        if handle is None:
                            self._resent += 1
                            handle = self._queue(message)
                        tasks.start_soon(self._follow, message, handle)
                if self._resent:
                    logger.info("re-sending %d stored emergency events", self._resent)
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._tasks = None

    async def _shutdown(self) -> None:
        """Let a report being written be queued, wait for the outcomes, forget the delivered."""
        try:
            async with self._commit_lock:
                if self._producer is not None:
                    self._producer.finish()
            with anyio.move_on_after(self._time_left() - min(1.0, self._time_left() / 4)):
                await self._iot.while_connected(self._all_decided())
        finally:
            if self._producer is not None:
                self._producer.finish()
            await self._forget_delivered()

    async def _all_decided(self) -> None:
        """Return once the connection has delivered or given up every queued event."""
        for handle in list(self._handles.values()):
            if not handle.done:
                decided = anyio.Event()
                handle.add_done_callback(lambda _error: decided.set())  # noqa: B023 (awaited)
                await decided.wait()

    async def _forget_delivered(self) -> None:
        """Delete from the store the events acknowledged since the followers stopped."""
        for event_id, handle in list(self._handles.items()):
            if handle.done:
                try:
                    await handle.delivered()
                except AncSyncError:
                    continue  # not delivered: it stays stored for the next start
                await self._acknowledge(event_id)

    # -- reporting -----------------------------------------------------------------------------

    async def report_emergency(
        self,
        event: Mapping[str, Any] | EmergencyInput,
        *,
        wait_for_ack: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 (only with wait_for_ack)
    ) -> EmergencyEvent:
        """Validate, number, store durably and queue an emergency event; return it as sent.

        When this returns the event is on disk: it will be delivered even if the process dies
        now. With ``wait_for_ack`` it returns only once the broker has acknowledged it (raising
        :class:`~ancsync.errors.PublishTimeout` after ``timeout`` seconds; the event stays
        queued and stored).

        Raises:
            InvalidPayload: the event is missing a field or has a bad value (named).
            StorageError: the event could not be written (disk full, read-only): not reported.
            BufferFull: the store is full of unacknowledged emergencies: not reported.
        """
        data = self._validate(event)
        event_id = new_id()
        numbered: list[EmergencyEvent] = []

        def number(seq: int) -> StoredMessage:
            # Called by the store inside the transaction that inserts the row: the seq is used
            # only if the event is committed, and commit order is seq order.
            numbered.append(data.to_event(device_id=self.device_id, event_id=event_id, seq=seq))
            return StoredMessage(
                msg_id=event_id,
                lane="emergency",
                topic=self._topic,
                payload=encode(numbered[-1], what="emergency event"),
            )

        # The lock queues events in commit (= seq) order, and keeps _serve from re-sending an
        # event committed here but not yet queued. Once the write starts, finish it and queue
        # the event even if the caller is cancelled: a stored event must also be on its way.
        async with self._commit_lock:
            with anyio.CancelScope(shield=True):
                try:
                    message = await self._stream.store(_SEQ_STREAM, number)
                except AncSyncError as exc:
                    self._last_error = str(exc)
                    logger.error("emergency %s NOT reported: %s", event_id, exc)  # noqa: TRY400
                    raise
                self._reported += 1
                self._pending[message.msg_id] = message.created_at
                handle = self._queue(message)
                if self._tasks is not None:
                    self._tasks.start_soon(self._follow, message, handle)
        emergency = numbered[-1]
        logger.info(
            "emergency %s (%s, seq %d) stored and queued",
            emergency.event_id,
            emergency.predicted_class,
            emergency.seq,
        )
        if wait_for_ack:
            await self._wait_for_ack(message, handle, timeout)
        return emergency

    async def _wait_for_ack(
        self,
        message: StoredMessage,
        handle: PublishHandle | None,
        timeout: float | None,  # noqa: ASYNC109 (the caller's timeout, passed on)
    ) -> None:
        deadline = anyio.current_time() + (math.inf if timeout is None else timeout)
        if handle is None:  # the connection refused it for now: keep offering it
            with anyio.move_on_after(timeout):
                handle = await self._requeue_until_accepted(message)
            if handle is None:
                raise PublishTimeout(
                    f"emergency {message.msg_id} could not be queued within {timeout} s; it "
                    "stays stored and is retried"
                )
        remaining = None if timeout is None else max(0.0, deadline - anyio.current_time())
        await handle.delivered(remaining)
        if self._tasks is None:  # otherwise _follow, waiting on the same handle, deletes it
            await self._acknowledge(message.msg_id)

    def _validate(self, event: Mapping[str, Any] | EmergencyInput) -> EmergencyInput:
        if isinstance(event, EmergencyInput):
            return event
        if not isinstance(event, Mapping):
            raise InvalidPayload(
                f"report_emergency takes a mapping or an EmergencyInput, not {type(event).__name__}"
            )
        try:
            return EmergencyInput.model_validate(event)
        except ValidationError as exc:
            raise InvalidPayload(f"emergency event is invalid: {describe_errors(exc)}") from None

    def _queue(self, message: StoredMessage) -> PublishHandle | None:
        """Queue on the emergency lane; ``None`` if the connection refused (retried later)."""
        try:
            handle = self._stream.send(message)
        except AncSyncError as exc:
            self._last_error = str(exc)
            logger.warning("emergency %s stored but not queued yet: %s", message.msg_id, exc)
            return None
        self._handles[message.msg_id] = handle
        return handle

    async def _requeue_until_accepted(self, message: StoredMessage) -> PublishHandle:
        while True:
            handle = self._queue(message)
            if handle is not None:
                return handle
            await anyio.sleep(self._retry_interval)

    async def _follow(self, message: StoredMessage, handle: PublishHandle | None) -> None:
        """Wait for the acknowledgement, queueing the event again whenever it fails."""
        while True:
            if handle is None:
                await anyio.sleep(self._retry_interval)
                handle = await self._requeue_until_accepted(message)
            try:
                await handle.delivered()
            except TopicNotAllowed as exc:
                # Retrying would only disconnect the device again: it stays stored, and is sent
                # on the next start (once the policy is fixed).
                self._last_error = str(exc)
                logger.error("emergency %s NOT delivered: %s", message.msg_id, exc)  # noqa: TRY400
                return
            except AncSyncError as exc:
                self._last_error = str(exc)
                logger.warning("emergency %s not delivered (%s); retrying", message.msg_id, exc)
                handle = None
            else:
                await self._acknowledge(message.msg_id)
                return

    async def _acknowledge(self, event_id: str) -> None:
        if event_id not in self._pending or event_id in self._acknowledging:
            return  # already done, or being done, by the other waiter
        self._acknowledging.add(event_id)
        try:
            # A store that cannot delete keeps it: sent again on the next start, never lost.
            await self._stream.forget_delivered()
        finally:
            self._acknowledging.discard(event_id)
        # Only now: a follower cancelled by a stop above leaves the handle for the shutdown.
        self._handles.pop(event_id, None)
        del self._pending[event_id]
        self._acknowledged += 1
        if not self._pending and self._all_acknowledged is not None:
            self._all_acknowledged.set()
            self._all_acknowledged = None

    async def wait_acknowledged(self) -> None:
        """Wait until every reported (and re-sent) event has been acknowledged.

        Bound it with a deadline (``anyio.move_on_after``), e.g. when shutting down.
        """
        while self._pending:
            if self._all_acknowledged is None:
                self._all_acknowledged = anyio.Event()
            await self._all_acknowledged.wait()

    # -- status --------------------------------------------------------------------------------

    def get_status(self) -> EmergencyStatus:
        """Counters and the age of the oldest unacknowledged event, JSON-serialisable."""
        oldest = next(iter(self._pending.values()), None)
        return {
            "running": self.running,
            "reported": self._reported,
            "acknowledged": self._acknowledged,
            "pending": len(self._pending),
            "resent_from_store": self._resent,
            "oldest_pending_age_s": None if oldest is None else max(0.0, time.time() - oldest),
            "last_error": self._last_error,
        }
