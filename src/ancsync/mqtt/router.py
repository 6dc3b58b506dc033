"""The topic router: incoming messages to typed handlers, one bounded queue per route.

The session task calls :meth:`TopicRouter.dispatch` for every message it receives. Dispatch never
waits: aiomqtt has already acknowledged the message to the broker, so blocking would only stall
the session (and with it every publish and keep-alive). Instead each route has a bounded queue;
when a slow handler lets it fill up, the oldest waiting message is dropped and counted.

The router is a :class:`~ancsync.lifecycle.Component`: while it runs, one worker per route runs,
so a slow or failing handler only affects its own route; when it stops, messages already queued
are still handed to their handlers, within its deadline. A payload that does not parse or
validate is counted, logged with the topic and the reason, passed to the ``on_invalid`` hook,
and never reaches the handler.
"""

from __future__ import annotations

import inspect
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from pydantic import BaseModel

from ancsync.codec import decode, decode_model
from ancsync.errors import ConfigError, InvalidPayload
from ancsync.lifecycle import Component
from ancsync.status import RouterStatus, RouteStatus
from ancsync.topics import matches, validate_filter

__all__ = ["Handler", "InvalidHook", "Route", "TopicRouter"]

logger = logging.getLogger("ancsync.mqtt.router")

Handler = Callable[[str, Any], Awaitable[None] | None]
"""``handler(topic, payload)``: ``payload`` is the model instance, or the JSON value if no model.

An async handler may take its time (only its own route waits); a plain function runs on the event
loop and must return quickly.
"""

InvalidHook = Callable[[str, bytes, Exception], None]
"""``on_invalid(topic, raw_payload, error)``, called for each route that rejects a payload."""


class Route:
    """One subscription of a handler: its filter, model, bounded queue and counters."""

    def __init__(
        self,
        topic_filter: str,
        handler: Handler,
        model: type[BaseModel] | None,
        queue_size: int,
    ) -> None:
        self.topic_filter = topic_filter
        self.handler = handler
        self.model = model
        self.queue_size = queue_size
        self._queue: deque[tuple[str, Any]] = deque()
        self._wakeup: anyio.Event | None = None
        self._removed = False
        self._counts: Counter[str] = Counter()

    def stats(self) -> RouteStatus:
        """This route's queue depth and counters, JSON-serialisable."""
        return {
            "filter": self.topic_filter,
            "model": self.model.__name__ if self.model else None,
            "queue_size": self.queue_size,
            "depth": len(self._queue),
            "queued": self._counts["queued"],
            "handled": self._counts["handled"],
            "dropped": self._counts["dropped"],
            "invalid": self._counts["invalid"],
            "handler_errors": self._counts["handler_errors"],
        }

    def __repr__(self) -> str:
        return f"Route({self.topic_filter!r}, model={self.model and self.model.__name__})"


class TopicRouter(Component):
    """Matches incoming messages to routes and runs their handlers.

    ``queue_size`` is the default bound of each route's queue; ``on_invalid`` is called (and must
    not block) for every payload a route rejects.
    """

    name = "router"

    def __init__(
        self,
        *,
        queue_size: int = 100,
        on_invalid: InvalidHook | None = None,
        stop_timeout: float = 5.0,
    ) -> None:
        super().__init__(stop_timeout=stop_timeout)
        self._queue_size = _check_queue_size(queue_size)
        self._on_invalid = on_invalid
        self._routes: list[Route] = []
        self._task_group: TaskGroup | None = None
        self._totals: Counter[str] = Counter()

    def add_route(
        self,
        topic_filter: str,
        handler: Handler,
        model: type[BaseModel] | None = None,
        *,
        queue_size: int | None = None,
    ) -> Route:
        """Route messages matching ``topic_filter`` to ``handler``, validated as ``model``.

        Without a model the handler gets the decoded JSON value. Raises
        :class:`~ancsync.errors.InvalidTopic` for a bad filter. A route added while the router
        runs gets its worker at once; subscribing at the broker is the session's job.
        """
        validate_filter(topic_filter)
        size = self._queue_size if queue_size is None else _check_queue_size(queue_size)
        route = Route(topic_filter, handler, model, size)
        self._routes.append(route)
        if self._task_group is not None:
            self._task_group.start_soon(self._work, route)
        return route

    def remove_route(self, route: Route) -> None:
        """Stop routing to ``route``; messages still waiting in its queue are discarded."""
        if route in self._routes:
            self._routes.remove(route)
        route._removed = True
        route._queue.clear()
        if route._wakeup is not None:
            route._wakeup.set()

    def filters(self) -> list[str]:
        """The distinct filters to subscribe to, in the order they were first added."""
        return list(dict.fromkeys(route.topic_filter for route in self._routes))

    def dispatch(self, topic: str, payload: bytes) -> int:
        """Hand an incoming message to every matching route; return how many queued it.

        Synchronous and never waits: a full route queue drops its oldest message.
        """
        self._totals["received"] += 1
        routed = 0
        matched = False
        for route in self._routes:
            if not matches(route.topic_filter, topic):
                continue
            matched = True
            try:
                value = decode_model(payload, route.model) if route.model else decode(payload)
            except InvalidPayload as exc:
                self._count(route, "invalid")
                self._report_invalid(route, topic, payload, exc)
                continue
            if len(route._queue) >= route.queue_size:
                route._queue.popleft()
                self._count(route, "dropped")
                logger.debug("route %s is full: dropped its oldest message", route.topic_filter)
            route._queue.append((topic, value))
            self._count(route, "queued")
            routed += 1
            if route._wakeup is not None:
                route._wakeup.set()
        if not matched:
            self._totals["unmatched"] += 1
            logger.debug("no route for a message on %s", topic)
        return routed

    async def _serve(self, task_status: TaskStatus[None]) -> None:
        """Run one worker per route, including routes added later, until cancelled."""
        try:
            async with anyio.create_task_group() as task_group:
                self._task_group = task_group
                for route in self._routes:
                    task_group.start_soon(self._work, route)
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._task_group = None

    async def _shutdown(self) -> None:
        """Hand the messages still queued to their handlers (a stop loses nothing received)."""
        async with anyio.create_task_group() as task_group:
            for route in self._routes:
                if route._queue:
                    task_group.start_soon(self._work, route, True)

    def stats(self) -> RouterStatus:
        """Totals (removed routes included) and per-route stats, JSON-serialisable."""
        return {
            "received": self._totals["received"],
            "unmatched": self._totals["unmatched"],
            "queued": self._totals["queued"],
            "handled": self._totals["handled"],
            "dropped": self._totals["dropped"],
            "invalid": self._totals["invalid"],
            "handler_errors": self._totals["handler_errors"],
            "routes": [route.stats() for route in self._routes],
        }

    async def _work(self, route: Route, until_empty: bool = False) -> None:
        while not route._removed:
            if not route._queue:
                if until_empty:
                    return
                route._wakeup = anyio.Event()
                await route._wakeup.wait()
                continue
            topic, value = route._queue.popleft()
            try:
                result = route.handler(topic, value)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                self._count(route, "handler_errors")
                logger.exception(
                    "handler for %s raised on a message from %s; the route keeps running",
                    route.topic_filter,
                    topic,
                )
            else:
                self._count(route, "handled")

    def _count(self, route: Route, name: str) -> None:
        route._counts[name] += 1
        self._totals[name] += 1

    def _report_invalid(
        self, route: Route, topic: str, payload: bytes, error: InvalidPayload
    ) -> None:
        logger.warning("invalid payload on %s for route %s: %s", topic, route.topic_filter, error)
        if self._on_invalid is None:
            return
        try:
            self._on_invalid(topic, payload, error)
        except Exception:
            logger.exception("the on_invalid hook raised; ignoring it")


def _check_queue_size(queue_size: int) -> int:
    if queue_size < 1:
        raise ConfigError(f"queue_size must be at least 1, got {queue_size!r}")
    return queue_size
