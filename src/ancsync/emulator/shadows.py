"""The emulator's Device Shadow service: shadow requests in over MQTT, AWS-shaped replies out.

A thin layer over the pure :class:`~ancsync.emulator.shadow_documents.ShadowStore`. The broker
hands every publish on ``$aws/things/{thing}/shadow[/name/{shadow}]/(get|update|delete)`` (after
the policy allowed it) to :meth:`ShadowService.handle_request`, which admits or throttles it and
queues it; the running service processes the queue in arrival order and publishes each reply on
its response topic: accepted, then delta, then documents.

Throttling follows AWS: more than ``max_in_flight`` requests queued or being processed for one
thing, or more than ``max_requests_per_second`` for one thing in the last second, gets
``429 Too Many Requests`` on the operation's rejected topic.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

import anyio
from anyio.abc import TaskStatus

from ancsync.emulator.auth import ClientIdentity
from ancsync.emulator.broker import EmbeddedBroker
from ancsync.emulator.service import EmulatorService
from ancsync.emulator.shadow_documents import (
    ShadowError,
    ShadowLimits,
    ShadowReply,
    ShadowStore,
    client_token_of,
)
from ancsync.errors import NotStarted
from ancsync.topics import ShadowTopic, ShadowTopics, is_shadow_request_topic, parse_shadow_topic

__all__ = ["ShadowService"]

log = logging.getLogger("ancsync.emulator.shadows")

_THROTTLED = ShadowError(429, "Too Many Requests")
_INTERNAL = ShadowError(500, "Internal service failure")


@dataclass(frozen=True)
class _Request:
    topic: ShadowTopic
    payload: bytes


class ShadowService(EmulatorService):
    """The Device Shadow service of the emulator (reference: ``docs/emulator.md``).

    ``clock`` gives the epoch seconds used in every ``timestamp`` (tests pass a settable one).
    ``latency`` delays each request by that many seconds, like a cloud round trip, so a client's
    timeouts and 429 handling can be exercised. ``store`` holds the documents; read them with
    ``service.store.shadow(thing, name)``; they outlive a stop and a restart of the service.

    An :class:`~ancsync.emulator.service.EmulatorService`: :meth:`attach` it to a broker, then
    run it. Requests still queued when it stops are dropped (their clients time out).
    """

    name = "shadows"

    def __init__(
        self,
        *,
        limits: ShadowLimits | None = None,
        clock: Callable[[], float] = time.time,
        latency: float = 0.0,
        store: ShadowStore | None = None,
        stop_timeout: float = 5.0,
    ) -> None:
        super().__init__(stop_timeout=stop_timeout)
        self.store = store or ShadowStore(limits)
        self.latency = latency
        self.limits = self.store.limits
        self._clock = clock
        self._send, self._receive = anyio.create_memory_object_stream[_Request](math.inf)
        self._in_flight: Counter[str] = Counter()
        self._recent: dict[str, deque[float]] = {}
        self._broker: EmbeddedBroker | None = None
        self._stats = {"requests": 0, "throttled": 0, "failed": 0}

    def stats(self) -> dict[str, int]:
        """Counters: ``requests`` admitted, ``throttled`` (429), ``failed`` (500)."""
        return dict(self._stats)

    def _now(self) -> int:
        return int(self._clock())

    def _over_rate(self, thing_name: str) -> bool:
        """Record this request's arrival; whether the thing is over its requests per second."""
        limit = self.limits.max_requests_per_second
        if limit is None:
            return False
        now = time.monotonic()
        arrivals = self._recent.setdefault(thing_name, deque())
        while arrivals and arrivals[0] <= now - 1.0:
            arrivals.popleft()
        if len(arrivals) >= limit:
            return True
        arrivals.append(now)
        return False

    def attach(self, broker: EmbeddedBroker) -> None:
        """Answer the shadow request topics of ``broker`` and publish the replies through it."""
        self._broker = broker
        broker.add_reserved_route(is_shadow_request_topic, self.handle_request)

    async def handle_request(self, identity: ClientIdentity, topic: str, payload: bytes) -> None:
        """Admit a shadow request and queue it, or reply 429 at once (a ReservedTopicHandler).

        Dropped (logged) while the service is not running.
        """
        parsed = parse_shadow_topic(topic)
        if parsed is None or parsed.suffix is not None:
            log.warning("%r from %r is not a shadow request topic; ignored", topic, identity)
            return
        if not self.running:
            log.warning("shadow service not running; dropped %r from %r", topic, identity)
            return
        thing = parsed.thing_name
        if self._in_flight[thing] >= self.limits.max_in_flight or self._over_rate(thing):
            self._stats["throttled"] += 1
            log.warning("throttled a shadow request of %r on %r", identity.client_id, topic)
            token = client_token_of(payload, self.limits)
            rejection = self.store.rejection(parsed.operation, _THROTTLED, token, self._now())
            await self._publish(parsed, rejection)
            return
        self._in_flight[thing] += 1
        self._stats["requests"] += 1
        self._send.send_nowait(_Request(parsed, payload))

    async def _serve(self, task_status: TaskStatus[None]) -> None:
        """Process queued requests in arrival order until cancelled."""
        if self._broker is None:
            raise NotStarted("attach the shadow service to a broker before running it")
        task_status.started()
        async for request in self._receive:
            try:
                await self._process(request)
            finally:
                self._in_flight[request.topic.thing_name] -= 1

    async def _shutdown(self) -> None:
        """Drop the requests still queued, so that a later run starts with none in flight."""
        while True:
            try:
                request = self._receive.receive_nowait()
            except anyio.WouldBlock:
                return
            self._in_flight[request.topic.thing_name] -= 1

    async def _process(self, request: _Request) -> None:
        topic = request.topic
        prefix = ShadowTopics(topic.thing_name, topic.shadow_name).prefix
        if self.latency > 0:
            await anyio.sleep(self.latency)
        now = self._now()
        try:
            replies = self.store.handle(
                topic.operation, topic.thing_name, topic.shadow_name, request.payload, now
            )
        except Exception:
            self._stats["failed"] += 1
            log.exception("the %s request on %s failed", topic.operation, prefix)
            token = client_token_of(request.payload, self.limits)
            replies = [self.store.rejection(topic.operation, _INTERNAL, token, now)]
        for reply in replies:
            await self._publish(topic, reply)

    async def _publish(self, request: ShadowTopic, reply: ShadowReply) -> None:
        if self._broker is None:
            log.warning("shadow service not running; dropped the %s reply", reply.suffix)
            return
        prefix = ShadowTopics(request.thing_name, request.shadow_name).prefix
        try:
            await self._broker.publish(f"{prefix}/{reply.suffix}", reply.payload, qos=1)
        except NotStarted:
            log.info("the broker has stopped; dropped the %s reply for %s", reply.suffix, prefix)
        except Exception:
            log.exception("could not publish the %s reply for %s", reply.suffix, prefix)
