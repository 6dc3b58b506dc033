"""IoTConnection: the public face of the MQTT session (connect, publish, subscribe, status).

It wires the pieces of :mod:`ancsync.mqtt` together: an :class:`~ancsync.mqtt.outbox.Outbox`
(priority lanes), a :class:`~ancsync.mqtt.ratelimit.RateLimiter`, a
:class:`~ancsync.mqtt.router.TopicRouter`, and the :class:`~ancsync.mqtt.session.MqttSession`
task that owns the connection. Every call a control loop makes returns without waiting for the
network; ``async with`` starts the session and returns at once, because a device must be able to
start offline.

It is a :class:`~ancsync.lifecycle.Component`: ``async with``, ``await tg.start(iot.run)``, and
cancel or ``await iot.aclose(timeout=...)`` to stop (flush, "offline", disconnect).
"""

from __future__ import annotations

import functools
import itertools
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream
from pydantic import BaseModel

from ancsync.codec import encode
from ancsync.config import Settings
from ancsync.errors import ConfigError, ConnectTimeout, InvalidTopic, NotStarted
from ancsync.lifecycle import Component
from ancsync.models import new_id
from ancsync.mqtt.backoff import Backoff, BackoffPolicy
from ancsync.mqtt.outbox import (
    DEFAULT_LIMITS,
    Lane,
    LaneLimits,
    Outbox,
    OutgoingMessage,
    Producer,
    PublishHandle,
)
from ancsync.mqtt.ratelimit import RateLimiter
from ancsync.mqtt.router import Handler, InvalidHook, Route, TopicRouter
from ancsync.mqtt.session import ConnectHook, ConnectionEvent, MqttSession, SessionState
from ancsync.mqtt.tls import build_ssl_context
from ancsync.mqtt.transport import TlsFiles, Transport
from ancsync.mqtt.transports import transport_factory_for
from ancsync.status import ConnectionStatus, SessionStatus
from ancsync.topics import MAX_SUBSCRIPTIONS, validate_filter, validate_topic

__all__ = ["IoTConnection"]

log = logging.getLogger("ancsync.connection")

Payload = BaseModel | Mapping[str, Any] | list[Any] | str | bytes

# A device publishes to a handful of topics over and over; check each once.
_validate_topic = functools.lru_cache(maxsize=1024)(validate_topic)


class IoTConnection(Component):
    """An MQTT connection to AWS IoT Core (or the local emulator) that keeps itself up.

    Build it from the arguments users of the old SDK know, or from :class:`~ancsync.config.
    Settings` (:meth:`from_settings`); arguments not given come from the environment
    (``IOT_ENDPOINT``...) and the config file, as in :meth:`Settings.load`::

        async with IoTConnection("anc-device-001", "xxxxx-ats.iot.eu-west-1.amazonaws.com",
                                 "cert.pem", "private.key", "AmazonRootCA1.pem") as iot:
            await iot.wait_connected(timeout=30)
            handle = await iot.publish("anc/devices/anc-device-001/metrics", {"snr": 38.2})
            await handle.delivered()

    Options beyond the settings:

    - ``keep_alive``: taken as given, so tests may use a few seconds (AWS IoT raises values
      under 30 to 30; :class:`Settings` refuses them).
    - ``reconnect``: the backoff policy (base 1 s, cap 60 s, reset after 30 s connected), or a
      :class:`~ancsync.mqtt.backoff.Backoff` with an injected random source (tests).
    - ``rate_limit``: ``(messages per second, bytes per second)``, default AWS's ``(100, 512 KiB)``.
    - ``lane_limits``: bounds of the outbox lanes; ``in_flight``: concurrent unacknowledged
      QoS 1 publishes (AWS allows 100).
    - ``announce_status``: publish the retained ``anc/devices/{thing_name}/status`` message
      ("online" after every connect, "offline" on stop and as the last will). Default on, for a
      device; turn it off for a client that is not a device (an operator tool, a test client),
      which would otherwise leave a retained status behind and need iot:Publish on it.
    - ``transport_factory``: a different :class:`~ancsync.mqtt.transport.Transport` (tests);
      without it, the backend the ``transport`` setting names (``"paho"`` or ``"crt"``).
    - ``stop_timeout``: seconds the shutdown may take (flush, "offline", disconnect); an owner
      may shorten it with ``aclose(timeout=...)``.

    Raises:
        ConfigError: a setting is missing or invalid, e.g. plaintext to a non-loopback host.
    """

    def __init__(
        self,
        thing_name: str | None = None,
        endpoint: str | None = None,
        cert_path: str | Path | None = None,
        key_path: str | Path | None = None,
        root_ca_path: str | Path | None = None,
        *,
        port: int | None = None,
        keep_alive: int | None = None,
        settings: Settings | None = None,
        tls: bool | None = None,
        persistent_session: bool | None = None,
        firmware_version: str = "unknown",
        announce_status: bool = True,
        reconnect: BackoffPolicy | Backoff | None = None,
        rate_limit: tuple[float, float] = (100, 512 * 1024),
        lane_limits: Mapping[Lane, LaneLimits] = DEFAULT_LIMITS,
        in_flight: int = 20,
        connect_timeout: float = 10.0,
        queue_size: int = 100,
        on_invalid: InvalidHook | None = None,
        transport_factory: Callable[[], Transport] | None = None,
        stop_timeout: float = 5.0,
    ) -> None:
        super().__init__(stop_timeout=stop_timeout)
        given: dict[str, Any] = {
            "thing_name": thing_name,
            "endpoint": endpoint,
            "cert_path": cert_path,
            "key_path": key_path,
            "root_ca_path": root_ca_path,
            "port": port,
            "tls": tls,
            "persistent_session": persistent_session,
        }
        if settings is None:
            settings = Settings.load(**given)
        elif any(value is not None for value in given.values()):
            named = ", ".join(name for name, value in given.items() if value is not None)
            raise ConfigError(
                f"IoTConnection got both settings and {named}; put them in the settings "
                "(Settings.load(...)) or pass only the arguments"
            )
        if keep_alive is not None and keep_alive < 1:
            raise ConfigError(f"keep_alive must be at least 1 second, got {keep_alive!r}")
        if in_flight < 1:
            raise ConfigError(f"in_flight must be at least 1, got {in_flight!r}")
        self.settings = settings
        self.thing_name = settings.iot.thing_name
        self._keep_alive = settings.iot.keep_alive if keep_alive is None else keep_alive
        self._firmware_version = firmware_version
        self._announce_status = announce_status
        self._reconnect = reconnect or BackoffPolicy()
        self._in_flight = in_flight
        self._connect_timeout = connect_timeout
        # The settings' backend (iot.transport), checked here: a missing extra fails at once.
        self._transport_factory = transport_factory or transport_factory_for(
            settings.iot.transport, in_flight=in_flight
        )
        self._outbox = Outbox(lane_limits)
        self._limiter = RateLimiter(*rate_limit)
        self._router = TopicRouter(queue_size=queue_size, on_invalid=on_invalid)
        self._hooks: list[ConnectHook] = []
        self._session: MqttSession | None = None
        self._closed = False
        # Default msg_ids: a random prefix per connection object and a counter, 32 hex digits
        # like new_id(), unique without a system call per message (os.urandom is ~5 µs).
        self._msg_id_prefix = new_id()[:16]
        self._msg_counter = itertools.count()

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> IoTConnection:
        """Build from :class:`Settings`; ``options`` are the keyword options of the constructor."""
        return cls(settings=settings, **options)

    # --- lifecycle ------------------------------------------------------------------------

    name = "connection"

    async def _serve(self, task_status: TaskStatus[None]) -> None:
        """Run the router and the session; ready at once, without waiting for the network."""
        if self._closed:
            raise NotStarted("this IoTConnection was already stopped; create a new one")
        session = self._new_session()
        async with anyio.create_task_group() as tg:
            await tg.start(self._router.run)
            await tg.start(session.run)
            self._session = session
            task_status.started()

    async def _shutdown(self) -> None:
        # The session and the router shut down on their own (they ran in _serve's task group);
        # what is left is to refuse new messages.
        self._closed = True

    def _limit_stop(self, deadline: float) -> None:
        super()._limit_stop(deadline)
        self._router._limit_stop(deadline)
        if self._session is not None:
            self._session._limit_stop(deadline)

    def _new_session(self) -> MqttSession:
        iot = self.settings.iot
        context_factory: Callable[[], ssl.SSLContext] | None = None
        tls_files: TlsFiles | None = None
        if iot.tls:
            if iot.cert_path is None or iot.key_path is None:  # Settings guarantees them
                raise ConfigError("TLS needs cert_path and key_path")
            context_factory = functools.partial(
                build_ssl_context,
                cert_path=iot.cert_path,
                key_path=iot.key_path,
                root_ca_path=iot.root_ca_path,
                port=iot.port,
                endpoint=iot.endpoint,
            )
            tls_files = TlsFiles(iot.cert_path, iot.key_path, iot.root_ca_path)
        session = MqttSession(
            thing_name=self.thing_name,
            host=iot.endpoint,
            port=iot.port,
            outbox=self._outbox,
            router=self._router,
            rate_limiter=self._limiter,
            ssl_context_factory=context_factory,
            tls_files=tls_files,
            keep_alive=self._keep_alive,
            clean_session=not iot.persistent_session,
            firmware_version=self._firmware_version,
            announce_status=self._announce_status,
            transport_factory=self._transport_factory,
            backoff=self._reconnect
            if isinstance(self._reconnect, Backoff)
            else Backoff(self._reconnect),
            in_flight=self._in_flight,
            connect_timeout=self._connect_timeout,
            stop_timeout=self.stop_timeout,
        )
        for hook in self._hooks:
            session.add_connect_hook(hook)
        return session

    def producing(self, name: str) -> Producer:
        """Register ``name`` as a part that may still publish while the connection stops.

        A stopping connection keeps sending until every such part has called
        ``producer.finish()``, within its deadline. Telemetry and the shadow sync use it for
        their last messages.
        """
        return self._outbox.producing(name)

    async def while_connected(self, work: Awaitable[None]) -> bool:
        """Await ``work`` unless the connection is lost or stops first; whether it finished.

        For a part's shutdown that waits for PUBACKs: no point waiting once nothing can come.
        """
        session = self._session
        if session is None or session.link_state is not SessionState.CONNECTED:
            close = getattr(work, "close", None)
            if close is not None:
                close()  # a coroutine never awaited would warn
            return False
        finished = False
        async with anyio.create_task_group() as tg:

            async def run_work() -> None:
                nonlocal finished
                await work
                finished = True
                tg.cancel_scope.cancel()

            tg.start_soon(run_work)
            await session.wait_not_connected()
            tg.cancel_scope.cancel()
        return finished

    async def connect(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Start (if needed) and wait until connected: the old SDK's ``connect()``."""
        if not self.running:
            await self.start()
        await self.wait_connected(timeout)

    async def wait_connected(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait until the session is connected (returns at once if it is).

        Raises:
            TLSError, NotAuthorized, ConfigError: the last attempt failed in a way retrying
                cannot fix (the session still retries about once a minute).
            ConnectTimeout: not connected within ``timeout`` seconds; names the last error.
            NotStarted: the connection was not started.
        """
        await self._running().wait_connected(timeout)

    def _running(self) -> MqttSession:
        if self._session is None or not self.running:
            raise NotStarted(
                "the IoTConnection is not running; use `async with IoTConnection(...) as iot:` "
                "or `await iot.start()`"
            )
        return self._session

    # --- publish and subscribe --------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        payload: Payload,
        qos: int = 1,
        *,
        retain: bool = False,
        lane: Lane = Lane.TELEMETRY,
        msg_id: str | None = None,
        coalesce_key: str | None = None,
    ) -> PublishHandle:
        """Queue a message and return its handle at once; ``await handle.delivered()`` waits
        for the PUBACK.

        ``payload`` is a pydantic model, a dict or list (sent as JSON), or ``str``/``bytes``
        (sent as is). ``lane`` sets the priority (emergency > shadow > telemetry); on the
        shadow lane a newer message with the same ``coalesce_key`` replaces a queued one.
        ``msg_id`` identifies the message in the outbox and across retries (default: new).

        Raises, before anything is queued:
            InvalidTopic: a bad topic, a reserved ``$`` topic, or retain on a ``$`` topic.
            PayloadTooLarge: the payload is over AWS IoT's 128 KB.
            ConfigError: qos is not 0 or 1 (AWS IoT has no QoS 2).
            BufferFull: the emergency lane is at its hard limit.
            NotStarted: the connection was stopped.
        """
        return self.publish_nowait(
            topic, payload, qos, retain=retain, lane=lane, msg_id=msg_id, coalesce_key=coalesce_key
        )

    def publish_nowait(
        self,
        topic: str,
        payload: Payload,
        qos: int = 1,
        *,
        retain: bool = False,
        lane: Lane = Lane.TELEMETRY,
        msg_id: str | None = None,
        coalesce_key: str | None = None,
    ) -> PublishHandle:
        """:meth:`publish` for code that cannot await (a callback): the same, synchronously."""
        if self._closed or (self._session is not None and self._session.ended):
            raise NotStarted("the IoTConnection was stopped; messages can no longer be queued")
        if qos not in (0, 1):
            raise ConfigError(f"qos must be 0 or 1 (AWS IoT Core has no QoS 2), got {qos!r}")
        _validate_topic(topic)
        if retain and topic.startswith("$"):
            raise InvalidTopic(f"AWS IoT does not retain messages on '$' topics ({topic})")
        data = encode(payload)
        message_id = msg_id or f"{self._msg_id_prefix}{next(self._msg_counter):016x}"
        handle = PublishHandle(message_id)
        self._outbox.put(
            OutgoingMessage(
                topic=topic,
                payload=data,
                qos=qos,
                retain=retain,
                lane=lane,
                msg_id=message_id,
                coalesce_key=coalesce_key,
                handle=handle,
            )
        )
        return handle

    def subscribe(
        self, topic_filter: str, handler: Handler, model: type[BaseModel] | None = None
    ) -> Route:
        """Call ``handler(topic, payload)`` for every message matching ``topic_filter``.

        ``payload`` is validated into ``model`` (or is the decoded JSON value without one);
        invalid payloads are counted and logged, never handed to the handler. Works before and
        after connecting; every filter is subscribed again after each reconnect. Returns the
        route, for :meth:`unsubscribe` and its counters.

        Raises:
            InvalidTopic: a bad filter, or more than 50 distinct filters (AWS IoT's limit).
        """
        validate_filter(topic_filter)
        filters = set(self._router.filters()) | {topic_filter}
        if len(filters) > MAX_SUBSCRIPTIONS:
            raise InvalidTopic(
                f"subscribing to {topic_filter!r} would make {len(filters)} subscriptions, over "
                f"AWS IoT's limit of {MAX_SUBSCRIPTIONS} per connection; use a wildcard filter "
                "('+' or '#') to cover several topics"
            )
        route = self._router.add_route(topic_filter, handler, model)
        if self._session is not None:
            self._session.subscriptions_changed()
        return route

    async def wait_subscribed(self, *filters: str, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait until connected and the broker answered the SUBSCRIBE of every filter given.

        For request/response on a connection already up: subscribe to the replies, wait for
        this, then publish the request, so that no reply comes before its subscription.

        Raises:
            ConnectTimeout: not subscribed within ``timeout`` seconds.
        """
        with anyio.move_on_after(timeout):
            await self._running().wait_subscribed(filters)
            return
        raise ConnectTimeout(f"{', '.join(filters)} not subscribed within {timeout} s")

    async def reconnect(self) -> None:
        """Close the connection and connect again at once, with the certificate files read anew.

        Returns once the old connection has ended; :meth:`wait_connected` then waits for the new
        one (and raises at once if it is refused). Nothing queued is lost: unacknowledged
        messages are sent again on the new connection. Use it after replacing ``cert_path`` /
        ``key_path`` (a certificate rotation).
        """
        session = self._running()
        session.reconnect()
        await session.wait_not_connected()

    def unsubscribe(self, route: Route) -> None:
        """Stop routing to ``route``; the filter is unsubscribed when no route uses it."""
        self._router.remove_route(route)
        if self._session is not None:
            self._session.subscriptions_changed()

    # --- following the connection ----------------------------------------------------------

    def add_connect_hook(self, hook: ConnectHook) -> Callable[[], None]:
        """Run ``await hook()`` after every successful connect (e.g. re-read the shadow).

        Hooks start after the subscriptions are made and status "online" is published, while
        queued messages go out. A hook still running when the connection drops is cancelled
        and runs again after the next connect; its exceptions are logged. Returns a function
        that removes the hook. May be called before :meth:`start`.
        """
        self._hooks.append(hook)
        remove_from_session = self._session.add_connect_hook(hook) if self._session else None

        def remove() -> None:
            if hook in self._hooks:
                self._hooks.remove(hook)
            if remove_from_session is not None:
                remove_from_session()

        return remove

    def events(self, buffer: int = 100) -> MemoryObjectReceiveStream[ConnectionEvent]:
        """Connection events (connecting, connected, disconnected with the reason) from now on.

        ``with iot.events() as events: async for event in events: ...``
        """
        return self._running().events(buffer)

    @property
    def connected(self) -> bool:
        """Whether the session is connected right now."""
        return self._session is not None and self._session.link_state is SessionState.CONNECTED

    def get_status(self) -> ConnectionStatus:
        """Connection, queues and counters, JSON-serialisable (for logs, the CLI, health checks).

        ``state`` is ``stopped``, ``connecting``, ``connected`` or ``waiting`` (backing off).
        ``lanes`` has per-lane depth, bytes and drop counters; ``rate_limit`` the token-bucket
        waits; ``router`` the per-route counters (invalid payloads, drops, handler errors).
        """
        connection: SessionStatus
        if self._session is not None:
            connection = self._session.status()
        else:
            connection = {
                "state": "stopped",
                "connected_since": None,
                "connect_attempts": 0,
                "reconnect_count": 0,
                "last_error": None,
                "subscriptions": 0,
                "failed_subscriptions": [],
                "refused_topics": [],
                "in_flight": 0,
                "published": 0,
                "acknowledged": 0,
            }
        lanes = self._outbox.stats()
        router = self._router.stats()
        return {
            "thing_name": self.thing_name,
            "endpoint": self.settings.iot.endpoint,
            "port": self.settings.iot.port,
            **connection,
            "dropped": sum(lane["dropped"] for lane in lanes.values()),
            "invalid": router["invalid"],
            "lanes": lanes,
            "rate_limit": self._limiter.stats(),
            "router": router,
        }
