"""Shadow requests and their replies: clientToken correlation, limits, timeouts, retries.

A request is published on ``.../get``, ``/update`` or ``/delete`` with a fresh ``clientToken``;
the service echoes the token on ``.../accepted`` or ``.../rejected``, which is how the reply is
found among everyone else's (every subscriber of a shadow sees every reply). Each attempt waits
``timeout`` seconds for its reply; a timeout, 429 (throttled) or 5xx is retried after a backoff
with full jitter, keeping the earlier attempts' tokens so a late reply still counts. Other
rejections go to the caller as :class:`~ancsync.errors.ShadowRejected`.

AWS allows 20 requests per second and 10 in flight per thing; :class:`ThingLimits` holds both
and is shared by every shadow (classic and named) of a thing on one connection.
"""

from __future__ import annotations

import logging
import weakref
from collections import Counter
from typing import TYPE_CHECKING, Any, Literal

import anyio

from ancsync.codec import encode
from ancsync.errors import ShadowRejected, ShadowTimeout
from ancsync.models import new_id
from ancsync.mqtt.backoff import Backoff, BackoffPolicy
from ancsync.mqtt.outbox import Lane
from ancsync.mqtt.ratelimit import RateLimiter
from ancsync.shadow.document import JsonObject
from ancsync.topics import ShadowTopics

if TYPE_CHECKING:
    from ancsync.connection import IoTConnection

__all__ = ["RETRIED_CODES", "Operation", "ShadowRequester", "ThingLimits", "limits_for"]

log = logging.getLogger("ancsync.shadow")

Operation = Literal["get", "update", "delete"]

RETRIED_CODES = frozenset({429, 500, 503})
"""Rejections that say "try again later" rather than "this request is wrong"."""

MAX_IN_FLIGHT = 10
MAX_REQUESTS_PER_SECOND = 20


class ThingLimits:
    """AWS's per-thing request limits: at most ``in_flight`` waiting for a reply and
    ``per_second`` requests per second."""

    def __init__(
        self, in_flight: int = MAX_IN_FLIGHT, per_second: float = MAX_REQUESTS_PER_SECOND
    ) -> None:
        self.in_flight = anyio.Semaphore(in_flight)
        # Shadow documents are at most 8 KB, so the byte bucket never binds before the count.
        self.rate = RateLimiter(per_second, per_second * 64 * 1024)


_LIMITS: weakref.WeakKeyDictionary[IoTConnection, dict[str, ThingLimits]] = (
    weakref.WeakKeyDictionary()
)


def limits_for(connection: IoTConnection, thing_name: str) -> ThingLimits:
    """The limits shared by every shadow of ``thing_name`` on ``connection``."""
    per_thing = _LIMITS.setdefault(connection, {})
    return per_thing.setdefault(thing_name, ThingLimits())


class _Waiting:
    """One logical request awaiting its reply, whatever attempt's token the reply carries."""

    def __init__(self, operation: Operation) -> None:
        self.operation = operation
        self.tokens: list[str] = []
        self.reply: tuple[bool, JsonObject] | None = None
        self.arrived = anyio.Event()

    def resolve(self, accepted: bool, document: JsonObject) -> None:
        if self.accepted:
            return  # an acceptance is final: a later rejection of a retry must not undo it
        self.reply = (accepted, document)
        self.arrived.set()

    @property
    def accepted(self) -> bool:
        return self.reply is not None and self.reply[0]

    async def pause(self, seconds: float) -> None:
        """Back off before the next attempt; a late acceptance of an earlier one ends the wait.

        Rejections, earlier or late, are forgotten: the next attempt gets its own reply.
        """
        with anyio.move_on_after(seconds):
            while not self.accepted:
                self._forget_rejection()
                await self.arrived.wait()
        self._forget_rejection()

    def _forget_rejection(self) -> None:
        if self.reply is not None and not self.reply[0]:
            self.reply = None
            self.arrived = anyio.Event()


class ShadowRequester:
    """Sends the requests of one shadow and matches the replies to them.

    :meth:`dispatch` must be called for every ``accepted``/``rejected`` message of the shadow.
    """

    def __init__(
        self,
        connection: IoTConnection,
        topics: ShadowTopics,
        *,
        timeout: float,
        attempts: int,
        backoff: BackoffPolicy,
        limits: ThingLimits,
    ) -> None:
        if timeout <= 0 or attempts < 1:
            raise ValueError(
                f"request_timeout must be above 0 and attempts at least 1, got "
                f"{timeout!r} and {attempts!r}"
            )
        self._connection = connection
        self._topics = topics
        self._timeout = timeout
        self._attempts = attempts
        self._backoff = backoff
        self._limits = limits
        self._waiting: dict[str, _Waiting] = {}
        self.counts: Counter[str] = Counter()

    def dispatch(self, operation: str, accepted: bool, document: JsonObject) -> bool:
        """Hand a reply to the request whose ``clientToken`` it carries; False if none."""
        waiting = self._waiting.get(str(document.get("clientToken")))
        if waiting is None or waiting.operation != operation:
            return False
        waiting.resolve(accepted, document)
        return True

    async def request(self, operation: Operation, body: JsonObject) -> JsonObject:
        """Send ``body`` (a token is added) and return the ``accepted`` document.

        Waits for the connection before each attempt: time offline does not count against
        the timeout, and nothing is published into a dead link.

        Raises:
            ShadowRejected: a rejection that retrying cannot fix (400, 404, 409, 413...), or a
                throttle/5xx still there after the last attempt.
            ShadowTimeout: no reply to any of the attempts.
            ConnectError: the connection failed for good (a refused certificate).
        """
        topic = getattr(self._topics, operation)
        waiting = _Waiting(operation)
        backoff = Backoff(self._backoff)
        try:
            for attempt in range(1, self._attempts + 1):
                if attempt > 1:
                    delay = backoff.next_delay()
                    self.counts["retries"] += 1
                    log.info("retrying shadow %s on %s in %.2f s", operation, topic, delay)
                    await waiting.pause(delay)
                if waiting.reply is None:
                    await self._attempt(topic, body, waiting)
                if waiting.reply is None:
                    self.counts["timeouts"] += 1
                    continue
                accepted, document = waiting.reply
                if accepted:
                    self.counts["accepted"] += 1
                    return document
                code, message = _error_of(document)
                self.counts[f"rejected_{code}"] += 1
                if code not in RETRIED_CODES or attempt == self._attempts:
                    raise ShadowRejected(code, message)
                log.warning("shadow %s on %s rejected: %d %s", operation, topic, code, message)
        finally:
            for token in waiting.tokens:
                del self._waiting[token]
        raise ShadowTimeout(
            f"no reply to shadow {operation} on {topic} after {self._attempts} attempts of "
            f"{self._timeout} s each; the service may be unreachable or overloaded"
        )

    async def _attempt(self, topic: str, body: JsonObject, waiting: _Waiting) -> None:
        token = new_id()
        waiting.tokens.append(token)
        self._waiting[token] = waiting
        payload = encode({**body, "clientToken": token}, what=f"shadow request to {topic}")
        await self._connection.wait_connected()
        async with self._limits.in_flight:
            await self._limits.rate.acquire(len(payload))
            await self._connection.publish(topic, payload, qos=1, lane=Lane.SHADOW)
            self.counts["sent"] += 1
            with anyio.move_on_after(self._timeout):
                await waiting.arrived.wait()


def _error_of(document: JsonObject) -> tuple[int, str]:
    code: Any = document.get("code")
    message: Any = document.get("message")
    return (
        code if isinstance(code, int) else 500,
        message if isinstance(message, str) else "rejected without a message",
    )
