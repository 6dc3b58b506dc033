"""The MQTT session: the one task that owns the connection.

:class:`MqttSession` is a :class:`~ancsync.lifecycle.Component`; while it runs it loops::

    connect (TLS context built fresh, last will "offline")
      -> subscribe every filter of the router -> publish retained status "online"
         (will and status only with ``announce_status``: a device, not an operator tool)
      -> serve: read messages into the router, drain the outbox through the rate limiter with a
         bounded window of concurrent QoS 1 publishes, follow subscription changes, run the
         connect hooks
      -> on any loss: put unacknowledged messages back (same msg_id), back off, connect again

Nothing else touches the transport. Components publish through the outbox, receive through the
router, and follow the connection through :meth:`MqttSession.events`, :meth:`wait_connected` and
connect hooks (:meth:`add_connect_hook`), which run after every successful connect.

Errors retrying cannot fix (a refused certificate, not authorised, bad certificate files) are
kept as :attr:`permanent_error` until the next attempt ends otherwise: :meth:`wait_connected`
raises them at once, and the session keeps retrying only about once per backoff cap (60 s), so a
device recovers by itself once the cloud side is fixed.

Stopping (cancelled, or ``aclose()``) while connected keeps the connection for the shutdown: it
sends what is queued, and what the outbox's producers still queue, until they have finished and
every message is acknowledged, or the deadline is near; then it publishes "offline" and
disconnects. The handle of every message still queued or unacknowledged then fails, so no
``await handle.delivered()`` waits forever.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Collection, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ancsync.codec import encode
from ancsync.errors import (
    AncSyncError,
    ConfigError,
    ConnectError,
    ConnectTimeout,
    PublishTimeout,
)
from ancsync.lifecycle import Component, unwrapping
from ancsync.models import DeviceStatus, new_id, utc_now
from ancsync.mqtt.backoff import Backoff
from ancsync.mqtt.outbox import Outbox, OutgoingMessage
from ancsync.mqtt.paho_transport import PahoTransport
from ancsync.mqtt.ratelimit import RateLimiter
from ancsync.mqtt.refusals import Refusals
from ancsync.mqtt.router import TopicRouter
from ancsync.mqtt.transport import (
    SUBSCRIBE_FAILURE,
    ConnectOptions,
    TlsFiles,
    Transport,
    Will,
)
from ancsync.status import SessionStatus
from ancsync.topics import MAX_FILTERS_PER_SUBSCRIBE, status_topic

__all__ = ["ConnectHook", "ConnectionEvent", "MqttSession", "SessionState"]

log = logging.getLogger("ancsync.mqtt.session")

ConnectHook = Callable[[], Awaitable[None]]
"""An async callable run after every successful connect (:meth:`MqttSession.add_connect_hook`)."""


class SessionState(StrEnum):
    """Where the session is in its connect loop."""

    STOPPED = "stopped"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    WAITING = "waiting"  # backing off before the next attempt


@dataclass(frozen=True)
class ConnectionEvent:
    """A change of the connection, delivered by :meth:`MqttSession.events`.

    - ``connecting``: attempt number ``attempt`` (1-based, counted since the session started).
    - ``connected``: subscriptions made and status "online" published (if announced).
    - ``disconnected``: an attempt failed or a connection was lost, because of ``error``; the
      next attempt follows in ``retry_in`` seconds (``None`` when the session is stopping).
    - ``refused``: the broker closed the connection each time a topic was used: ``error`` is a
      :class:`~ancsync.errors.TopicNotAllowed` naming it; the session no longer uses it.
    """

    kind: Literal["connecting", "connected", "disconnected", "refused"]
    attempt: int
    error: AncSyncError | None = None
    retry_in: float | None = None


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class MqttSession(Component):
    """Owns the broker connection of one device: a :class:`~ancsync.lifecycle.Component`.

    ``keep_alive`` is taken as given (AWS IoT accepts 30 to 1200 s; :class:`~ancsync.config.
    Settings` enforces that); tests use a few seconds to detect half-open links quickly.
    ``ssl_context_factory`` is called before every attempt (``None`` for plaintext), so rotated
    certificate files are picked up and expiry is reported; ``tls_files`` names those files for
    a backend that does its own TLS (awscrt). ``in_flight`` bounds the concurrent unacknowledged
    publishes (AWS allows 100 per client). ``announce_status=False`` (a client that is not a
    device, such as an operator tool) sets no last will and publishes no status.
    ``stop_timeout`` bounds the shutdown: the flush, "offline" and the disconnect.
    """

    name = "session"

    def __init__(
        self,
        *,
        thing_name: str,
        host: str,
        port: int,
        outbox: Outbox,
        router: TopicRouter,
        rate_limiter: RateLimiter,
        ssl_context_factory: Callable[[], ssl.SSLContext] | None,
        tls_files: TlsFiles | None = None,
        keep_alive: int = 60,
        clean_session: bool = True,
        firmware_version: str = "unknown",
        announce_status: bool = True,
        transport_factory: Callable[[], Transport] | None = None,
        backoff: Backoff | None = None,
        in_flight: int = 20,
        connect_timeout: float = 10.0,
        stop_timeout: float = 5.0,
    ) -> None:
        super().__init__(stop_timeout=stop_timeout)
        self.thing_name = thing_name
        self._host = host
        self._port = port
        self._outbox = outbox
        self._router = router
        self._limiter = rate_limiter
        self._ssl_context_factory = ssl_context_factory
        self._tls_files = tls_files
        self._keep_alive = keep_alive
        self._clean_session = clean_session
        self._firmware_version = firmware_version
        self._announce_status = announce_status
        self._transport_factory = transport_factory or (
            lambda: PahoTransport(max_inflight=in_flight)
        )
        self._backoff = backoff or Backoff()
        self._in_flight_limit = in_flight
        self._connect_timeout = connect_timeout
        self._status_topic = status_topic(thing_name)

        self.link_state = SessionState.STOPPED
        self.permanent_error: AncSyncError | None = None
        self.last_error: AncSyncError | None = None
        self._last_error_at: str | None = None
        self.connected_since: str | None = None
        self.attempts = 0
        self.connections = 0
        self._published = 0
        self._acknowledged = 0
        self._failed_subscriptions: set[str] = set()
        self._subscribed: dict[str, int] = {}
        self._subscribing: list[str] = []  # the filters of the SUBSCRIBE awaiting its SUBACK
        self._refusals = Refusals()
        self._alone: OutgoingMessage | None = None  # a suspect, on the wire by itself
        self._in_flight: dict[int, OutgoingMessage] = {}
        self._hooks: list[ConnectHook] = []
        self._listeners: list[MemoryObjectSendStream[ConnectionEvent]] = []
        self._changed = anyio.Event()
        self._subscriptions_changed = anyio.Event()
        self._reconnect_now = anyio.Event()
        self._ended = False  # shut down: wait_connected() no longer waits
        self._kept: Transport | None = None  # the connection a shutdown flushes through
        self._window = asyncio.Semaphore(in_flight)  # one per connection, kept by the flush
        self._progress: anyio.Event | None = None  # set on a PUBACK while the flush waits
        self._session_id = new_id()

    # --- what components use -------------------------------------------------------------

    async def wait_connected(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait until connected. Raises :attr:`permanent_error` at once if there is one,
        :class:`~ancsync.errors.ConnectError` once :meth:`run` has ended, and
        :class:`~ancsync.errors.ConnectTimeout` (naming the last error) after ``timeout``."""
        # A timeout parameter (not the caller's cancel scope) so we can say why it timed out.
        with anyio.move_on_after(timeout):
            while self.link_state is not SessionState.CONNECTED:
                if self.permanent_error is not None:
                    raise self.permanent_error
                if self._ended:
                    raise ConnectError(
                        f"the session to {self._host}:{self._port} has stopped and will not "
                        "connect again; start a new connection"
                    ) from self.last_error
                await self._changed.wait()
            return
        last = f"; last error: {self.last_error}" if self.last_error else ""
        raise ConnectTimeout(
            f"not connected to {self._host}:{self._port} within {timeout} s{last}"
        ) from self.last_error

    async def wait_not_connected(self) -> None:
        """Return once the session is not connected (at once if it is not)."""
        while self.link_state is SessionState.CONNECTED:
            await self._changed.wait()

    async def wait_subscribed(self, filters: Collection[str]) -> None:
        """Return once connected with the broker's answer to a SUBSCRIBE of every filter in
        ``filters`` (on this connection: a request published now has its replies routed)."""
        while not (
            self.link_state is SessionState.CONNECTED
            and all(topic_filter in self._subscribed for topic_filter in filters)
        ):
            await self._changed.wait()

    def reconnect(self) -> None:
        """End the connection now and connect again at once, e.g. to use new certificate files
        (the TLS context is built anew for every attempt). Nothing queued is lost: what was in
        flight goes back to the outbox, as after any lost connection. An error retrying could
        not fix is forgotten: :meth:`wait_connected` waits for the new attempt's outcome."""
        self.permanent_error = None
        self._reconnect_now.set()

    @property
    def ended(self) -> bool:
        """Whether the session has shut down (until it is run again)."""
        return self._ended

    def events(self, buffer: int = 100) -> MemoryObjectReceiveStream[ConnectionEvent]:
        """A stream of :class:`ConnectionEvent`, from now on. Close it when done.

        Use ``with session.events() as events: async for event in events: ...``. A listener
        that falls ``buffer`` events behind misses the newer ones (the session never waits).
        """
        send, receive = anyio.create_memory_object_stream[ConnectionEvent](buffer)
        self._listeners.append(send)
        return receive

    def add_connect_hook(self, hook: ConnectHook) -> Callable[[], None]:
        """Run ``await hook()`` after every successful connect; returns a function to remove it.

        Hooks start once subscriptions are made and status "online" is out, concurrently with
        the publishing of queued messages (so a hook may publish and await delivery). A hook is
        cancelled if the connection drops while it runs, and runs again after the next connect.
        An exception from a hook is logged and does not affect the connection.
        """
        self._hooks.append(hook)

        def remove() -> None:
            if hook in self._hooks:
                self._hooks.remove(hook)

        return remove

    def subscriptions_changed(self) -> None:
        """Tell the session the router's filters changed (subscribe or unsubscribe now)."""
        self._subscriptions_changed.set()

    def status(self) -> SessionStatus:
        """The connection part of ``get_status()``, JSON-serialisable."""
        error = self.last_error
        return {
            "state": self.link_state.value,
            "connected_since": self.connected_since,
            "connect_attempts": self.attempts,
            "reconnect_count": max(0, self.connections - 1),
            "last_error": None
            if error is None
            else {
                "type": type(error).__name__,
                "message": str(error),
                "permanent": error is self.permanent_error,
                "at": self._last_error_at,
            },
            "subscriptions": len(self._subscribed),
            "failed_subscriptions": sorted(
                self._failed_subscriptions | self._refusals.refused_filters
            ),
            "refused_topics": sorted(self._refusals.refused_topics),
            "in_flight": len(self._in_flight),
            "published": self._published,
            "acknowledged": self._acknowledged,
        }

    # --- the loop ---------------------------------------------------------------------------

    async def _serve(self, task_status: TaskStatus[None]) -> None:
        """Connect, serve, reconnect, until cancelled. Ready at once: a device starts offline."""
        self._ended = False
        task_status.started()
        while True:
            error = await self._connect_and_serve()
            if self._reconnect_now.is_set():
                delay = 0.0
            else:
                delay = self._backoff.next_delay(permanent=error is self.permanent_error)
            self._set_state(SessionState.WAITING)
            self._emit(ConnectionEvent("disconnected", self.attempts, error, delay))
            log.info("next connect attempt in %.2f s", delay)
            with anyio.move_on_after(delay):
                await self._reconnect_now.wait()
            if self._reconnect_now.is_set():
                self._reconnect_now = anyio.Event()

    async def _shutdown(self) -> None:
        """Flush through the connection kept at the cancellation, say "offline", disconnect."""
        transport, self._kept = self._kept, None
        try:
            if transport is not None:
                await self._flush(transport)
        finally:
            if transport is not None:
                await self._let_go(transport)
            self._fail_unsent()
            self._ended = True
            self._set_state(SessionState.STOPPED)
            self._emit(ConnectionEvent("disconnected", self.attempts, ConnectError("stopped")))
            for listener in self._listeners:
                listener.close()
            self._listeners.clear()

    async def _flush(self, transport: Transport) -> None:
        """Send until the producers have finished and all is acknowledged, then "offline".

        The last quarter of the time left (at most a second) is kept for "offline" and the
        DISCONNECT. A connection lost meanwhile ends the flush; what is unsent stays unsent.
        """
        reserve = min(1.0, self._time_left() / 4)
        try:
            with anyio.move_on_after(self._time_left() - reserve) as flushing:
                async with unwrapping(), anyio.create_task_group() as tg:
                    tg.start_soon(self._write, transport)
                    tg.start_soon(self._read, transport)
                    await self._drained()
                    tg.cancel_scope.cancel()
            if flushing.cancelled_caught:
                log.warning(
                    "stopping: %d messages not acknowledged in time (waiting for: %s)",
                    len(self._in_flight)
                    + sum(d["messages"] for d in self._outbox.depth().values()),
                    ", ".join(self._outbox.producers) or "PUBACKs",
                )
            if self._announce_status:
                with anyio.move_on_after(self._time_left()):
                    await self._publish_and_wait(transport, self._status_payload("offline"))
        except ConnectError as exc:
            log.warning("stopping: the connection was lost during the flush: %s", exc)

    async def _drained(self) -> None:
        """Return once no producer may queue more, the outbox is empty and nothing is in flight."""

        def progress() -> None:
            if self._progress is not None:
                self._progress.set()

        self._outbox.on_producer_finished = progress
        try:
            while self._in_flight or self._outbox.producers or not self._outbox.is_empty():
                self._progress = anyio.Event()
                # A PUBACK or a finished producer wakes it; a put need not (the writer takes
                # the message, and its PUBACK follows).
                await self._progress.wait()
        finally:
            self._outbox.on_producer_finished = None
            self._progress = None

    def _fail_unsent(self) -> None:
        """Fail the handle of every message left in flight or queued: nothing will send them.

        A message handed to the broker before (in flight, or put back after a loss) may have
        arrived even though no PUBACK was seen; one never sent did not. Durable messages stay in
        their store either way, and are sent again on the next start.
        """
        unacknowledged = list(self._in_flight.values())
        self._in_flight.clear()
        never_sent: list[OutgoingMessage] = []
        while (message := self._outbox.take_nowait()) is not None:
            (unacknowledged if message.attempts else never_sent).append(message)
        for message in unacknowledged:
            message.handle.fail(
                PublishTimeout(
                    f"message {message.msg_id} was sent but the session stopped before its "
                    "PUBACK arrived: the broker may or may not have it; a durable message stays "
                    "in its store and is sent again on the next start"
                )
            )
        for message in never_sent:
            message.handle.fail(
                ConnectError(
                    f"message {message.msg_id} was never sent: the session stopped first; a "
                    "durable message stays in its store and is sent again on the next start"
                )
            )
        if unacknowledged or never_sent:
            log.warning(
                "session stopped with %d messages unacknowledged and %d never sent",
                len(unacknowledged),
                len(never_sent),
            )

    async def _connect_and_serve(self) -> AncSyncError:
        """One attempt: connect and serve until the connection ends; return why it ended."""
        self.attempts += 1
        self._set_state(SessionState.CONNECTING)
        self._emit(ConnectionEvent("connecting", self.attempts))
        self._session_id = new_id()
        transport = self._transport_factory()
        try:
            await transport.connect(self._options())  # bounded by connect_timeout
        except (ConnectError, ConfigError) as exc:
            await transport.close()
            return self._failed(exc)
        except BaseException:
            await transport.close()
            raise
        log.info("connected to %s:%d as %s", self._host, self._port, self.thing_name)
        try:
            return await self._serve_connection(transport)
        except anyio.get_cancelled_exc_class():
            if self.link_state is SessionState.CONNECTED:
                self._kept = transport  # the shutdown flushes through it
            raise
        finally:
            if self._kept is not transport:
                await self._let_go(transport)

    async def _let_go(self, transport: Transport) -> None:
        """Close the connection and put its unacknowledged messages back in the outbox."""
        # Closed first, so no late PUBACK callback can run for a message put back.
        await transport.close()
        self._backoff.disconnected()
        self.connected_since = None
        # What was outstanding is suspect: the broker may have closed the link because of it.
        again, refused = self._refusals.connection_lost(
            list(self._in_flight.values()), self._subscribing, alone=self._alone
        )
        for message in again:
            self._outbox.requeue(message)
        self._in_flight.clear()
        self._subscribing, self._alone = [], None
        self._window = asyncio.Semaphore(self._in_flight_limit)
        for error in refused:
            self._emit(ConnectionEvent("refused", self.attempts, error))

    def _options(self) -> ConnectOptions:
        context = self._ssl_context_factory() if self._ssl_context_factory else None
        return ConnectOptions(
            host=self._host,
            port=self._port,
            client_id=self.thing_name,
            keep_alive=self._keep_alive,
            ssl_context=context,
            clean_session=self._clean_session,
            will=Will(self._status_topic, self._status_payload("offline"), qos=1, retain=True)
            if self._announce_status
            else None,
            connect_timeout=self._connect_timeout,
            tls_files=self._tls_files if context is not None else None,
        )

    def _status_payload(self, status: Literal["online", "offline"]) -> bytes:
        return encode(
            DeviceStatus(
                device_id=self.thing_name,
                status=status,
                firmware_version=self._firmware_version,
                session_id=self._session_id,
                timestamp=utc_now(),
            ),
            what="status",
        )

    def _failed(self, error: AncSyncError) -> AncSyncError:
        self.last_error = error
        self._last_error_at = utc_now()
        permanent = isinstance(error, ConfigError) or getattr(error, "permanent", False)
        # Only the latest failure counts: after a TLS error, ordinary network failures must not
        # leave wait_connected() raising the old TLS error.
        self.permanent_error = error if permanent else None
        if permanent:
            log.error("cannot connect (retrying cannot fix this): %s", error)
        elif self._reconnect_now.is_set():
            log.info("connection closed to connect again, as asked")
        else:
            log.warning("connection failed: %s", error)
        self._note_change()
        return error

    async def _serve_connection(self, transport: Transport) -> AncSyncError:
        self._subscribed = {}
        self._failed_subscriptions.clear()
        lost: list[AncSyncError] = []
        async with anyio.create_task_group() as tg:
            # Every task of the connection runs under this guard: the first failure ends the
            # connection (cancelling the others) and is kept as the reason.
            async def guard(work: Callable[[], Awaitable[None]], what: str) -> None:
                try:
                    await work()
                    return
                except ConnectError as exc:
                    lost.append(exc)
                except Exception as exc:  # a bug must not end the device's connection loop
                    log.exception("%s failed; reconnecting", what)
                    lost.append(ConnectError(f"{what} failed: {exc!r}"))
                tg.cancel_scope.cancel()

            # The reader runs from the start: it is what notices a connection lost during setup.
            tg.start_soon(guard, lambda: self._read(transport), "reader")
            tg.start_soon(guard, self._until_reconnect_asked, "reconnect")
            tg.start_soon(guard, lambda: self._set_up(transport, tg, guard), "setup")
        return self._failed(lost[0] if lost else ConnectError("connection ended"))

    async def _set_up(
        self,
        transport: Transport,
        tg: TaskGroup,
        guard: Callable[[Callable[[], Awaitable[None]], str], Coroutine[Any, Any, None]],
    ) -> None:
        """Subscribe, say "online", then start the connection's work."""
        await self._sync_subscriptions(transport)
        if self._announce_status:
            await self._publish_and_wait(transport, self._status_payload("online"))

        self.connections += 1
        self.connected_since = datetime.now(UTC).isoformat(timespec="seconds")
        self.permanent_error = None
        self._backoff.connected()
        self._set_state(SessionState.CONNECTED)
        self._emit(ConnectionEvent("connected", self.attempts))

        tg.start_soon(guard, lambda: self._write(transport), "writer")
        tg.start_soon(guard, lambda: self._follow_subscriptions(transport), "subscriber")
        for hook in list(self._hooks):
            tg.start_soon(self._run_hook, hook)

    async def _publish_and_wait(self, transport: Transport, status: bytes) -> None:
        """Publish a retained status message and wait for its PUBACK, within connect_timeout."""
        acked = anyio.Event()
        transport.publish(self._status_topic, status, 1, True, acked.set)
        with anyio.move_on_after(self._connect_timeout):
            await acked.wait()
            return
        raise ConnectError(f"no PUBACK for the status message within {self._connect_timeout} s")

    async def _until_reconnect_asked(self) -> None:
        await self._reconnect_now.wait()
        raise ConnectError("reconnecting, as asked (e.g. for a new certificate)")

    async def _read(self, transport: Transport) -> None:
        async for message in transport.messages():
            self._router.dispatch(message.topic, message.payload)
        raise ConnectError("connection lost: the broker closed it")

    async def _write(self, transport: Transport) -> None:
        """Drain the outbox in priority order, within the rate limit, keeping at most
        ``in_flight`` messages unacknowledged.

        The PUBACK callback runs synchronously in the transport's reader, so a handle resolves
        without a hop through another task; an asyncio.Semaphore because its acquire does not
        yield when a slot is free. Both are measurable at thousands of messages per second.
        """
        window = self._window
        while True:
            await window.acquire()
            # Wait for the rate limit before choosing the message, so whatever is most urgent
            # when it may go is the one that goes (an emergency never waits behind telemetry).
            await self._limiter.ready()
            message = await self._outbox.get()
            self._limiter.charge(len(message.payload))
            alone = self._refusals.is_suspect(message)
            if alone:  # in flight at a lost connection: by itself this time (mqtt/refusals.py)
                for _ in range(self._in_flight_limit - 1):
                    await window.acquire()
                self._alone = message
            # Tracked from here on: whatever happens next, a loss puts it back in the outbox.
            self._in_flight[id(message)] = message
            answered = anyio.Event() if alone else None

            def acknowledged(
                message: OutgoingMessage = message, answered: anyio.Event | None = answered
            ) -> None:
                window.release()
                if self._in_flight.pop(id(message), None) is not None:
                    self._acknowledged += 1
                self._refusals.answered(message)
                message.handle.resolve()
                if answered is not None:
                    answered.set()
                if self._progress is not None:
                    self._progress.set()

            transport.publish(
                message.topic, message.payload, message.qos, message.retain, acknowledged
            )
            self._published += 1
            if answered is not None:
                await answered.wait()  # a lost link ends the wait: the reader raises
                self._alone = None
                for _ in range(self._in_flight_limit - 1):
                    window.release()

    async def _follow_subscriptions(self, transport: Transport) -> None:
        while True:
            await self._subscriptions_changed.wait()
            self._subscriptions_changed = anyio.Event()
            await self._sync_subscriptions(transport)

    async def _sync_subscriptions(self, transport: Transport) -> None:
        refusals = self._refusals
        wanted = [f for f in self._router.filters() if f not in refusals.refused_filters]
        new = [f for f in wanted if f not in self._subscribed]
        gone = [f for f in self._subscribed if f not in wanted]
        # Suspects of the last loss go first, one per SUBSCRIBE; AWS IoT takes at most 8 filters
        # per SUBSCRIBE.
        alone = [[f] for f in new if f in refusals.suspect_filters]
        rest = [f for f in new if f not in refusals.suspect_filters]
        for chunk in alone + _chunks(rest, MAX_FILTERS_PER_SUBSCRIBE):
            self._subscribing = chunk
            codes = await transport.subscribe([(f, 1) for f in chunk])
            self._subscribing = []
            for topic_filter, code in zip(chunk, codes, strict=True):
                refusals.subscribed(topic_filter)
                self._subscribed[topic_filter] = code
                if code == SUBSCRIBE_FAILURE:
                    self._failed_subscriptions.add(topic_filter)
                    log.error(
                        "the broker refused the subscription to %s; check the device policy "
                        "allows iot:Subscribe on topicfilter/%s",
                        topic_filter,
                        topic_filter,
                    )
        for chunk in _chunks(gone, MAX_FILTERS_PER_SUBSCRIBE):
            await transport.unsubscribe(chunk)
            for topic_filter in chunk:
                del self._subscribed[topic_filter]
                self._failed_subscriptions.discard(topic_filter)
        self._note_change()

    async def _run_hook(self, hook: ConnectHook) -> None:
        try:
            await hook()
        except Exception:
            log.exception("connect hook %r raised; the connection is not affected", hook)

    # --- state and events -------------------------------------------------------------------

    def _set_state(self, state: SessionState) -> None:
        self.link_state = state
        self._note_change()

    def _note_change(self) -> None:
        """Wake whoever waits on the state (connected, subscribed, failed)."""
        self._changed.set()
        self._changed = anyio.Event()

    def _emit(self, event: ConnectionEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener.send_nowait(event)
            except anyio.WouldBlock:
                log.debug("a connection-event listener is full; it misses %s", event.kind)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._listeners.remove(listener)
