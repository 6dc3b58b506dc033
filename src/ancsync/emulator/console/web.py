"""The console's HTTP side: the page, its assets, a JSON API and a server-sent event stream.

Every asset ships in the package (``static/``): no build step, no CDN. The page reads
``/api/events`` (one ``snapshot`` event whenever something it shows changed, at most four a
second) and posts its actions to the ``/api/...`` routes, each answered with JSON: ``{"ok":
true, ...}``, or ``{"error": "..."}`` with status 400 saying what was wrong and how to fix it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from importlib.resources import files
from typing import Any, Protocol, runtime_checkable

import anyio
import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from ancsync.emulator.console.errors import ConsoleError

__all__ = ["ConsoleBackend", "ConsoleSection", "LiveSection", "build_app"]

# Snapshots per second at most, per open page.
_MAX_UPDATES_PER_SECOND = 4.0
# A page gets a snapshot at least this often, so "last seen" and rates keep moving.
_IDLE_REFRESH = 1.0


class ConsoleSection(Protocol):
    """A panel added to the console by another emulator service (e.g. the Jobs panel,
    :class:`~ancsync.emulator.console.jobs.JobsSection`).

    Its ``routes`` are mounted under ``/api/sections/{key}/``; ``snapshot()`` goes to the page
    under ``sections[key]`` with every update, which shows it as a table of its rows.
    """

    key: str
    title: str

    def routes(self) -> Sequence[BaseRoute]:
        """Extra HTTP routes of the section (relative to its mount point)."""

    def snapshot(self) -> list[dict[str, Any]]:
        """The section's rows, JSON-serialisable."""


@runtime_checkable
class LiveSection(ConsoleSection, Protocol):
    """A section that says when its rows changed: the page gets them at once, not at the next
    once-a-second refresh."""

    async def watch(self, changed: Callable[[], None]) -> None:
        """Call ``changed()`` whenever the rows changed, until cancelled."""


class ConsoleBackend(Protocol):
    """What the page's routes call: :class:`~ancsync.emulator.console.service.Console`."""

    closing: bool
    sections: tuple[ConsoleSection, ...]

    def authorized(self, presented: str | None) -> bool:
        """Whether a request presenting this token (or None) may use the console."""

    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows."""

    async def changed(self, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until something shown changed, or ``timeout`` seconds."""

    async def update_desired(self, thing: str, desired: Any) -> dict[str, Any]:
        """Set desired state through the shadow service; its accepted answer."""

    async def subscribe(self, topic_filter: str) -> None:
        """Show the messages of ``topic_filter`` in the MQTT test client."""

    def unsubscribe(self, topic_filter: str) -> None:
        """Stop showing ``topic_filter``."""

    async def publish(self, topic: str, payload: str, *, qos: int, retain: bool) -> None:
        """Publish as the operator."""

    async def acknowledge(self, event_id: str) -> None:
        """Send the ``emergency_ack`` command of an emergency."""


def build_app(console: ConsoleBackend) -> Starlette:
    """The Starlette application of ``console``."""

    async def index(request: Request) -> Response:
        page = files("ancsync.emulator.console").joinpath("static/index.html").read_text()
        return HTMLResponse(page)

    async def snapshot(request: Request) -> Response:
        return _json(console.snapshot())

    async def events(request: Request) -> Response:
        return StreamingResponse(_snapshots(console), media_type="text/event-stream")

    async def desired(request: Request) -> Response:
        body = await _body(request)
        reply = await console.update_desired(request.path_params["thing"], body.get("desired"))
        return _json({"ok": True, "version": reply.get("version")})

    async def subscribe(request: Request) -> Response:
        await console.subscribe(str((await _body(request)).get("filter", "")))
        return _json({"ok": True})

    async def unsubscribe(request: Request) -> Response:
        console.unsubscribe(str((await _body(request)).get("filter", "")))
        return _json({"ok": True})

    async def publish(request: Request) -> Response:
        body = await _body(request)
        qos = body.get("qos", 1)
        if not isinstance(qos, int):
            raise ConsoleError(f"qos must be 0 or 1, got {qos!r}")
        await console.publish(
            str(body.get("topic", "")),
            str(body.get("payload", "")),
            qos=qos,
            retain=bool(body.get("retain", False)),
        )
        return _json({"ok": True})

    async def acknowledge(request: Request) -> Response:
        await console.acknowledge(request.path_params["event_id"])
        return _json({"ok": True})

    routes: list[Route | Mount] = [
        Route("/", index),
        Route("/api/snapshot", snapshot),
        Route("/api/events", events),
        Route("/api/things/{thing}/desired", _answering(desired), methods=["POST"]),
        Route("/api/subscribe", _answering(subscribe), methods=["POST"]),
        Route("/api/unsubscribe", _answering(unsubscribe), methods=["POST"]),
        Route("/api/publish", _answering(publish), methods=["POST"]),
        Route("/api/emergencies/{event_id}/ack", _answering(acknowledge), methods=["POST"]),
        Mount("/static", StaticFiles(packages=[("ancsync.emulator.console", "static")])),
    ]
    # The extension point: each section's routes under its own prefix.
    routes += [
        Mount(f"/api/sections/{section.key}", routes=list(section.routes()))
        for section in console.sections
    ]
    return Starlette(
        routes=routes, middleware=[Middleware(BaseHTTPMiddleware, dispatch=_token_check(console))]
    )


def _token_check(
    console: ConsoleBackend,
) -> Callable[[Request, RequestResponseEndpoint], Awaitable[Response]]:
    """Refuse requests without the console's token (when it has one)."""

    async def check(request: Request, call_next: RequestResponseEndpoint) -> Response:
        presented = request.query_params.get("token")
        header = request.headers.get("authorization", "")
        if header.startswith("Bearer "):
            presented = header.removeprefix("Bearer ")
        if not console.authorized(presented):
            return _json(
                {"error": "this console needs its token: open the address it printed"}, 401
            )
        return await call_next(request)

    return check


def _answering(
    action: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """``action``, answering a :class:`ConsoleError` with 400 and its message."""

    async def answered(request: Request) -> Response:
        try:
            return await action(request)
        except ConsoleError as exc:
            return _json({"error": str(exc)}, 400)

    return answered


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise ConsoleError(f"the request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ConsoleError("the request body must be a JSON object")
    return body


def _json(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code, media_type="application/json")


async def _snapshots(console: ConsoleBackend) -> AsyncIterator[bytes]:
    """The event stream of one page: a snapshot now, then whenever something changed."""
    while not console.closing:
        yield b"event: snapshot\ndata: " + orjson.dumps(console.snapshot()) + b"\n\n"
        await anyio.sleep(1 / _MAX_UPDATES_PER_SECOND)  # ok: caps the updates a page gets
        await console.changed(_IDLE_REFRESH)
