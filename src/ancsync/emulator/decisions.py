"""What the embedded broker decides about each client action, and what it counts.

:class:`BrokerDecisions` is the interface between the two halves of the broker: the amqtt
adapter (:mod:`ancsync.emulator.amqtt_broker`) asks it at every connect, publish and subscribe,
and :class:`~ancsync.emulator.broker.EmbeddedBroker` fills it (authorizer, reserved-topic routes,
publish listeners) and reads its counters. Both depend on this module; it depends on neither,
and not on amqtt's internals.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ancsync.codec import MAX_PAYLOAD_BYTES
from ancsync.emulator.auth import (
    Authorizer,
    ClientIdentity,
    Denial,
    ExplainsDenials,
    connect_refusal,
    publish_allowed,
)
from ancsync.topics import is_shadow_request_topic

__all__ = [
    "MAX_VIOLATIONS_KEPT",
    "BrokerDecisions",
    "CertificateDisconnect",
    "PolicyViolation",
    "PublishListener",
    "ReservedTopicHandler",
    "TopicMatcher",
]

log = logging.getLogger("ancsync.emulator.decisions")


class ReservedTopicHandler(Protocol):
    """Receives a client publish on a reserved AWS request topic (e.g. the shadow service)."""

    async def __call__(self, identity: ClientIdentity, topic: str, payload: bytes) -> None: ...


PublishListener = Callable[[ClientIdentity, str, bytes], Awaitable[None]]
"""Sees every accepted client publish on a normal topic, in arrival order per client."""

TopicMatcher = Callable[[str], bool]
"""Whether a reserved (``$``) topic is one a service answers."""


# The violation records kept (the oldest go first); the counters in stats() count every one.
MAX_VIOLATIONS_KEPT = 1000


@dataclass(frozen=True)
class PolicyViolation:
    """A publish or subscribe the authorizer denied; the broker disconnected the client for it.

    ``topic`` is the topic of a publish or the filter of a subscribe; ``action``, ``resource``
    and ``statement`` say what denied it (see :class:`~ancsync.emulator.auth.Denial`:
    ``statement`` None is AWS's implicit deny, no ``Allow`` covers the request).
    ``at`` is the time of the refusal (epoch seconds).
    """

    client_id: str
    common_name: str | None
    request: Literal["publish", "subscribe"]
    topic: str
    retain: bool
    action: str
    resource: str
    statement: str | None
    at: float

    def describe(self) -> str:
        """One line for a log or a console: who, what, and which statement."""
        what = "retained publish" if self.retain else self.request
        by = (
            f"statement {self.statement!r} denies it"
            if self.statement is not None
            else "no Allow statement covers it (implicit deny)"
        )
        return (
            f"{what} of {self.client_id!r} (certificate {self.common_name!r}) on "
            f"{self.topic!r}: {self.action} on {self.resource}: {by}"
        )


@dataclass(frozen=True)
class CertificateDisconnect:
    """A connection the broker dropped because its certificate left ``ACTIVE``.

    ``status`` is the certificate's new status (``REVOKED``, ``INACTIVE``); ``at`` the time of
    the disconnect (epoch seconds).
    """

    client_id: str
    common_name: str | None
    certificate_id: str
    status: str
    at: float

    def describe(self) -> str:
        """One line for a log or a console: who, and what became of its certificate."""
        return (
            f"{self.client_id!r} (certificate {self.common_name!r}, id "
            f"{self.certificate_id[:12]}…): the certificate is now {self.status.lower()}"
        )


class BrokerDecisions:
    """The connect, publish and subscribe decisions of one broker, its routes and its counters.

    Without an ``authorizer`` every client that passed TLS may do anything. A publish on a ``$``
    topic goes to the first route whose matcher accepts the topic; an AWS shadow request topic
    without a route is dropped (logged), any other ``$`` topic is refused.
    """

    def __init__(self, authorizer: Authorizer | None = None) -> None:
        self.authorizer = authorizer
        self._routes: list[tuple[TopicMatcher, ReservedTopicHandler]] = []
        self._listeners: list[PublishListener] = []
        self._stats = dict.fromkeys(
            (
                "mqtt5_refused",
                "connects_denied",
                "publishes_denied",
                "subscribes_denied",
                "qos2_publishes_ignored",
                "qos2_subscribes_ignored",
                "publishes_too_large",
                "malformed_packets",
                "certificate_disconnects",
            ),
            0,
        )
        self._violations: deque[PolicyViolation] = deque(maxlen=MAX_VIOLATIONS_KEPT)
        self._certificate_disconnects: deque[CertificateDisconnect] = deque(
            maxlen=MAX_VIOLATIONS_KEPT
        )

    def add_reserved_route(self, matches: TopicMatcher, handler: ReservedTopicHandler) -> None:
        """Hand client publishes on the ``$`` topics ``matches`` accepts to ``handler``."""
        self._routes.append((matches, handler))

    def add_publish_listener(self, listener: PublishListener) -> None:
        """Call ``listener(identity, topic, payload)`` for every accepted client publish."""
        self._listeners.append(listener)

    def stats(self) -> dict[str, int]:
        """Counters: ``mqtt5_refused``, ``connects_denied``, ``publishes_denied``,
        ``subscribes_denied``, ``qos2_publishes_ignored``, ``qos2_subscribes_ignored``,
        ``publishes_too_large``, ``malformed_packets``, ``certificate_disconnects``."""
        return dict(self._stats)

    def certificate_disconnects(self) -> list[CertificateDisconnect]:
        """The connections dropped because their certificate left ACTIVE, oldest first (the
        last :data:`MAX_VIOLATIONS_KEPT`)."""
        return list(self._certificate_disconnects)

    def record_certificate_disconnect(
        self, identity: ClientIdentity, status: str
    ) -> CertificateDisconnect:
        """Record, log and count a connection dropped for its certificate's new ``status``
        (the broker then ends it as it ends one for a policy violation)."""
        record = CertificateDisconnect(
            identity.client_id,
            identity.common_name,
            identity.certificate_id or "",
            status,
            time.time(),
        )
        self._certificate_disconnects.append(record)
        self._stats["certificate_disconnects"] += 1
        log.warning("disconnected a client whose certificate left ACTIVE: %s", record.describe())
        return record

    def violations(self) -> list[PolicyViolation]:
        """The publishes and subscribes the authorizer denied, oldest first (the last
        :data:`MAX_VIOLATIONS_KEPT`)."""
        return list(self._violations)

    def _denial(
        self, identity: ClientIdentity, request: str, topic: str, *, retain: bool
    ) -> Denial | None:
        """Why the authorizer refuses the request, or None if it allows it."""
        authorizer = self.authorizer
        if authorizer is None:
            return None
        if request == "publish":
            if publish_allowed(authorizer, identity, topic, retain=retain):
                return None
            action, resource = "iot:Publish", f"topic/{topic}"
        else:
            if authorizer.authorize_subscribe(identity, topic):
                return None
            action, resource = "iot:Subscribe", f"topicfilter/{topic}"
        if isinstance(authorizer, ExplainsDenials):
            explained = (
                authorizer.explain_publish(identity, topic, retain=retain)
                if request == "publish"
                else authorizer.explain_subscribe(identity, topic)
            )
            if explained is not None:
                return explained
        return Denial(action, resource, f"{type(authorizer).__name__}.authorize_{request}")

    def _violation(
        self,
        identity: ClientIdentity,
        request: Literal["publish", "subscribe"],
        topic: str,
        *,
        retain: bool = False,
    ) -> PolicyViolation | None:
        denial = self._denial(identity, request, topic, retain=retain)
        if denial is None:
            return None
        violation = PolicyViolation(
            identity.client_id,
            identity.common_name,
            request,
            topic,
            retain,
            denial.action,
            denial.resource,
            denial.statement,
            time.time(),
        )
        self._violations.append(violation)
        self._stats["publishes_denied" if request == "publish" else "subscribes_denied"] += 1
        log.warning("disconnected a client for a policy violation: %s", violation.describe())
        return violation

    # -- connect ---------------------------------------------------------------------------

    def decide_connect(
        self,
        client_id: str,
        tls: ssl.SSLObject | None,
        *,
        will_topic: str | None,
        will_retain: bool,
    ) -> tuple[ClientIdentity, str | None]:
        """The identity of a connecting client and why it is refused (None: accepted)."""
        identity, reason = connect_refusal(
            client_id, tls, self.authorizer, will_topic=will_topic, will_retain=will_retain
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

    def count_refused_protocol(self, peer: object) -> None:
        """Count an MQTT 5 CONNECT, refused with reason 0x84 (the emulator speaks 3.1.1 only)."""
        self._stats["mqtt5_refused"] += 1
        log.warning(
            "refused an MQTT 5 connection from %s: the emulator speaks MQTT 3.1.1 only "
            "(AWS IoT Core also speaks MQTT 5); connect with MQTT 3.1.1",
            peer,
        )

    def would_refuse(self, client_id: str, tls: Any) -> bool:
        """Whether a connection would be refused, without counting or logging it."""
        return connect_refusal(client_id, tls, self.authorizer)[1] is not None

    # -- publish ---------------------------------------------------------------------------

    def publish_violation(
        self, identity: ClientIdentity, topic: str, *, retain: bool
    ) -> PolicyViolation | None:
        """Ask the authorizer; a refusal is recorded, logged and counted (the broker then
        disconnects the client, as AWS IoT Core does on MQTT 3.1.1)."""
        return self._violation(identity, "publish", topic, retain=retain)

    def count_qos2_publish(self, identity: ClientIdentity, topic: str) -> None:
        """Count a QoS 2 publish, left unanswered (AWS IoT Core: QoS 2 gets no ack)."""
        self._stats["qos2_publishes_ignored"] += 1
        log.warning(
            "ignored a QoS 2 publish of %r to %r: AWS IoT Core supports QoS 0 and 1 only "
            "(no PUBREC is sent and the message is not delivered); publish with QoS 1",
            identity.client_id,
            topic,
        )

    def count_refused_publish(
        self, identity: ClientIdentity, topic: str, why: str = "which is invalid or reserved"
    ) -> None:
        """Count a publish refused for its topic (invalid, reserved, not UTF-8); the client is
        disconnected."""
        self._stats["publishes_denied"] += 1
        log.warning("disconnected %r: it published to %r, %s", identity.client_id, topic, why)

    def count_too_large_publish(self, identity: ClientIdentity, topic: str, size: int) -> None:
        """Count a publish over AWS IoT Core's 128 KB payload limit; the client is disconnected."""
        self._stats["publishes_too_large"] += 1
        log.warning(
            "disconnected %r: its publish to %r is too large: %d bytes of payload, AWS IoT Core "
            "takes at most %d (128 KB); split the message",
            identity.client_id,
            topic,
            size,
            MAX_PAYLOAD_BYTES,
        )

    def count_malformed_packet(self, who: str, problem: str) -> None:
        """Count bytes MQTT 3.1.1 forbids from a client (garbage); the connection is closed."""
        self._stats["malformed_packets"] += 1
        log.warning("closed the connection of %s: it sent %s (not MQTT 3.1.1)", who, problem)

    def _route(self, topic: str) -> ReservedTopicHandler | None:
        for matches, handler in self._routes:
            if matches(topic):
                return handler
        return None

    def serves_reserved(self, topic: str) -> bool:
        """Whether a publish on the ``$`` topic ``topic`` goes to a service, not to amqtt."""
        return self._route(topic) is not None or is_shadow_request_topic(topic)

    async def serve_reserved(self, identity: ClientIdentity, topic: str, payload: bytes) -> None:
        """Pass a reserved-topic publish to its route; a failing handler is logged, not fatal."""
        handler = self._route(topic)
        if handler is None:
            log.warning("no service for %r (published by %r); dropped", topic, identity.client_id)
            return
        try:
            await handler(identity, topic, payload)
        except Exception:
            log.exception("the handler of %r failed; the client stays connected", topic)

    async def notify_listeners(self, identity: ClientIdentity, topic: str, payload: bytes) -> None:
        """Give an accepted publish to every listener; a failing listener is logged, not fatal."""
        for listener in self._listeners:
            try:
                await listener(identity, topic, payload)
            except Exception:
                log.exception("publish listener %r failed on %r", listener, topic)

    # -- subscribe -------------------------------------------------------------------------

    def count_qos2_subscribe(self, identity: ClientIdentity, topic_filters: list[str]) -> None:
        """Count a SUBSCRIBE asking for QoS 2, left unanswered (AWS: QoS 2 gets no ack)."""
        self._stats["qos2_subscribes_ignored"] += 1
        log.warning(
            "ignored a SUBSCRIBE of %r asking QoS 2 (filters %s): AWS IoT Core supports QoS 0 "
            "and 1 only (no SUBACK is sent and nothing is subscribed); subscribe with QoS 1",
            identity.client_id,
            topic_filters,
        )

    def subscribe_violation(
        self, identity: ClientIdentity, topic_filter: str
    ) -> PolicyViolation | None:
        """Ask the authorizer; a refusal is recorded, logged and counted (the broker then
        disconnects the client without a SUBACK, as AWS IoT Core does on MQTT 3.1.1)."""
        return self._violation(identity, "subscribe", topic_filter)
