"""The emulator's MQTT broker: amqtt, run in the current event loop, with AWS IoT's TLS rules.

:class:`EmbeddedBroker` starts amqtt with an explicit plugin list (only
:class:`~ancsync.emulator.auth.AcceptedConnectionPlugin`, no entry-point discovery) and

- a TLS listener that requires a client certificate chained to the dev CA,
- optionally a plain TCP listener, on a loopback host only,
- an :class:`~ancsync.emulator.auth.Authorizer` deciding every connect (its last will included),
  publish (with its retain flag) and subscribe; a denied publish or subscribe disconnects the
  client, as AWS IoT Core does on MQTT 3.1.1, and is kept as a :class:`PolicyViolation`,
- AWS's 128 KB payload limit (a larger publish disconnects the client) and MQTT 3.1.1's rules
  for the bytes a client sends (a malformed packet or an invalid topic name closes the
  connection),
- reserved AWS request topics (``$aws/things/.../shadow/...(get|update|delete)``, and any a
  service routes with :meth:`EmbeddedBroker.add_reserved_route`) handed to that service instead
  of amqtt closing the client, and
- publish listeners (the rules sink) that see every accepted client publish.

amqtt does not offer all of this publicly: :class:`~ancsync.emulator.amqtt_broker.AwsLikeBroker`
holds every use of its private API, :class:`~ancsync.emulator.decisions.BrokerDecisions` the
decisions (connect, publish, subscribe, routes) and counters, and this module the public
interface. The dependencies go one way: broker -> amqtt_broker -> decisions.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable

import anyio
from amqtt.contexts import BrokerConfig, ListenerConfig
from amqtt.errors import BrokerError
from anyio.abc import TaskStatus

from ancsync.config import is_loopback
from ancsync.emulator.amqtt_broker import (
    DEFAULT_SESSION_EXPIRY,
    MAX_SESSION_EXPIRY,
    AwsLikeBroker,
    server_tls_context,
)
from ancsync.emulator.auth import AcceptedConnectionPlugin, Authorizer, ClientIdentity
from ancsync.emulator.certs import DevCerts
from ancsync.emulator.component import EmulatorComponent
from ancsync.emulator.decisions import (
    BrokerDecisions,
    CertificateDisconnect,
    PolicyViolation,
    PublishListener,
    ReservedTopicHandler,
    TopicMatcher,
)
from ancsync.errors import ConfigError, NotStarted
from ancsync.topics import is_shadow_request_topic

__all__ = [
    "DEFAULT_SESSION_EXPIRY",
    "MAX_SESSION_EXPIRY",
    "Authorizer",
    "CertificateDisconnect",
    "ClientIdentity",
    "EmbeddedBroker",
    "PolicyViolation",
    "PublishListener",
    "ReservedTopicHandler",
    "TopicMatcher",
]

log = logging.getLogger("ancsync.emulator.broker")

_PLUGIN_PATH = f"{AcceptedConnectionPlugin.__module__}.{AcceptedConnectionPlugin.__qualname__}"
# The end of the stop deadline kept for cutting the connections amqtt did not close in time.
_CUTTING_TIME = 0.5


class EmbeddedBroker(EmulatorComponent):
    """An MQTT broker with AWS IoT's TLS and authorisation rules, in the current event loop.

    ``certs`` enables the TLS listener on ``host:port`` (port 0 picks a free port; read the bound
    one from :attr:`port` once running); ``None`` means no TLS listener. ``plain_port`` adds an
    unencrypted listener, allowed only on a loopback ``host``. Without an ``authorizer`` every
    client with a valid certificate may do anything. ``reserved_handler`` answers the AWS shadow
    request topics (see :meth:`add_reserved_route`). A persistent session (``clean_session``
    false) is kept ``session_expiry`` seconds after its client disconnected (AWS IoT Core's
    default: one hour), measured with ``clock`` (tests pass a fake one). Stopping disconnects
    every client and releases the ports within ``stop_timeout`` seconds.

    A :class:`~ancsync.lifecycle.Component`: ``async with EmbeddedBroker(certs) as broker:``,
    ``await task_group.start(broker.run)``, or :meth:`start` and :meth:`stop` from any task.
    """

    name = "broker"

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
        session_expiry: float = DEFAULT_SESSION_EXPIRY,
        clock: Callable[[], float] = time.monotonic,
        stop_timeout: float = 5.0,
    ) -> None:
        super().__init__(stop_timeout=stop_timeout)
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
        if not session_expiry > 0:
            raise ConfigError(
                f"session_expiry {session_expiry} is not a duration; use seconds > 0 "
                f"(AWS IoT Core: {DEFAULT_SESSION_EXPIRY:g} by default, "
                f"up to {MAX_SESSION_EXPIRY:g})"
            )
        for name, value in (("port", port), ("plain_port", plain_port)):
            if value is not None and not 0 <= value <= 65535:
                raise ConfigError(f"{name} {value} is not a TCP port; use 0..65535 (0: any free)")
        self.certs = certs
        self.host = host
        self.max_tls_version = max_tls_version
        self.session_expiry = session_expiry
        self._clock = clock
        self._requested_port = port
        self._requested_plain_port = plain_port
        self._decisions = BrokerDecisions(authorizer)
        if reserved_handler is not None:
            self._decisions.add_reserved_route(is_shadow_request_topic, reserved_handler)
        self._broker: AwsLikeBroker | None = None
        self._bound: dict[str, int] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def _tls_listener(self, certs: DevCerts) -> ListenerConfig:
        return ListenerConfig(
            bind=f"{self.host}:{self._requested_port}",
            ssl=True,
            cafile=certs.ca,
            certfile=certs.server.cert,
            keyfile=certs.server.key,
        )

    def tls_context(self) -> ssl.SSLContext:
        """A server TLS context like the TLS listener's: the server certificate, a client
        certificate required, chained to the dev CA and within its validity, TLS 1.2 up to
        ``max_tls_version``. A test can run a handshake against it to see why a client
        certificate is refused (the client itself sees only a closed connection)."""
        if self.certs is None:
            raise ConfigError("this broker has no TLS listener (certs=None)")
        return server_tls_context(self._tls_listener(self.certs), self.max_tls_version)

    def _config(self) -> BrokerConfig:
        listeners: dict[str, ListenerConfig] = {}
        if self._requested_plain_port is not None:
            listeners["plain"] = ListenerConfig(
                bind=f"{self.host}:{self._requested_plain_port}", ssl=False
            )
        if self.certs is not None:
            listeners["tls"] = self._tls_listener(self.certs)
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

    async def _serve(self, task_status: TaskStatus[None]) -> None:
        """Bind the listeners and serve; :class:`ConfigError` if a port is taken."""
        broker = AwsLikeBroker(
            self._config(),
            self._decisions,
            max_tls_version=self.max_tls_version,
            session_expiry=self.session_expiry,
            clock=self._clock,
        )
        # Serve publish() before amqtt binds: a client may connect, and a service answer it,
        # before broker.start() returns (amqtt queues the messages until its delivery loop runs).
        self._broker = broker
        try:
            await broker.start()
        except BrokerError as exc:
            raise ConfigError(
                f"could not start the broker on {self.host} (port {self._requested_port}, "
                f"plain_port {self._requested_plain_port}): {exc.__cause__ or exc}; "
                "choose a free port or 0"
            ) from exc
        names = {"default": "plain" if self._requested_plain_port is not None else "tls"}
        for amqtt_name, port in broker.bound_ports().items():
            self._bound[names.get(amqtt_name, amqtt_name)] = port
        log.info(
            "broker listening on %s (TLS port %s, plain port %s)",
            self.host,
            self._bound.get("tls"),
            self._bound.get("plain"),
        )
        task_status.started()
        await anyio.sleep_forever()  # amqtt serves in tasks of its own

    async def _shutdown(self) -> None:
        """Disconnect every client and close the listeners, releasing the ports.

        amqtt's own shutdown gets all of :attr:`stop_timeout` but the last half second; the
        connections it has not closed by then are cut (logged). After a failed start, the
        listeners that were bound are closed.
        """
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.shutdown_within(max(0.0, self.stop_timeout - _CUTTING_TIME))
            log.info("broker stopped")

    def _bound_port(self, listener: str) -> int:
        if listener not in self._bound:
            raise NotStarted("the broker has not been started; run it (async with) first")
        return self._bound[listener]

    @property
    def port(self) -> int:
        """The bound TLS port (still readable once stopped, e.g. to restart on it)."""
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
        returns, also while the broker is still starting (a client may already be connected).
        ``qos`` is the delivery QoS for every subscriber (amqtt forces it): 0 or 1, as AWS IoT
        Core never delivers with QoS 2.
        """
        if self._broker is None:
            raise NotStarted("the broker is not running; run it (async with) first")
        if qos not in (0, 1):
            raise ValueError(f"qos {qos} is not served: AWS IoT Core supports QoS 0 and 1 only")
        await self._broker.internal_message_broadcast(topic, payload, qos)
        if retain:
            await self._broker.retain_message(None, topic, payload, qos)

    def add_publish_listener(self, listener: PublishListener) -> None:
        """Call ``listener(identity, topic, payload)`` for every accepted client publish."""
        self._decisions.add_publish_listener(listener)

    def add_reserved_route(self, matches: TopicMatcher, handler: ReservedTopicHandler) -> None:
        """Hand client publishes on the ``$`` topics ``matches`` accepts to ``handler``.

        Publishes are authorised first, then given to the first route that matches and not
        broadcast. ``reserved_handler=`` is the route of the shadow request topics.
        """
        self._decisions.add_reserved_route(matches, handler)

    async def publish_to_client(
        self, identity: ClientIdentity, topic: str, payload: bytes, *, qos: int = 1
    ) -> bool:
        """Send a service's reply to the connection of ``identity`` alone, if it subscribed to
        a filter matching ``topic`` (AWS answers fleet provisioning requests on the connection
        that sent them). Returns whether it was queued for that client."""
        if self._broker is None:
            raise NotStarted("the broker is not running; run it (async with) first")
        if qos not in (0, 1):
            raise ValueError(f"qos {qos} is not served: AWS IoT Core supports QoS 0 and 1 only")
        return self._broker.publish_to_client(identity, topic, payload, qos)

    async def disconnect_certificate(self, certificate_id: str, status: str) -> int:
        """Drop every connection made with ``certificate_id`` at once (its certificate is now
        ``status``, e.g. REVOKED), as a policy violation drops one: recorded in
        :meth:`certificate_disconnects` and counted (``certificate_disconnects``). Returns how
        many connections were dropped (0 when the broker is not running)."""
        if self._broker is None:
            return 0
        return await self._broker.disconnect_certificate(certificate_id, status)

    def certificate_disconnects(self) -> list[CertificateDisconnect]:
        """The connections dropped because their certificate left ACTIVE, oldest first."""
        return self._decisions.certificate_disconnects()

    def stats(self) -> dict[str, int]:
        """Counters: ``mqtt5_refused``, ``connects_denied``, ``publishes_denied`` (the policy,
        a reserved or invalid topic), ``subscribes_denied``, ``qos2_publishes_ignored``,
        ``qos2_subscribes_ignored``, ``publishes_too_large`` (payload over 128 KB),
        ``malformed_packets`` (bytes MQTT 3.1.1 forbids: the connection closed) and
        ``certificate_disconnects`` (connections dropped when their certificate was revoked
        or deactivated)."""
        return self._decisions.stats()

    def violations(self) -> list[PolicyViolation]:
        """The publishes and subscribes the authorizer denied, oldest first (the last 1,000).

        Each names the client id and certificate, the topic or filter, the action and resource
        denied and the policy statement that denied it; the client was disconnected for it.
        """
        return self._decisions.violations()
