"""A durable stream: one producer's messages through the store and the connection.

Emergencies and durable telemetry do the same four things, here and only here:

1. **number and store** a message before it is sent (:meth:`DurableStream.store`: the ``seq`` is
   taken in the commit, off the event loop);
2. **send** it on the connection's lane (:meth:`DurableStream.send`), the owner told of the
   outcome by a callback, with no task per message;
3. **forget** it once the broker has acknowledged it: deleted from the store, many at a time, by
   :meth:`DurableStream.run` or at once by :meth:`DurableStream.forget_delivered`;
4. **hand back** what a previous run left unacknowledged (:meth:`DurableStream.left_by_last_run`),
   to be sent again with its original ``msg_id``.

What a failure means stays with the owner: an emergency is queued again until delivered, a
telemetry batch is counted and kept in the store for the next start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, TypeVar

import anyio

from ancsync.durable.store import DurableStore, StoredLane, StoredMessage
from ancsync.errors import StorageError
from ancsync.mqtt.outbox import Lane, PublishHandle

if TYPE_CHECKING:
    from ancsync.connection import IoTConnection

__all__ = ["DurableStream", "Outcome"]

log = logging.getLogger("ancsync.durable.stream")

Outcome = Callable[[BaseException | None], None]
"""``outcome(error)``: ``None`` once the broker acknowledged the message, else why it failed."""

_Built = TypeVar("_Built", StoredMessage, StoredMessage | None)

# How many failed deletes are remembered for a retry; older ones are re-sent after a restart.
_MAX_UNFORGOTTEN = 10_000

_OUTBOX_LANES: dict[StoredLane, Lane] = {"emergency": Lane.EMERGENCY, "telemetry": Lane.TELEMETRY}


class DurableStream:
    """The messages of one stored ``lane`` (``"emergency"`` or ``"telemetry"``) of ``store``,
    sent on ``connection``'s lane of the same name."""

    def __init__(self, store: DurableStore, connection: IoTConnection, lane: StoredLane) -> None:
        self.lane = lane
        self._store = store
        self._connection = connection
        self._outbox_lane = _OUTBOX_LANES[lane]
        self._delivered: list[str] = []
        # Acknowledged, but a delete failed (a full disk): retried with the next call.
        self._unforgotten: list[str] = []
        self._to_forget: anyio.Event | None = None

    async def store(self, seq_stream: str, number: Callable[[int], _Built]) -> _Built:
        """Store what ``number(seq)`` builds with the next ``seq`` of ``seq_stream``.

        ``number`` may return ``None`` to keep only the counter. An emergency is fsynced before
        this returns. Raises :class:`~ancsync.errors.BufferFull` or
        :class:`~ancsync.errors.StorageError`; then nothing is stored and no number is used.
        """
        built: list[_Built] = []

        def keep(seq: int) -> _Built:
            built.append(number(seq))
            return built[-1]

        fsync = self.lane == "emergency"
        await anyio.to_thread.run_sync(
            partial(self._store.put_numbered, seq_stream, keep, fsync=fsync)
        )
        return built[-1]

    async def left_by_last_run(self) -> list[StoredMessage]:
        """The messages of this lane stored and never acknowledged, oldest first."""
        return await anyio.to_thread.run_sync(self._store.pending, self.lane)

    def send(
        self, message: StoredMessage, outcome: Outcome | None = None, *, stored: bool = True
    ) -> PublishHandle:
        """Queue ``message`` on the connection; once acknowledged it is forgotten (if ``stored``).

        Raises what :meth:`~ancsync.connection.IoTConnection.publish_nowait` raises (the
        connection stopped, the lane full): the message then stays stored.
        """
        handle = self._connection.publish_nowait(
            message.topic,
            message.payload,
            message.qos,
            lane=self._outbox_lane,
            msg_id=message.msg_id,
        )
        handle.add_done_callback(partial(self._settled, message.msg_id, outcome, stored))
        return handle

    def _settled(
        self, msg_id: str, outcome: Outcome | None, stored: bool, error: BaseException | None
    ) -> None:
        if error is None and stored:
            self._delivered.append(msg_id)
            if self._to_forget is not None:
                self._to_forget.set()
        if outcome is not None:
            outcome(error)

    async def run(self) -> None:
        """Forget acknowledged messages as they come, a group per worker-thread call, until
        cancelled (run it in the owner's task group)."""
        while True:
            self._to_forget = anyio.Event()
            if not self._delivered:
                await self._to_forget.wait()
            # Shielded: an acknowledgement received must not be lost to a stop.
            with anyio.CancelScope(shield=True):
                await self.forget_delivered()

    async def forget_delivered(self) -> None:
        """Delete from the store, now, every message acknowledged so far.

        Those a failed delete left (the disk was full) are tried again first, so once the disk
        has room they are gone and the next start does not send them again.
        """
        self._delivered[:0], self._unforgotten = self._unforgotten, []
        while self._delivered:
            msg_ids, self._delivered = self._delivered, []
            try:
                await anyio.to_thread.run_sync(partial(self._store.ack, *msg_ids))
            except anyio.get_cancelled_exc_class():
                # Cancelled before the worker thread started: still to forget, by the next call.
                self._delivered[:0] = msg_ids
                raise
            except StorageError as exc:
                # Not retried in this call (no loop on a full disk), but with the next one.
                # Whatever is still stored when the process stops is sent again on the next
                # start: duplicates, never a loss.
                self._unforgotten = (self._unforgotten + msg_ids)[-_MAX_UNFORGOTTEN:]
                log.warning(
                    "%d acknowledged %s messages stay stored for now (deleting them is retried "
                    "with the next acknowledgement): %s",
                    len(msg_ids),
                    self.lane,
                    exc,
                )
