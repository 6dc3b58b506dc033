"""Who a broker client is, and the hooks that decide what it may do.

The embedded broker identifies a client by the certificate it verified during the TLS handshake
(its subject CN, which for a device is the thing name) and the MQTT client id. An
:class:`Authorizer` (the emulator's device policy) then decides each connect, publish and
subscribe. :class:`CertificateAuthPlugin` is the amqtt authentication plugin that makes the
connect decision; it is listed explicitly in the broker's plugin list.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session
from cryptography import x509
from cryptography.x509.oid import NameOID

__all__ = [
    "Authorizer",
    "CertificateAuthPlugin",
    "ClientIdentity",
    "connect_refusal",
    "identity_of",
]

log = logging.getLogger("ancsync.emulator.auth")

# Where the identity is kept on an amqtt session once the connect was accepted.
_IDENTITY_KEY = "ancsync.identity"
# amqtt replaces an empty client id with `amqtt/` + 16 random letters before any plugin runs;
# this is the only way left to see that the client sent none.
_GENERATED_CLIENT_ID = re.compile(r"amqtt/[A-Za-z0-9]{16}")


@dataclass(frozen=True)
class ClientIdentity:
    """A connected client: its MQTT client id and the CN of its verified certificate.

    ``common_name`` is None on the plain (loopback, no TLS) listener.
    """

    client_id: str
    common_name: str | None


class Authorizer(Protocol):
    """Decides what a client may do (the emulator's stand-in for an AWS IoT policy)."""

    def authorize_connect(self, identity: ClientIdentity) -> str | None:
        """None to accept the connection, else the reason it is refused (logged by the broker)."""

    def authorize_publish(self, identity: ClientIdentity, topic: str) -> bool:
        """Whether ``identity`` may publish to ``topic``."""

    def authorize_subscribe(self, identity: ClientIdentity, topic_filter: str) -> bool:
        """Whether ``identity`` may subscribe to ``topic_filter``."""


def _peer_common_name(session: Session) -> str | None:
    """CN of the certificate the TLS handshake verified, or None if there is none."""
    if session.ssl_object is None:
        return None
    der = session.ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def identity_of(session: Session) -> ClientIdentity:
    """The identity of an accepted session (computed at connect, kept on the session)."""
    identity = session.attributes.get(_IDENTITY_KEY)
    if isinstance(identity, ClientIdentity):
        return identity
    return ClientIdentity(client_id=session.client_id or "", common_name=_peer_common_name(session))


def connect_refusal(session: Session, authorizer: Authorizer | None) -> str | None:
    """Why the connection of ``session`` must be refused, or None to accept it.

    A TLS session needs a verified client certificate (the listener already requires one; this
    is the second lock), every session a client id of its own, and then the authorizer decides.
    """
    identity = ClientIdentity(
        client_id=session.client_id or "", common_name=_peer_common_name(session)
    )
    if session.ssl_object is not None and identity.common_name is None:
        return "no verified client certificate with a subject CN; connect with the device's cert"
    if not identity.client_id or _GENERATED_CLIENT_ID.fullmatch(identity.client_id):
        return "empty client id; set the client id to the thing name"
    if authorizer is not None:
        reason = authorizer.authorize_connect(identity)
        if reason is not None:
            return reason
    session.attributes[_IDENTITY_KEY] = identity
    return None


class CertificateAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt is untyped
    """amqtt authentication plugin: asks ``decide(session)`` and refuses with CONNACK 5.

    The broker passes ``decide`` in the plugin's configuration, so each broker instance keeps
    its own authorizer and counters (amqtt builds plugins itself from a dotted path).
    """

    @dataclass
    class Config:
        """``decide(session)`` returns None to accept or the reason to refuse."""

        decide: Any = None

    async def authenticate(self, *, session: Session) -> bool | None:
        decide: Callable[[Session], str | None] = self.config.decide
        reason = decide(session)
        if reason is None:
            return True
        log.warning("refused connection of client %r: %s", session.client_id, reason)
        return False
