"""Who a broker client is, and the hooks that decide what it may do.

The embedded broker identifies a client by the certificate it verified during the TLS handshake
(its subject CN, which for a dev device certificate is the thing name, and its AWS certificate
id) and the MQTT client id. An
:class:`Authorizer` (the emulator's device policy) then decides each connect, publish and
subscribe. :func:`connect_refusal` is the connect decision; :class:`AcceptedConnectionPlugin`
is the amqtt authentication plugin, listed explicitly in the broker's plugin list, that lets
through only the connections that passed it.
"""

from __future__ import annotations

import logging
import re
import ssl
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session
from cryptography import x509
from cryptography.x509.oid import NameOID

from ancsync.emulator.certificates import certificate_id

__all__ = [
    "AcceptedConnectionPlugin",
    "Authorizer",
    "ClientIdentity",
    "Denial",
    "ExplainsDenials",
    "connect_refusal",
    "identity_of",
    "publish_allowed",
    "remember_identity",
]

log = logging.getLogger("ancsync.emulator.auth")

# Where the identity is kept on an amqtt session once its connect was accepted.
_IDENTITY_KEY = "ancsync.identity"
# amqtt replaces an empty client id with `amqtt/` + 16 random letters before any plugin runs;
# this is the only way left to see that the client sent none.
_GENERATED_CLIENT_ID = re.compile(r"amqtt/[A-Za-z0-9]{16}")


@dataclass(frozen=True)
class ClientIdentity:
    """A connected client: its MQTT client id, the CN and the id of its verified certificate.

    ``certificate_id`` is AWS's certificate id (SHA-256 hex of the DER certificate, see
    :func:`ancsync.emulator.certificates.certificate_id`). Both are None on the plain
    (loopback, no TLS) listener.
    """

    client_id: str
    common_name: str | None
    certificate_id: str | None = None


class Authorizer(Protocol):
    """Decides what a client may do (the emulator's stand-in for an AWS IoT policy)."""

    def authorize_connect(self, identity: ClientIdentity) -> str | None:
        """None to accept the connection, else the reason it is refused (logged by the broker)."""

    def authorize_publish(
        self, identity: ClientIdentity, topic: str, *, retain: bool = False
    ) -> bool:
        """Whether ``identity`` may publish to ``topic`` (``retain``: as a retained message)."""

    def authorize_subscribe(self, identity: ClientIdentity, topic_filter: str) -> bool:
        """Whether ``identity`` may subscribe to ``topic_filter``."""


@dataclass(frozen=True)
class Denial:
    """Why an authorizer refused a publish or subscribe.

    ``action`` is the action that was denied (``iot:Publish``, ``iot:RetainPublish``,
    ``iot:Subscribe``, ``iot:Receive``), ``resource`` what it was asked for (an ARN for the
    device policy), ``statement`` the ``Sid`` (or ``#<index>``) of the ``Deny`` statement that
    matched, or None when no ``Allow`` statement covers the request (AWS's implicit deny).
    """

    action: str
    resource: str
    statement: str | None


@runtime_checkable
class ExplainsDenials(Protocol):
    """An :class:`Authorizer` that can also say which action and statement denied a request.

    The broker asks only after the authorizer refused; authorizers without these methods are
    named by their class in the broker's violation records.
    """

    def explain_publish(
        self, identity: ClientIdentity, topic: str, *, retain: bool = False
    ) -> Denial | None:
        """None if the publish is allowed, else why not."""

    def explain_subscribe(self, identity: ClientIdentity, topic_filter: str) -> Denial | None:
        """None if the subscription is allowed, else why not."""


def _peer_identity(client_id: str, tls: ssl.SSLObject | None) -> ClientIdentity:
    """The identity of a client: the CN and id of the certificate the TLS handshake verified."""
    der = tls.getpeercert(binary_form=True) if tls is not None else None
    if not der:
        return ClientIdentity(client_id, None)
    names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = str(names[0].value) if names else None
    return ClientIdentity(client_id, common_name, certificate_id(der))


def identity_of(session: Session) -> ClientIdentity:
    """The identity of a session the broker accepted (kept on the session at connect)."""
    identity = session.attributes.get(_IDENTITY_KEY)
    if isinstance(identity, ClientIdentity):
        return identity
    return _peer_identity(session.client_id or "", session.ssl_object)


def remember_identity(session: Session, identity: ClientIdentity) -> None:
    """Keep the identity of an accepted connection on its session (read by identity_of)."""
    session.attributes[_IDENTITY_KEY] = identity


def publish_allowed(
    authorizer: Authorizer, identity: ClientIdentity, topic: str, *, retain: bool
) -> bool:
    """Ask ``authorizer`` about a publish, retained or not.

    ``retain`` is passed only when set, so an authorizer written without it still decides every
    ordinary publish.
    """
    if retain:
        return authorizer.authorize_publish(identity, topic, retain=True)
    return authorizer.authorize_publish(identity, topic)


def connect_refusal(
    client_id: str,
    tls: ssl.SSLObject | None,
    authorizer: Authorizer | None,
    *,
    will_topic: str | None = None,
    will_retain: bool = False,
) -> tuple[ClientIdentity, str | None]:
    """The identity of a connecting client and why it must be refused (None: accept it).

    ``tls`` is the TLS object of the connection (None on the plain listener). A TLS connection
    needs a verified client certificate (the listener already requires one; this is the second
    lock), every client an id of its own, and then the authorizer decides, the last will
    included: like AWS IoT, the client must be allowed to publish its will (and to retain it,
    for a retained will) on the will topic.
    """
    identity = _peer_identity(client_id, tls)
    if tls is not None and identity.common_name is None:
        return identity, "no verified client certificate with a subject CN; use the device's"
    if not client_id or _GENERATED_CLIENT_ID.fullmatch(client_id):
        return identity, "empty client id; set the client id to the thing name"
    if authorizer is None:
        return identity, None
    reason = authorizer.authorize_connect(identity)
    if reason is not None or will_topic is None:
        return identity, reason
    if publish_allowed(authorizer, identity, will_topic, retain=will_retain):
        return identity, None
    will = "retained last will" if will_retain else "last will"
    return identity, f"the {will} on {will_topic!r} is not allowed; use a topic the policy allows"


class AcceptedConnectionPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt is untyped
    """amqtt authentication plugin: accepts exactly the sessions the broker's connect check passed.

    The check itself runs earlier, before amqtt touches an existing session of the same client
    id (see ``AwsLikeBroker._initialize_client_session``); amqtt refuses every connection
    unless an authentication plugin says yes, and this one says yes only after that check.
    """

    async def authenticate(self, *, session: Session) -> bool | None:
        accepted = isinstance(session.attributes.get(_IDENTITY_KEY), ClientIdentity)
        if not accepted:
            log.warning("refused connection of client %r: not checked", session.client_id)
        return accepted
