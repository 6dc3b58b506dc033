"""TelemetryPublisher: validated metrics, batched per kind, bounded while offline.

The control loop calls ``publish_anc_metrics`` (and the audio, system and error variants). Each
call validates the record, encodes it and appends it to an in-memory buffer: no ``await``, no
I/O, a few microseconds, connected or not. While the publisher runs (it is a
:class:`~ancsync.lifecycle.Component`: ``async with``, or ``await tg.start(telemetry.run)``), it
turns waiting records into batches on ``anc/telemetry/{id}/{kind}`` when ``batch_size``
records of a kind wait or the oldest has waited ``batch_interval`` seconds, and hands them to the
connection's telemetry lane at QoS 1. Stopping (cancellation, Ctrl-C, ``aclose()``) sends the
records still waiting while connected and waits for their PUBACKs, within its deadline.

Bounds and honesty: at most ``max_buffer_size`` records are held, counting those in
batches that are sent but not yet acknowledged. While the broker is unreachable no new batches
are made, so the buffer keeps the newest records; past the bound the oldest are dropped and
counted per kind in :meth:`get_status`.

Durability: with a :class:`~ancsync.durable.store.DurableStore` (the default when a data directory
is configured) every batch is written to the store before it is sent and deleted on PUBACK, and
stopping stores what it could not send; the next start re-sends them with their original
``msg_id``. Records still waiting in memory when the process dies are lost: that is the price of
a ``publish_*`` call that never touches the disk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus
from pydantic import BaseModel

from ancsync.batching import RecordBuffer, batch_payload, encode_record, kind_of_topic
from ancsync.codec import MAX_PAYLOAD_BYTES
from ancsync.durable.store import DurableStore, StoredMessage
from ancsync.durable.stream import DurableStream
from ancsync.errors import AncSyncError, BufferFull, PublishTimeout, StorageError
from ancsync.lifecycle import Component
from ancsync.models import AncMetrics, AudioMetrics, ErrorRecord, SystemMetrics, new_id
from ancsync.mqtt.outbox import Lane, Producer
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


class TelemetryPublisher(Component):
    """Batch telemetry records per kind and publish them on the telemetry lane.

    Run it for the length of a block, or in the device's task group::

        async with TelemetryPublisher(iot, batch_size=10, batch_interval=30.0) as telemetry:
            telemetry.publish_anc_metrics({"latency_ms": 35.2, "cancellation_db": 42.5,
                                           "snr_improvement_db": 38.2})
            ...
        # leaving the block sent what was waiting, within stop_timeout seconds

    ``device_id`` defaults to the connection's thing name. ``store`` makes batches durable
    (``durable=False`` keeps only the ``seq`` counters in it). ``max_in_flight`` bounds the
    batches sent and not yet acknowledged: raise it (or ``batch_size``) for long round trips.
    ``stop_timeout`` bounds the shutdown (last batches, their PUBACKs, storing the rest).
    """

    name = "telemetry"

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
        stop_timeout: float = 5.0,
    ) -> None:
        super().__init__(stop_timeout=stop_timeout)
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
        self._durable = store is not None if durable is None else durable
        # The store numbers every batch (seq counters survive restarts) and, when durable,
        # keeps it until its PUBACK.
        self._stream = DurableStream(store, connection, "telemetry") if store else None
        self._topics = {kind: telemetry_topic(self.device_id, kind) for kind in TELEMETRY_KINDS}
        self._seqs = dict.fromkeys(TELEMETRY_KINDS, 0)  # used when there is no store
        # anyio primitives need a running event loop: made when it runs.
        self._wakeup: anyio.Event | None = None
        self._window: anyio.Semaphore | None = None
        self._producer: Producer | None = None
        # Batches handed to the connection whose outcome is not known yet, by msg_id.
        self._pending: dict[str, tuple[StoredMessage, TelemetryKind, bool]] = {}
        self._settled_now: anyio.Event | None = None  # set when a pending batch settles
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

    # -- the lifecycle -------------------------------------------------------------------------

    async def _serve(self, task_status: TaskStatus[None]) -> None:
        """Re-send what a previous run stored, then batch and publish until cancelled."""
        self._wakeup = anyio.Event()
        self._window = anyio.Semaphore(self._max_in_flight)
        self._producer = self._iot.producing(self.name)
        async with anyio.create_task_group() as tg:
            if self._stream is not None:
                tg.start_soon(self._stream.run)
            task_status.started()
            await self._resend_stored()
            await self._batch_forever()

    async def _shutdown(self) -> None:
        """Send what waits (when connected), wait for the PUBACKs, store or count the rest."""
        try:
            if self._iot.connected:
                await self._send_last_batches()
            if self._producer is not None:
                self._producer.finish()
            # Keep time to store what is left: the last quarter, at most a second.
            with anyio.move_on_after(self._time_left() - min(1.0, self._time_left() / 4)):
                await self._iot.while_connected(self._all_settled())
        finally:
            if self._producer is not None:
                self._producer.finish()
            self._count_unsettled()
            await self._keep_leftovers()
            if self._stream is not None:
                await self._stream.forget_delivered()

    def start_publishing(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> Coroutine[Any, Any, None]:
        """The original SDK's name for :meth:`run` (``tg.start(telemetry.start_publishing)``)."""
        return self.run(task_status=task_status)

    async def _batch_forever(self) -> None:
        assert self._wakeup is not None
        assert self._window is not None
        while True:
            kind = self._buffer.due()
            if kind is None:
                self._wakeup = anyio.Event()  # no await since due(): no wake-up can be missed
                with anyio.move_on_after(self._buffer.seconds_until_due()):
                    await self._wakeup.wait()
                continue
            await self._window.acquire()
            await self._until_connected()
            records = self._buffer.take(kind)
            if not records:  # dropped while we waited
                self._window.release()
                continue
            # Shielded for a moment: a batch taken from the buffer is stored and queued, or
            # not taken at all (a cancellation here would lose its records).
            with anyio.CancelScope(shield=True):
                await self._store_and_send(kind, records)

    async def _send_last_batches(self) -> None:
        """At stop: batch everything still waiting and queue it, outside the in-flight window."""
        while (kind := self._buffer.due(flush=True)) is not None:
            await self._store_and_send(kind, self._buffer.take(kind), windowed=False)

    async def _store_and_send(
        self, kind: TelemetryKind, records: list[bytes], *, windowed: bool = True
    ) -> None:
        batch = await self._number(kind, records)
        if batch is None:
            if windowed:
                self._release()
            return
        message, stored = batch
        self._send(message, kind, stored=stored, windowed=windowed)

    def _release(self) -> None:
        assert self._window is not None
        self._window.release()

    async def _until_connected(self) -> None:
        """Wait for the connection (offline, records wait in the buffer, newest kept)."""
        while not self._iot.connected:
            try:
                await self._iot.wait_connected()
            except AncSyncError:
                # A permanent error (bad certificate...): the session retries by itself.
                await anyio.sleep(1.0)

    async def _number(
        self, kind: TelemetryKind, records: list[bytes]
    ) -> tuple[StoredMessage, bool] | None:
        """Number and encode a batch; store it when durable. Returns it and whether it is
        stored, or ``None`` when the store refused it for room (counted as failed)."""
        msg_id = new_id()

        def batch(seq: int) -> StoredMessage:
            payload = batch_payload(self.device_id, kind, msg_id, seq, records)
            return StoredMessage(msg_id, "telemetry", self._topics[kind], payload, 1, len(records))

        if self._stream is None:
            self._seqs[kind] += 1
            return batch(self._seqs[kind]), False
        made: list[StoredMessage] = []

        def numbered(seq: int) -> StoredMessage | None:
            made.append(batch(seq))
            return made[-1] if self._durable else None  # not durable: the counter only

        try:
            await self._stream.store(f"telemetry/{kind}", numbered)
        except BufferFull as exc:
            logger.warning("telemetry batch %s not stored: %s", msg_id, exc)
            self._failed[kind] += len(records)
            self._buffer.settle(len(records))
            return None
        except StorageError as exc:
            # Better sent without a safety net than not sent at all.
            logger.error("telemetry batch %s not stored: %s", msg_id, exc)  # noqa: TRY400
            if not made:
                self._seqs[kind] += 1
                made.append(batch(self._seqs[kind]))
            return made[-1], False
        return made[-1], self._durable

    def _send(
        self, message: StoredMessage, kind: TelemetryKind, *, stored: bool, windowed: bool = True
    ) -> None:
        try:
            if self._stream is not None:
                handle = self._stream.send(message, stored=stored)
            else:
                handle = self._iot.publish_nowait(
                    message.topic, message.payload, lane=Lane.TELEMETRY, msg_id=message.msg_id
                )
        except AncSyncError as exc:
            logger.warning("telemetry batch %s was not queued: %s", message.msg_id, exc)
            (self._stored if stored else self._failed)[kind] += message.records
            self._buffer.settle(message.records)
            if windowed:
                self._release()
            return
        self._batches_sent += 1
        self._pending[message.msg_id] = (message, kind, stored)
        handle.add_done_callback(partial(self._settled, message.msg_id, windowed))

    def _settled(self, msg_id: str, windowed: bool, error: BaseException | None) -> None:
        """A batch's outcome: count its records in exactly one outcome."""
        if windowed:
            self._release()
        entry = self._pending.pop(msg_id, None)
        if entry is None:
            return  # counted already, by a shutdown that gave up waiting
        message, kind, stored = entry
        # A batch in the durable store stays there until its PUBACK: re-sent on the next start.
        if error is None:
            self._batches_acknowledged += 1
            outcome = self._delivered
        elif isinstance(error, PublishTimeout):
            # The connection stopped after sending it: the broker may or may not have it.
            logger.warning("telemetry batch %s was not acknowledged: %s", msg_id, error)
            outcome = self._stored if stored else self._unconfirmed
        else:
            # Dropped by the outbox or failed for good: counted, never silent.
            logger.warning("telemetry batch %s was not delivered: %s", msg_id, error)
            outcome = self._stored if stored else self._failed
        outcome[kind] += message.records
        self._buffer.settle(message.records)
        if self._settled_now is not None:
            self._settled_now.set()

    async def _all_settled(self) -> None:
        while self._pending:
            self._settled_now = anyio.Event()
            await self._settled_now.wait()
        self._settled_now = None

    def _count_unsettled(self) -> None:
        """At stop: batches still unacknowledged are counted now (their late outcome is not)."""
        for message, kind, stored in self._pending.values():
            logger.warning("telemetry batch %s was not acknowledged", message.msg_id)
            (self._stored if stored else self._unconfirmed)[kind] += message.records
            self._buffer.settle(message.records)
        self._pending.clear()

    async def _resend_stored(self) -> None:
        if not self._durable or self._stream is None:
            return
        assert self._window is not None
        stored = await self._stream.left_by_last_run()
        if stored:
            logger.info("re-sending %d telemetry batches stored by a previous run", len(stored))
        for message in stored:
            kind = kind_of_topic(message.topic)
            await self._window.acquire()
            await self._until_connected()
            self._buffer.readmit(kind, message.records)
            self._send(message, kind, stored=True)

    async def _keep_leftovers(self) -> None:
        """At stop: store the records that were never batched, or count them as unsent."""
        while (kind := self._buffer.due(flush=True)) is not None:
            records = self._buffer.take(kind)
            stored = False
            if self._durable:
                batch = await self._number(kind, records)
                if batch is None:
                    continue  # refused by the store, already counted as failed
                stored = batch[1]
            self._buffer.settle(len(records))
            (self._stored if stored else self._unsent)[kind] += len(records)
        if any(self._unsent.values()):
            logger.warning("telemetry stopped with records not sent: %s", self._unsent)

    # -- status ----------------------------------------------------------------------------------

    def get_status(self) -> TelemetryStatus:
        """Depth, bytes, drops and batch counters, JSON-serialisable.

        ``dropped`` counts records pushed out by the ``max_buffer_size`` bound; ``failed``
        counts records in batches the connection refused or dropped; ``unsent`` counts records
        that stopping could neither send nor store; ``unconfirmed`` counts records in
        batches handed to the connection whose PUBACK had not come when stopping gave up
        (the broker may or may not have them); ``stored`` counts records left in the durable
        store, re-sent on the next start. Every accepted record is in exactly one of these,
        ``delivered``, or still waiting or in flight::

            accepted == delivered + dropped + failed + unsent + unconfirmed + stored
                        + waiting + in_flight_records

        ``accepted`` includes the records of batches re-sent from the store at start.
        """
        buffer = self._buffer
        return {
            "running": self.running,
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
