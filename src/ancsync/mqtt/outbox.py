"""The outbox: bounded priority lanes between the SDK's producers and the MQTT session task.

Producers (telemetry, shadow, emergency) call :meth:`Outbox.put`, which is synchronous and never
waits, so the control loop never feels the network. The one session task drains the outbox with
:meth:`Outbox.get` (emergency first, then shadow, then telemetry; FIFO within a lane) and puts a
publish that failed or timed out back with :meth:`Outbox.requeue`, keeping its ``msg_id``.

Each lane is bounded in messages and bytes and has its own overflow policy:

* telemetry: the oldest waiting message is dropped, counted, and its handle fails with
  :class:`~ancsync.errors.BufferFull`;
* shadow: a message with the ``coalesce_key`` of a waiting one replaces it in place; otherwise
  the oldest is dropped, as for telemetry;
* emergency: nothing is ever dropped; :meth:`Outbox.put` raises ``BufferFull`` at the hard limit.

A part that may still queue messages while everything stops (telemetry's last batches, the
shadow's last report) registers as a :class:`Producer` (:meth:`Outbox.producing`): the session's
shutdown keeps sending until every producer has finished and the outbox is empty, or its
deadline passes.

The outbox is in memory. A durable store (SQLite, for emergencies and optionally telemetry) belongs
behind the same three calls: write in ``put`` before returning, delete when the session resolves a
handle on PUBACK, and reload pending messages (with their ``msg_id``) into the lanes on start.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import IntEnum

import anyio

from ancsync.errors import BufferFull, ConfigError, PublishTimeout
from ancsync.status import LaneStatus

__all__ = [
    "DEFAULT_LIMITS",
    "Lane",
    "LaneLimits",
    "Outbox",
    "OutgoingMessage",
    "Producer",
    "PublishHandle",
]

logger = logging.getLogger("ancsync.mqtt.outbox")

_MIB = 1024 * 1024


class Lane(IntEnum):
    """Outbox lanes; a lower value is drained first."""

    EMERGENCY = 0
    SHADOW = 1
    TELEMETRY = 2


@dataclass(frozen=True)
class LaneLimits:
    """The bounds of one lane: waiting messages and their bytes (payload plus topic)."""

    max_messages: int
    max_bytes: int

    def __post_init__(self) -> None:
        if self.max_messages < 1 or self.max_bytes < 1:
            raise ConfigError(
                f"lane limits must be at least 1 message and 1 byte, got "
                f"max_messages={self.max_messages!r}, max_bytes={self.max_bytes!r}"
            )


DEFAULT_LIMITS: Mapping[Lane, LaneLimits] = {
    Lane.EMERGENCY: LaneLimits(max_messages=10_000, max_bytes=16 * _MIB),
    Lane.SHADOW: LaneLimits(max_messages=100, max_bytes=1 * _MIB),
    Lane.TELEMETRY: LaneLimits(max_messages=1000, max_bytes=4 * _MIB),
}


class PublishHandle:
    """The outcome of one queued publish, resolved by the session task.

    ``await handle.delivered()`` returns once the broker has acknowledged the message (PUBACK for
    QoS 1, the write for QoS 0). The first outcome wins: later calls to :meth:`resolve` or
    :meth:`fail` are ignored.
    """

    def __init__(self, msg_id: str) -> None:
        self.msg_id = msg_id
        self._done = False
        self._error: BaseException | None = None
        self._event: anyio.Event | None = None  # created lazily: put() may run before any await
        # Handles of shadow messages this one replaced; they share its outcome.
        self._followers: list[PublishHandle] = []
        self._callbacks: list[Callable[[BaseException | None], None]] = []

    @property
    def done(self) -> bool:
        """Whether the message was delivered or failed for good."""
        return self._done

    # A timeout argument (rather than a caller's cancel scope) lets us raise PublishTimeout.
    async def delivered(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait until the message is acknowledged.

        Raises :class:`~ancsync.errors.PublishTimeout` after ``timeout`` seconds (the message stays
        queued and may still be delivered), :class:`~ancsync.errors.BufferFull` if it was dropped to
        make room, or the error it failed with permanently.
        """
        if not self._done:
            if self._event is None:
                self._event = anyio.Event()
            if timeout is None:
                # No cancel scope when there is no deadline: entering one costs ~14 µs a message.
                await self._event.wait()
            else:
                with anyio.move_on_after(timeout):
                    await self._event.wait()
            if not self._done:
                raise PublishTimeout(
                    f"message {self.msg_id} was not acknowledged within {timeout} s; it stays "
                    "queued and may still be delivered"
                )
        if self._error is not None:
            raise self._error

    def add_done_callback(self, callback: Callable[[BaseException | None], None]) -> None:
        """Call ``callback(error)`` once the outcome is known (``None`` when delivered).

        At once if it is known already. No task waits: the callback runs where the outcome is
        decided (the session's PUBACK handler), so it must be quick and must not raise.
        """
        if self._done:
            callback(self._error)
        else:
            self._callbacks.append(callback)

    def resolve(self) -> None:
        """Mark the message delivered (called by the session on PUBACK)."""
        self._finish(None)

    def fail(self, error: BaseException) -> None:
        """Mark the message failed for good: ``delivered()`` raises ``error``."""
        self._finish(error)

    def _follow(self, replaced: PublishHandle) -> None:
        self._followers.append(replaced)

    def _finish(self, error: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        self._error = error
        if self._event is not None:
            self._event.set()
        for follower in self._followers:
            follower._finish(error)
        self._followers.clear()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(error)


@dataclass
class OutgoingMessage:
    """One message waiting to be published.

    ``msg_id`` identifies the message across retries. On the shadow lane, a newer
    message with the same ``coalesce_key`` replaces a waiting one.
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    lane: Lane
    msg_id: str
    coalesce_key: str | None
    handle: PublishHandle
    attempts: int = 0
    # Set by the outbox on the first put and kept across requeues: the clock reading (for ages)
    # and the put order (so messages requeued together go back in their original order).
    enqueued_at: float | None = field(default=None, init=False, compare=False)
    queue_order: int = field(default=-1, init=False, compare=False)

    @property
    def size(self) -> int:
        """Bytes the message counts against its lane's byte limit."""
        return len(self.payload) + len(self.topic.encode())


@dataclass(eq=False)
class _Entry:
    """A place in a lane. Coalescing swaps the message and keeps the place."""

    message: OutgoingMessage


@dataclass
class _LaneQueue:
    name: str
    limits: LaneLimits
    coalesces: bool  # only the shadow lane honours coalesce_key
    # Requeued messages, sorted by their original order. Every requeued message was taken from
    # the front of the lane, so all of them come before everything in `waiting`.
    retries: list[_Entry] = field(default_factory=list)
    waiting: deque[_Entry] = field(default_factory=deque)
    by_key: dict[str, _Entry] = field(default_factory=dict)
    bytes: int = 0
    enqueued: int = 0
    requeued: int = 0
    dropped: int = 0
    coalesced: int = 0
    rejected: int = 0

    def __len__(self) -> int:
        return len(self.retries) + len(self.waiting)

    def entries(self) -> Iterator[_Entry]:
        return itertools.chain(self.retries, self.waiting)

    def over_limit(self) -> bool:
        return len(self) > self.limits.max_messages or self.bytes > self.limits.max_bytes

    def add(self, entry: _Entry) -> None:
        self.bytes += entry.message.size
        key = entry.message.coalesce_key
        if key is not None and self.coalesces:
            self.by_key[key] = entry

    def remove(self, entry: _Entry) -> None:
        if self.retries and entry is self.retries[0]:
            self.retries.pop(0)
        elif self.waiting and entry is self.waiting[0]:
            self.waiting.popleft()
        elif entry in self.retries:
            self.retries.remove(entry)
        else:
            self.waiting.remove(entry)
        self.bytes -= entry.message.size
        key = entry.message.coalesce_key
        if key is not None and self.by_key.get(key) is entry:
            del self.by_key[key]


class Producer:
    """A part that may still put messages in the outbox; :meth:`finish` once it will not.

    Made by :meth:`Outbox.producing`. While any producer is unfinished, a stopping session
    waits for more messages (within its deadline) instead of disconnecting.
    """

    def __init__(self, outbox: Outbox, name: str) -> None:
        self.name = name
        self._outbox = outbox

    def finish(self) -> None:
        """Say this part will queue nothing more (idempotent)."""
        self._outbox._finished(self)


class Outbox:
    """Bounded priority lanes of messages waiting for the session task.

    ``clock`` (seconds, monotonic) timestamps messages for :meth:`oldest_age`; tests inject one.
    """

    def __init__(
        self,
        limits: Mapping[Lane, LaneLimits] = DEFAULT_LIMITS,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lanes = {
            lane: _LaneQueue(
                name=lane.name.lower(),
                limits=limits.get(lane, DEFAULT_LIMITS[lane]),
                coalesces=lane is Lane.SHADOW,
            )
            for lane in sorted(Lane)
        }
        self._clock = clock
        self._order = itertools.count()
        self._not_empty: anyio.Event | None = None
        self._producers: list[Producer] = []
        #: Called whenever a producer finishes (the session follows it while it stops).
        self.on_producer_finished: Callable[[], None] | None = None

    def producing(self, name: str) -> Producer:
        """Register a part that may still queue messages while the session stops."""
        producer = Producer(self, name)
        self._producers.append(producer)
        return producer

    @property
    def producers(self) -> list[str]:
        """The names of the producers that have not finished."""
        return [producer.name for producer in self._producers]

    def _finished(self, producer: Producer) -> None:
        if producer in self._producers:
            self._producers.remove(producer)
            if self.on_producer_finished is not None:
                self.on_producer_finished()

    def put(self, message: OutgoingMessage) -> None:
        """Queue ``message`` on its lane. Synchronous, never waits.

        Raises :class:`~ancsync.errors.BufferFull` when the message can never fit its lane, or when
        the emergency lane is at its hard limit (nothing waiting is dropped for it).
        """
        lane = self._lanes[message.lane]
        size = message.size
        if size > lane.limits.max_bytes:
            lane.rejected += 1
            self._reject(
                message,
                f"message {message.msg_id} is {size} bytes, more than the whole {lane.name} lane "
                f"holds ({lane.limits.max_bytes} bytes); raise the lane's max_bytes or send less",
            )
        if message.enqueued_at is None:
            message.enqueued_at = self._clock()
            message.queue_order = next(self._order)
        waiting = lane.by_key.get(message.coalesce_key) if message.coalesce_key else None
        if waiting is not None:
            self._coalesce(lane, waiting, message)
        else:
            if message.lane is Lane.EMERGENCY and (
                len(lane) + 1 > lane.limits.max_messages
                or lane.bytes + size > lane.limits.max_bytes
            ):
                lane.rejected += 1
                self._reject(
                    message,
                    f"emergency lane is full ({len(lane)} messages, {lane.bytes} bytes; limits "
                    f"{lane.limits.max_messages} messages, {lane.limits.max_bytes} bytes): "
                    f"message {message.msg_id} was not queued; the broker has been unreachable "
                    "for long, or the emergency limits are too low",
                )
            entry = _Entry(message)
            lane.waiting.append(entry)
            lane.add(entry)
            lane.enqueued += 1
            self._make_room(lane, keep=entry)
        self._wake()

    async def get(self) -> OutgoingMessage:
        """Wait for the next message: the highest-priority lane first, FIFO within a lane."""
        while True:
            message = self.take_nowait()
            if message is not None:
                return message
            if self._not_empty is None or self._not_empty.is_set():
                self._not_empty = anyio.Event()
            await self._not_empty.wait()

    def take_nowait(self) -> OutgoingMessage | None:
        """The next message as :meth:`get` would return it, or ``None`` when all lanes are empty."""
        for lane in self._lanes.values():
            for entry in lane.entries():
                lane.remove(entry)
                return entry.message
        return None

    def is_empty(self) -> bool:
        """Whether no message waits on any lane."""
        return not any(len(lane) for lane in self._lanes.values())

    def requeue(self, message: OutgoingMessage) -> None:
        """Put back a message whose publish failed or timed out, counting the attempt.

        It goes back ahead of everything queued after it, with the same ``msg_id``; messages
        requeued together keep their original order. A requeue never raises and never drops
        the message itself (the lane may briefly exceed its limit by the messages in flight).
        On the shadow lane, of a requeued and a waiting message with the same key only the newer
        one stays queued, and the other's handle resolves with it.
        """
        message.attempts += 1
        lane = self._lanes[message.lane]
        lane.requeued += 1
        waiting = lane.by_key.get(message.coalesce_key) if message.coalesce_key else None
        if waiting is not None and waiting.message.queue_order > message.queue_order:
            # The waiting message is newer: its state must win, and it carries this one's outcome.
            waiting.message.handle._follow(message.handle)
            lane.coalesced += 1
        elif waiting is not None:
            self._coalesce(lane, waiting, message)
        else:
            entry = _Entry(message)
            bisect.insort(lane.retries, entry, key=lambda e: e.message.queue_order)
            lane.add(entry)
        self._wake()

    def depth(self) -> dict[str, dict[str, int]]:
        """Waiting messages and bytes per lane, keyed by lane name."""
        return {
            lane.name: {"messages": len(lane), "bytes": lane.bytes} for lane in self._lanes.values()
        }

    def stats(self) -> dict[str, LaneStatus]:
        """Per-lane counters and depth, JSON-serialisable (part of ``get_status()``)."""
        return {
            queue.name: {
                "messages": len(queue),
                "bytes": queue.bytes,
                "enqueued": queue.enqueued,
                "requeued": queue.requeued,
                "dropped": queue.dropped,
                "coalesced": queue.coalesced,
                "rejected": queue.rejected,
                "oldest_age_s": self.oldest_age(lane),
            }
            for lane, queue in self._lanes.items()
        }

    def oldest_age(self, lane: Lane) -> float | None:
        """Seconds the message at the front of ``lane`` has been queued; ``None`` when empty."""
        for entry in self._lanes[lane].entries():
            assert entry.message.enqueued_at is not None  # set by put()
            return max(0.0, self._clock() - entry.message.enqueued_at)
        return None

    def _coalesce(self, lane: _LaneQueue, entry: _Entry, message: OutgoingMessage) -> None:
        replaced = entry.message
        lane.bytes += message.size - replaced.size
        # The place, and the age, are the replaced message's: the update has waited since then.
        message.enqueued_at = replaced.enqueued_at
        message.queue_order = replaced.queue_order
        message.handle._follow(replaced.handle)
        entry.message = message
        lane.coalesced += 1
        self._make_room(lane, keep=entry)

    def _make_room(self, lane: _LaneQueue, keep: _Entry) -> None:
        """Drop the oldest messages other than ``keep`` until the lane is within its limits."""
        while lane.over_limit():
            victim = next((e for e in lane.entries() if e is not keep), None)
            if victim is None:
                return
            lane.remove(victim)
            lane.dropped += 1
            dropped = victim.message
            logger.debug("%s lane full: dropped message %s", lane.name, dropped.msg_id)
            dropped.handle.fail(
                BufferFull(
                    f"message {dropped.msg_id} was dropped: the {lane.name} lane was full "
                    f"({lane.limits.max_messages} messages / {lane.limits.max_bytes} bytes) and "
                    "the oldest message makes room for the newest"
                )
            )

    def _reject(self, message: OutgoingMessage, reason: str) -> None:
        error = BufferFull(reason)
        message.handle.fail(error)
        raise error

    def _wake(self) -> None:
        if self._not_empty is not None:
            self._not_empty.set()
