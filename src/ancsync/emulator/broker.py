"""The emulator's MQTT broker: amqtt, run in the current event loop, with AWS IoT's TLS rules.

:class:`EmbeddedBroker` starts amqtt with an explicit plugin list (only
:class:`~ancsync.emulator.auth.AcceptedConnectionPlugin`, no entry-point discovery) and

- a TLS listener that requires a client certificate chained to the dev CA,
- optionally a plain TCP listener, on a loopback host only,
- an :class:`~ancsync.emulator.auth.Authorizer` deciding every connect (its last will included),
  publish (with its retain flag) and subscribe,
- AWS shadow request topics (``$aws/things/.../shadow/...(get|update|delete)``) handed to a
  ``reserved_handler`` (the shadow service) instead of amqtt closing the client, and
- publish listeners (the rules sink) that see every accepted client publish.

amqtt does not offer all of this publicly: :class:`~ancsync.emulator.amqtt_broker.AwsLikeBroker`
holds every use of its private API; this module holds the decisions (connect, publish,
subscribe), the counters and the public interface.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Protocol, Self

from amqtt.contexts import BrokerConfig, ListenerConfig
from amqtt.errors import BrokerError

from ancsync.config import is_loopback
from ancsync.emulator.amqtt_broker import AwsLikeBroker
from ancsync.emulator.auth import (
    AcceptedConnectionPlugin,
    Authorizer,
    ClientIdentity,
    connect_refusal,
    publish_allowed,
)
from ancsync.emulator.certs import DevCerts
from ancsync.errors import ConfigError, NotStarted

__all__ = [
    "Authorizer",
    "ClientIdentity",
    "EmbeddedBroker",
    "PublishListener",
    "ReservedTopicHandler",
]

log = logging.getLogger("ancsync.emulator.broker")

_PLUGIN_PATH = f"{AcceptedConnectionPlugin.__module__}.{AcceptedConnectionPlugin.__qualname__}"


class ReservedTopicHandler(Protocol):
    """Receives a client publish on an AWS shadow request topic (e.g. the shadow service)."""

    async def __call__(self, identity: ClientIdentity, topic: str, payload: bytes) -> None: ...


PublishListener = Callable[[ClientIdentity, str, bytes], Awaitable[None]]
"""Sees every accepted client publish on a normal topic, in arrival order per client."""


class EmbeddedBroker:
    """An MQTT broker with AWS IoT's TLS and authorisation rules, in the current event loop.

    ``certs`` enables the TLS listener on ``host:port`` (port 0 picks a free port; read the bound
    one from :attr:`port` after :meth:`start`); ``None`` means no TLS listener. ``plain_port``
    adds an unencrypted listener, allowed only on a loopback ``host``. Without an
    ``authorizer`` every client with a valid certificate may do anything. Use it as
    ``async with EmbeddedBroker(certs) as broker: ...`` or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        certs: DevCerts | None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        plain_port: int | None = None,
        authorizer: Authorizer | None = None,
        reserved_handler: ReservedTopicHandler | None = None,
        max_tls_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
    ) -> None:
        if certs is None and plain_port is None:
            raise ConfigError(
                "EmbeddedBroker needs a listener: pass dev certificates for TLS "
                "(ensure_dev_certs) or a plain_port for plain MQTT on a loopback host"
            )
        if plain_port is not None and not is_loopback(host):
            raise ConfigError(
                f"host {host!r} is not a loopback address; plain (unencrypted) MQTT is only "
                "allowed on 127.0.0.1, ::1 or localhost: use TLS or a loopback host"
            )
        for name, value in (("port", port), ("plain_port", plain_port)):
            if value is not None and not 0 <= value <= 65535:
                raise ConfigError(f"{name} {value} is not a TCP port; use 0..65535 (0: any free)")
        self.certs = certs
        self.host = host
        self.max_tls_version = max_tls_version
        self._requested_port = port
        self._requested_plain_port = plain_port
        self._authorizer = authorizer
        self._reserved_handler = reserved_handler
        self._listeners: list[PublishListener] = []
        self._broker: AwsLikeBroker | None = None
        self._bound: dict[str, int] = {}
        self._stats = {"connects_denied": 0, "publishes_denied": 0, "subscribes_denied": 0}

    # -- lifecycle -------------------------------------------------------------------------

    def _config(self) -> BrokerConfig:
        listeners: dict[str, ListenerConfig] = {}
        if self._requested_plain_port is not None:
            listeners["plain"] = ListenerConfig(
                bind=f"{self.host}:{self._requested_plain_port}", ssl=False
            )
        if self.certs is not None:
            listeners["tls"] = ListenerConfig(
                bind=f"{self.host}:{self._requested_port}",
                ssl=True,
                cafile=self.certs.ca,
                certfile=self.certs.server.cert,
                keyfile=self.certs.server.key,
            )
        # amqtt needs a listener named "default" and copies its values into every field the
        # others leave at the default, so the plain one (if any) takes that name: a plain
        # listener named otherwise would inherit ssl=True from a TLS default.
        first = next(iter(listeners))
        return BrokerConfig(
            listeners={
                ("default" if name == first else name): cfg for name, cfg in listeners.items()
            },
            plugins={_PLUGIN_PATH: {}},
        )

    async def start(self) -> None:
        """Bind the listeners and start serving; :class:`ConfigError` if a port is taken."""
        if self._broker is not None:
            return
        broker = AwsLikeBroker(self._config(), self)
        # Serve publish() before amqtt binds: a client may connect, and a service answer it,
        # before broker.start() returns (amqtt queues the messages until its delivery loop runs).
        self._broker = broker
        try:
            await broker.start()
        except BrokerError as exc:
            self._broker = None
            # amqtt leaves the listeners it did bind open when a later one fails
            for server in broker._servers.values():
                await server.close_instance()
            raise ConfigError(
                f"could not start the broker on {self.host} (port {self._requested_port}, "
                f"plain_port {self._requested_plain_port}): {exc.__cause__ or exc}; "
                "choose a free port or 0"
            ) from exc
        names = {"default": "plain" if self._requested_plain_port is not None else "tls"}
        for amqtt_name, server in broker._servers.items():
            name = names.get(amqtt_name, amqtt_name)
            self._bound[name] = server.instance.sockets[0].getsockname()[1]
        log.info(
            "broker listening on %s (TLS port %s, plain port %s)",
            self.host,
            self._bound.get("tls"),
            self._bound.get("plain"),
        )

    async def stop(self, *, grace: float = 5.0) -> None:
        """Disconnect every client and close the listeners, releasing the ports.

        Never hangs: connections amqtt has not closed after ``grace`` seconds are cut (logged).
        """
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.shutdown_within(grace)
            log.info("broker stopped")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _bound_port(self, listener: str) -> int:
        if listener not in self._bound:
            raise NotStarted("the broker has not been started; await start() first")
        return self._bound[listener]

    @property
    def port(self) -> int:
        """The bound TLS port (still readable after :meth:`stop`, e.g. to restart on it)."""
        if self.certs is None:
            raise ConfigError("this broker has no TLS listener (certs=None); use plain_port")
        return self._bound_port("tls")

    @property
    def plain_port(self) -> int | None:
        """The bound plain TCP port, or None without a plain listener."""
        if self._requested_plain_port is None:
            return None
        return self._bound_port("plain")

    # -- services --------------------------------------------------------------------------

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False
    ) -> None:
        """Send a broker-originated message (a service's response) to every matching subscriber.

        It reaches explicit ``$aws/...`` subscriptions too. It is queued for delivery when this
        returns, also while :meth:`start` is still running (a client may already be connected).
        ``qos`` is the delivery QoS for every subscriber (amqtt forces it).
        """
        if self._broker is None:
            raise NotStarted("the broker is not running; await start() first")
        if qos not in (0, 1, 2):
            raise ValueError(f"qos {qos} is not an MQTT QoS; use 0, 1 or 2")
        await self._broker.internal_message_broadcast(topic, payload, qos)
        if retain:
            await self._broker.retain_message(None, topic, payload, qos)

    def add_publish_listener(self, listener: PublishListener) -> None:
        """Call ``listener(identity, topic, payload)`` for every accepted client publish."""
        self._listeners.append(listener)

    def stats(self) -> dict[str, int]:
        """Counters: ``connects_denied``, ``publishes_denied``, ``subscribes_denied``."""
        return dict(self._stats)

    # -- decisions and hooks, called by AwsLikeBroker ------------------------------------

    def _decide_connect(
        self,
        client_id: str,
        tls: ssl.SSLObject | None,
        *,
        will_topic: str | None,
        will_retain: bool,
    ) -> tuple[ClientIdentity, str | None]:
        """The identity of a connecting client and why it is refused (None: accepted)."""
        identity, reason = connect_refusal(
            client_id, tls, self._authorizer, will_topic=will_topic, will_retain=will_retain
        )
        if reason is not None:
            self._stats["connects_denied"] += 1
            log.warning(
                "refused connection of %r (certificate %r): %s",
                client_id,
                identity.common_name,
                reason,
            )
        return identity, reason

    def _would_refuse(self, client_id: str, tls: Any) -> bool:
        """Whether a connection would be refused, without counting or logging it."""
        return connect_refusal(client_id, tls, self._authorizer)[1] is not None

    def _allows_publish(self, identity: ClientIdentity, topic: str, *, retain: bool) -> bool:
        """Ask the authorizer; a refusal is logged and counted."""
        if self._authorizer is None or publish_allowed(
            self._authorizer, identity, topic, retain=retain
        ):
            return True
        self._stats["publishes_denied"] += 1
        log.warning(
            "dropped %spublish of %r to %r: not authorised",
            "retained " if retain else "",
            identity.client_id,
            topic,
        )
        return False

    def _count_refused_publish(self, identity: ClientIdentity, topic: str) -> None:
        """Count a publish amqtt refused (invalid or reserved topic); the client is disconnected."""
        self._stats["publishes_denied"] += 1
        log.warning(
            "disconnected %r: it published to %r, which is invalid or reserved",
            identity.client_id,
            topic,
        )

    def _allows_subscribe(self, identity: ClientIdentity, topic_filter: str) -> bool:
        """Ask the authorizer; a refusal is logged and counted (the client gets SUBACK 0x80)."""
        if self._authorizer is None or self._authorizer.authorize_subscribe(identity, topic_filter):
            return True
        self._stats["subscribes_denied"] += 1
        log.warning("refused subscription of %r to %r", identity.client_id, topic_filter)
        return False

    async def _handle_reserved(self, identity: ClientIdentity, topic: str, payload: bytes) -> None:
        """Pass a shadow request to the reserved handler; without one it is dropped."""
        if self._reserved_handler is None:
            log.warning("no service for %r (published by %r); dropped", topic, identity.client_id)
            return
        try:
            await self._reserved_handler(identity, topic, payload)
        except Exception:
            log.exception("the handler of %r failed; the client stays connected", topic)

    async def _notify_listeners(self, identity: ClientIdentity, topic: str, payload: bytes) -> None:
        """Give an accepted publish to every listener; a failing listener is logged, not fatal."""
        for listener in self._listeners:
            try:
                await listener(identity, topic, payload)
            except Exception:
                log.exception("publish listener %r failed on %r", listener, topic)
