"""TelemetryPublisher: validated metrics, batched per kind, bounded while offline.

The control loop calls ``publish_anc_metrics`` (and the audio, system and error variants). Each
call validates the record, encodes it and appends it to an in-memory buffer: no ``await``, no
I/O, a few microseconds, connected or not. A background task (:meth:`start_publishing`) turns
waiting records into batches on ``anc/telemetry/{id}/{kind}`` when ``batch_size``
records of a kind wait or the oldest has waited ``batch_interval`` seconds, and hands them to the
connection's telemetry lane at QoS 1.

Bounds and honesty: at most ``max_buffer_size`` records are held, counting those in
batches that are sent but not yet acknowledged. While the broker is unreachable no new batches
are made, so the buffer keeps the newest records; past the bound the oldest are dropped and
counted per kind in :meth:`get_status`.

Durability: with a :class:`~ancsync.durable.store.DurableStore` (the default when a data directory
is configured) every batch is written to the store before it is sent and deleted on PUBACK, and
:meth:`stop` stores what it could not send; the next start re-sends them with their original
``msg_id``. Records still waiting in memory when the process dies are lost: that is the price of
a ``publish_*`` call that never touches the disk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from pydantic import BaseModel

from ancsync.batching import RecordBuffer, batch_payload, encode_record, kind_of_topic
from ancsync.codec import MAX_PAYLOAD_BYTES
from ancsync.durable.store import DurableStore, StoredMessage
from ancsync.errors import AncSyncError, BufferFull, PublishTimeout, StorageError
from ancsync.models import AncMetrics, AudioMetrics, ErrorRecord, SystemMetrics, new_id
from ancsync.mqtt.outbox import Lane, PublishHandle
from ancsync.status import TelemetryStatus
from ancsync.topics import TELEMETRY_KINDS, TelemetryKind, telemetry_topic, validate_thing_name

if TYPE_CHECKING:
    from ancsync.connection import IoTConnection

__all__ = ["TelemetryPublisher"]

logger = logging.getLogger("ancsync.telemetry")

# Batches sent and not yet acknowledged. Each one on the wire is a message an emergency may
# wait behind at the broker, so few (measured: 4 instead of 8 cut emergency latency under a
# telemetry flood several-fold); the telemetry ceiling is max_in_flight * batch_size per round trip.
MAX_BATCHES_IN_FLIGHT = 4


class TelemetryPublisher:
    """Batch telemetry records per kind and publish them on the telemetry lane.

    Use it inside the device's task group::

        telemetry = TelemetryPublisher(iot, batch_size=10, batch_interval=30.0)
        tg.start_soon(telemetry.start_publishing)
        telemetry.publish_anc_metrics({"latency_ms": 35.2, "cancellation_db": 42.5,
                                       "snr_improvement_db": 38.2})
        ...
        await telemetry.stop()  # flush within the deadline

    ``device_id`` defaults to the connection's thing name. ``store`` makes batches durable
    (``durable=False`` keeps only the ``seq`` counters in it). ``max_in_flight`` bounds the
    batches sent and not yet acknowledged: raise it (or ``batch_size``) for long round trips.
    """

    def __init__(
        self,
        connection: IoTConnection,
        device_id: str | None = None,
        *,
        batch_size: int = 10,
        batch_interval: float = 30.0,
        max_buffer_size: int = 1000,
        store: DurableStore | None = None,
        durable: bool | None = None,
        max_in_flight: int = MAX_BATCHES_IN_FLIGHT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._iot = connection
        self.device_id = validate_thing_name(device_id or connection.thing_name)
        self._buffer = RecordBuffer(
            batch_size=batch_size,
            batch_interval=batch_interval,
            max_records=max_buffer_size,
            max_payload=MAX_PAYLOAD_BYTES,
            clock=clock,
        )
        if durable and store is None:
            raise ValueError("durable telemetry needs a store: pass store=DurableStore(...)")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self._max_in_flight = max_in_flight
        self._store = store
        self._durable = store is not None if durable is None else durable
        self._topics = {kind: telemetry_topic(self.device_id, kind) for kind in TELEMETRY_KINDS}
        self._seqs = dict.fromkeys(TELEMETRY_KINDS, 0)  # used when there is no store
        self._running = False
        self._stopping = False
        # anyio primitives need a running event loop: made in start_publishing().
        self._wakeup: anyio.Event | None = None
        self._window: anyio.Semaphore | None = None
        self._scope: anyio.CancelScope | None = None
        self._watchers: TaskGroup | None = None
        self._acknowledged_ids: list[str] = []
        self._forgetting = False
        self._offline_wait: anyio.CancelScope | None = None
        self._stopped: anyio.Event | None = None
        self._delivered = dict.fromkeys(TELEMETRY_KINDS, 0)
        self._failed = dict.fromkeys(TELEMETRY_KINDS, 0)
        self._unsent = dict.fromkeys(TELEMETRY_KINDS, 0)
        self._unconfirmed = dict.fromkeys(TELEMETRY_KINDS, 0)
        self._stored = dict.fromkeys(TELEMETRY_KINDS, 0)
        self._batches_sent = 0
        self._batches_acknowledged = 0

    # -- what the control loop calls: synchronous, microseconds ----------------------------------

    def publish_anc_metrics(self, metrics: Mapping[str, Any] | AncMetrics) -> None:
        """Queue ANC performance metrics (``latency_ms``, ``cancellation_db``, ...).

        ``timestamp`` defaults to now. Raises :class:`~ancsync.errors.InvalidPayload` naming the
        bad field; nothing already queued is affected.
        """
        self._add("anc", metrics)

    def publish_audio_metrics(self, metrics: Mapping[str, Any] | AudioMetrics) -> None:
        """Queue audio classification metrics (``noise_type``, ``confidence``, ``rms``)."""
        self._add("audio", metrics)

    def publish_system_metrics(self, metrics: Mapping[str, Any] | SystemMetrics) -> None:
        """Queue system health metrics (``battery_level``, ``cpu_usage``, ...)."""
        self._add("system", metrics)

    def publish_error(self, error: Mapping[str, Any] | ErrorRecord) -> None:
        """Queue an error record (``component``, ``message``, ``severity``, ``code``)."""
        self._add("errors", error)

    def _add(self, kind: TelemetryKind, record: Mapping[str, Any] | BaseModel) -> None:
        encoded = encode_record(kind, record, limit=self._buffer.max_record_bytes)
        if self._buffer.add(kind, encoded) and self._wakeup is not None:
            self._wakeup.set()

    # -- the background task ---------------------------------------------------------------------

    async def start_publishing(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Batch and publish until :meth:`stop` (or cancellation). Run it in a task group;
        ``await task_group.start(telemetry.start_publishing)`` returns once it runs.

        First re-sends the batches a previous run left in the durable store, in order. A
        publisher runs once: after :meth:`stop` this returns at once.
        """
        if self._running:
            raise RuntimeError("start_publishing() is already running")
        if self._stopping:
            logger.debug("start_publishing() after stop(): not started")
            task_status.started()
            return
        self._running = True
        self._wakeup, self._stopped = anyio.Event(), anyio.Event()
        self._window = anyio.Semaphore(self._max_in_flight)
        try:
            with anyio.CancelScope() as self._scope:
                async with anyio.create_task_group() as watchers:
                    self._watchers = watchers
                    task_status.started()
                    await self._resend_stored(watchers)
                    await self._batch_until_stopped(watchers)
                    await self._wait_until_delivered()
                    watchers.cancel_scope.cancel()
        finally:
            self._watchers = None
            if self._acknowledged_ids:  # a cancelled flusher may have left some
                with anyio.CancelScope(shield=True):
                    await self._forget_acknowledged()
            self._running = False
            self._stopped.set()

    async def stop(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 (a deadline, by design)
        """Send what is waiting and wait for acknowledgements, for at most ``timeout`` seconds.

        Then :meth:`start_publishing` returns. What could not be sent is stored durably when
        there is a durable store (and re-sent on the next start; counted as ``stored``);
        otherwise it is counted as ``unsent`` in :meth:`get_status` and logged. Batches sent
        but not acknowledged in time are counted as ``unconfirmed`` (or ``stored``).
        """
        self._stopping = True
        if self._offline_wait is not None:
            self._offline_wait.cancel()
        if self._running and self._stopped is not None:
            assert self._wakeup is not None
            self._wakeup.set()
            with anyio.move_on_after(timeout):
                await self._stopped.wait()
            if not self._stopped.is_set():
                assert self._scope is not None
                self._scope.cancel()
                await self._stopped.wait()
        await self._keep_leftovers()

    async def _batch_until_stopped(self, watchers: TaskGroup) -> None:
        assert self._wakeup is not None
        assert self._window is not None
        while True:
            kind = self._buffer.due(flush=self._stopping)
            if kind is None:
                if self._stopping:
                    return
                self._wakeup = anyio.Event()  # no await since due(): no wake-up can be missed
                with anyio.move_on_after(self._buffer.seconds_until_due()):
                    await self._wakeup.wait()
                continue
            await self._window.acquire()
            if not await self._until_connected():
                self._window.release()
                return  # stopping while offline: what waits is stored or counted by stop()
            records = self._buffer.take(kind)
            if not records:  # dropped while we waited
                self._window.release()
                continue
            message, seq = self._make_batch(kind, records)
            stored = await self._persist(message, kind, seq)
            if stored is False:
                self._window.release()
                continue
            await self._send(message, kind, watchers, stored=bool(stored))

    async def _until_connected(self) -> bool:
        """Wait for the connection (offline, records wait in the buffer, newest kept).

        Returns ``False`` when :meth:`stop` is called while offline.
        """
        if self._iot.connected:
            return True
        with anyio.CancelScope() as self._offline_wait:
            while not self._stopping:
                try:
                    await self._iot.wait_connected()
                except AncSyncError:
                    # A permanent error (bad certificate...): the session retries by itself.
                    await anyio.sleep(1.0)
                else:
                    return True
        return False

    def _make_batch(self, kind: TelemetryKind, records: list[bytes]) -> tuple[StoredMessage, int]:
        """Number and encode a batch of ``records``; returns the message and its ``seq``."""
        if self._store is not None:
            seq = self._store.reserve_seq(f"telemetry/{kind}")
        else:
            self._seqs[kind] += 1
            seq = self._seqs[kind]
        msg_id = new_id()
        message = StoredMessage(
            msg_id=msg_id,
            lane="telemetry",
            topic=self._topics[kind],
            payload=batch_payload(self.device_id, kind, msg_id, seq, records),
            records=len(records),
        )
        return message, seq

    async def _persist(self, message: StoredMessage, kind: TelemetryKind, seq: int) -> bool | None:
        """Store the batch (durable mode) or only its ``seq``.

        Returns ``True`` when stored, ``None`` when not (no store or not durable, or the store
        failed: the batch is sent anyway) and ``False`` when the store refused it for room
        (counted as failed).
        """
        if self._store is None:
            return None
        stream = f"telemetry/{kind}"
        try:
            if not self._durable:
                await anyio.to_thread.run_sync(self._store.save_seq, stream, seq)
                return None
            await anyio.to_thread.run_sync(partial(self._store.put, message, seq=(stream, seq)))
        except BufferFull as exc:
            logger.warning("telemetry batch %s not stored: %s", message.msg_id, exc)
            self._failed[kind] += message.records
            self._buffer.settle(message.records)
            return False
        except StorageError as exc:
            # Better sent without a safety net than not sent at all.
            logger.error("telemetry batch %s not stored: %s", message.msg_id, exc)  # noqa: TRY400
            return None
        return True

    async def _send(
        self, message: StoredMessage, kind: TelemetryKind, watchers: TaskGroup, *, stored: bool
    ) -> None:
        assert self._window is not None
        try:
            handle = await self._iot.publish(
                message.topic, message.payload, qos=1, lane=Lane.TELEMETRY, msg_id=message.msg_id
            )
        except AncSyncError as exc:
            logger.warning("telemetry batch %s was not queued: %s", message.msg_id, exc)
            (self._stored if stored else self._failed)[kind] += message.records
            self._buffer.settle(message.records)
            self._window.release()
            return
        self._batches_sent += 1
        watchers.start_soon(self._watch, message, kind, handle, stored)

    async def _watch(
        self, message: StoredMessage, kind: TelemetryKind, handle: PublishHandle, stored: bool
    ) -> None:
        """Wait for the batch's PUBACK and count its records in exactly one outcome."""
        assert self._window is not None
        # A batch in the durable store stays there until its PUBACK: re-sent on the next start.
        outcome: dict[TelemetryKind, int] | None = None
        try:
            await handle.delivered()
        except PublishTimeout as exc:
            # The connection stopped after sending it: the broker may or may not have it.
            logger.warning("telemetry batch %s was not acknowledged: %s", message.msg_id, exc)
            outcome = self._stored if stored else self._unconfirmed
        except AncSyncError as exc:
            # Dropped by the outbox or failed for good: counted, never silent.
            logger.warning("telemetry batch %s was not delivered: %s", message.msg_id, exc)
            outcome = self._stored if stored else self._failed
        else:
            self._batches_acknowledged += 1
            outcome = self._delivered
            if self._durable and self._store is not None:
                self._forget(message.msg_id)
        finally:
            if outcome is None:
                # Cancelled by stop() (or an unexpected error): the broker may have it or not.
                logger.warning("telemetry batch %s was not acknowledged", message.msg_id)
                outcome = self._stored if stored else self._unconfirmed
            outcome[kind] += message.records
            self._buffer.settle(message.records)
            self._window.release()

    def _forget(self, msg_id: str) -> None:
        """Delete an acknowledged batch from the store, soon, together with the others."""
        self._acknowledged_ids.append(msg_id)
        if not self._forgetting and self._watchers is not None:
            self._forgetting = True
            self._watchers.start_soon(self._forget_acknowledged)

    async def _forget_acknowledged(self) -> None:
        # One worker-thread call for all the acknowledgements that arrived since the last one.
        assert self._store is not None
        try:
            while self._acknowledged_ids:
                msg_ids, self._acknowledged_ids = self._acknowledged_ids, []
                try:
                    # Shielded: stopping must not lose acknowledgements already received.
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(partial(self._store.ack, *msg_ids))
                except StorageError as exc:
                    # They stay stored and are sent again on the next start: duplicates, no loss.
                    logger.warning("%d acknowledged batches stay stored: %s", len(msg_ids), exc)
        finally:
            self._forgetting = False

    async def _resend_stored(self, watchers: TaskGroup) -> None:
        if not self._durable or self._store is None:
            return
        assert self._window is not None
        stored = await anyio.to_thread.run_sync(self._store.pending, "telemetry")
        if stored:
            logger.info("re-sending %d telemetry batches stored by a previous run", len(stored))
        for message in stored:
            kind = kind_of_topic(message.topic)
            await self._window.acquire()
            if not await self._until_connected():
                self._window.release()
                return  # stopping: the rest stays stored for the next start
            self._buffer.readmit(kind, message.records)
            await self._send(message, kind, watchers, stored=True)

    async def _wait_until_delivered(self) -> None:
        assert self._window is not None
        for _ in range(self._max_in_flight):
            await self._window.acquire()
        for _ in range(self._max_in_flight):
            self._window.release()

    async def _keep_leftovers(self) -> None:
        """After stop: store the records that were never batched, or count them as unsent."""
        while (kind := self._buffer.due(flush=True)) is not None:
            records = self._buffer.take(kind)
            stored: bool | None = None
            if self._durable:
                message, seq = self._make_batch(kind, records)
                stored = await self._persist(message, kind, seq)
                if stored is False:
                    continue  # refused by the store, already counted as failed
            self._buffer.settle(len(records))
            (self._stored if stored else self._unsent)[kind] += len(records)
        if any(self._unsent.values()):
            logger.warning("telemetry stopped with records not sent: %s", self._unsent)

    # -- status ----------------------------------------------------------------------------------

    def get_status(self) -> TelemetryStatus:
        """Depth, bytes, drops and batch counters, JSON-serialisable.

        ``dropped`` counts records pushed out by the ``max_buffer_size`` bound; ``failed``
        counts records in batches the connection refused or dropped; ``unsent`` counts records
        that :meth:`stop` could neither send nor store; ``unconfirmed`` counts records in
        batches handed to the connection whose PUBACK had not come when :meth:`stop` gave up
        (the broker may or may not have them); ``stored`` counts records left in the durable
        store, re-sent on the next start. Every accepted record is in exactly one of these,
        ``delivered``, or still waiting or in flight::

            accepted == delivered + dropped + failed + unsent + unconfirmed + stored
                        + waiting + in_flight_records

        ``accepted`` includes the records of batches re-sent from the store at start.
        """
        buffer = self._buffer
        return {
            "running": self._running,
            "durable": self._durable,
            "depth": len(buffer),
            "bytes": buffer.waiting_bytes,
            "in_flight_records": buffer.in_flight,
            "max_buffer_size": buffer.max_records,
            "dropped": sum(buffer.dropped.values()),
            "failed": sum(self._failed.values()),
            "unsent": sum(self._unsent.values()),
            "unconfirmed": sum(self._unconfirmed.values()),
            "stored": sum(self._stored.values()),
            "batches_sent": self._batches_sent,
            "batches_acknowledged": self._batches_acknowledged,
            "records": {
                kind: {
                    "accepted": buffer.accepted[kind],
                    "waiting": buffer.depth(kind),
                    "delivered": self._delivered[kind],
                    "dropped": buffer.dropped[kind],
                    "failed": self._failed[kind],
                    "unsent": self._unsent[kind],
                    "unconfirmed": self._unconfirmed[kind],
                    "stored": self._stored[kind],
                }
                for kind in TELEMETRY_KINDS
            },
        }
