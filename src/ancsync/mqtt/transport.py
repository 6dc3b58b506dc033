"""The transport seam: the few MQTT operations the session needs, and nothing else.

The session talks to the broker only through :class:`Transport` (connect, publish, subscribe,
unsubscribe, messages, close), one instance per connection attempt. This module holds only that
interface and the values it passes; a backend lives in a module of its own:
:class:`ancsync.mqtt.paho_transport.PahoTransport` (paho-mqtt) is the real one and
:class:`ancsync.mqtt.crt_transport.CrtTransport` (awscrt, the ``crt`` extra) is the C one and
:class:`ancsync.testing.FakeTransport` is an in-memory stand-in for unit tests. docs/transport.md
lists what a backend must do.

A backend translates every exception of its library (and of :mod:`ssl` and :mod:`socket`) into an
:mod:`ancsync.errors` class, at one place in its own module: :class:`~ancsync.errors.TLSError`
and :class:`~ancsync.errors.NotAuthorized` (retrying cannot help), or
:class:`~ancsync.errors.ConnectError` (the network; retry).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = [
    "SUBSCRIBE_FAILURE",
    "ConnectOptions",
    "DropCounting",
    "IncomingMessage",
    "TlsFiles",
    "Transport",
    "Will",
]

#: The SUBACK return code of a refused subscription (MQTT 3.1.1).
SUBSCRIBE_FAILURE = 0x80


@dataclass(frozen=True)
class Will:
    """The last will: published by the broker when the connection dies without a DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files behind :attr:`ConnectOptions.ssl_context`, for a backend that does its own
    TLS (awscrt) and cannot take an :class:`ssl.SSLContext`. ``root_ca_path=None`` means the
    system trust store. The files were already checked when the context was built."""

    cert_path: Path
    key_path: Path
    root_ca_path: Path | None = None


@dataclass(frozen=True)
class ConnectOptions:
    """Everything one connect attempt needs. ``ssl_context=None`` means plaintext MQTT.

    ``tls_files`` names the files the context was built from (set whenever ``ssl_context`` is,
    by :class:`~ancsync.IoTConnection`); a backend on :mod:`ssl` ignores it.
    """

    host: str
    port: int
    client_id: str
    keep_alive: int
    ssl_context: ssl.SSLContext | None
    clean_session: bool = True
    will: Will | None = None
    connect_timeout: float = 10.0
    tls_files: TlsFiles | None = None


@dataclass(frozen=True)
class IncomingMessage:
    """A PUBLISH received from the broker."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


class Transport(Protocol):
    """One MQTT connection. Every method raises :class:`~ancsync.errors.ConnectError` (or a
    subclass) when the connection fails or is lost; none raises a backend exception."""

    async def connect(self, options: ConnectOptions) -> None:
        """Connect and wait for a successful CONNACK."""

    def publish(
        self, topic: str, payload: bytes, qos: int, retain: bool, on_done: Callable[[], None]
    ) -> None:
        """Send a PUBLISH now; call ``on_done()`` on its PUBACK (QoS 1) or once written (QoS 0).

        Synchronous, so the wire order is the call order and one task can keep many publishes
        in flight. ``on_done`` runs in the event loop's thread and must not block; it is never
        called if the connection is lost first (``messages()`` reports the loss).
        """

    async def subscribe(self, filters: Sequence[tuple[str, int]]) -> list[int]:
        """One SUBSCRIBE; returns the granted QoS or :data:`SUBSCRIBE_FAILURE` per filter."""
        ...

    async def unsubscribe(self, filters: Sequence[str]) -> None:
        """One UNSUBSCRIBE for ``filters``."""

    def messages(self) -> AsyncIterator[IncomingMessage]:
        """Incoming messages, until the connection is lost (then ``ConnectError``)."""
        ...

    async def close(self) -> None:
        """Disconnect cleanly if still connected; never raises. Safe to call twice."""


@runtime_checkable
class DropCounting(Protocol):
    """Optional for a :class:`Transport`: it counts the incoming messages it dropped.

    A backend hands incoming messages to :meth:`Transport.messages` through a bounded queue;
    when the reader falls that far behind, the oldest are dropped (they were acknowledged to the
    broker already) and counted here. ``isinstance(transport, DropCounting)`` tells whether a
    transport has the counter.
    """

    @property
    def dropped(self) -> int:
        """Incoming messages dropped, oldest first, because the reader fell behind."""
        ...
