"""The transport seam: the few MQTT operations the session needs, and their aiomqtt implementation.

The session talks to the broker only through :class:`Transport` (connect, publish, subscribe,
unsubscribe, messages, close), one instance per connection attempt. :class:`AiomqttTransport` is
the real one; :class:`ancsync.testing.FakeTransport` is an in-memory stand-in for unit tests.

Every aiomqtt, paho and ssl exception is translated into an :mod:`ancsync.errors` class here and
nowhere else: :class:`~ancsync.errors.TLSError` and :class:`~ancsync.errors.NotAuthorized` (retrying
cannot help), or :class:`~ancsync.errors.ConnectError` (the network; retry).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import aiomqtt
import anyio
import anyio.lowlevel
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.client import MQTT_ERR_SUCCESS, error_string
from paho.mqtt.reasoncodes import ReasonCode

from ancsync.errors import ConnectError, NotAuthorized, TLSError

__all__ = [
    "SUBSCRIBE_FAILURE",
    "AiomqttTransport",
    "ConnectOptions",
    "IncomingMessage",
    "Transport",
    "Will",
]

log = logging.getLogger("ancsync.mqtt.transport")

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
class ConnectOptions:
    """Everything one connect attempt needs. ``ssl_context=None`` means plaintext MQTT."""

    host: str
    port: int
    client_id: str
    keep_alive: int
    ssl_context: ssl.SSLContext | None
    clean_session: bool = True
    will: Will | None = None
    connect_timeout: float = 10.0


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


# --- error mapping (the one place) ---------------------------------------------------------

_NOT_AUTHORIZED = {"Not authorized", "Bad user name or password"}
# OpenSSL reasons that mean "a certificate was refused", as opposed to a broken network.
_CERTIFICATE_REASONS = ("CERTIFICATE", "UNKNOWN_CA", "BAD_CERT", "HANDSHAKE_FAILURE")


def _refused(code: int | ReasonCode | None, host: str) -> ConnectError:
    name = code.getName() if isinstance(code, ReasonCode) else str(code)
    if name in _NOT_AUTHORIZED:
        return NotAuthorized(
            f"the broker at {host} refused the connection: {name}. Check that the certificate "
            "is active, attached to the thing, and has a policy allowing iot:Connect for this "
            "client id (the thing name)"
        )
    error = ConnectError(f"the broker at {host} refused the connection: {name}")
    error.permanent = name in {"Client identifier not valid", "Unsupported protocol version"}
    return error


class _ClosedBeforeConnack(aiomqtt.MqttError):
    """The connection ended after the TLS handshake but before the CONNACK."""

    def __init__(self, detail: str | None) -> None:
        super().__init__(detail)
        self.detail = detail


def _connect_failure(exc: BaseException, host: str, port: int) -> ConnectError:
    """Translate what aiomqtt raised from a connect into an ancsync error."""
    if isinstance(exc, MqttConnectError):
        return _refused(exc.rc, host)
    where = f"{host}:{port}"
    if isinstance(exc, _ClosedBeforeConnack):
        detail = exc.detail or "no reason given"
        if any(part in detail.upper() for part in _CERTIFICATE_REASONS):
            # TLS 1.3 reports a refused client certificate only after the handshake.
            return TLSError(
                f"{where} refused the client certificate ({detail}); check that cert_path is "
                "a certificate registered and active in AWS IoT (or issued by the emulator's CA)"
            )
        return ConnectError(
            f"{where} closed the connection before accepting it ({detail}); on AWS IoT this "
            "usually means the certificate is inactive or its policy does not allow "
            "iot:Connect for this client id (the thing name)"
        )
    # aiomqtt raises MqttError(str(exc)) from None: the original is still in __context__.
    cause = exc.__context__ if isinstance(exc, aiomqtt.MqttError) and exc.__context__ else exc
    if isinstance(cause, ssl.SSLCertVerificationError):
        return TLSError(
            f"the server certificate of {where} failed verification ({cause.verify_message}); "
            "check root_ca_path (AmazonRootCA1.pem for AWS IoT, the emulator's ca.pem locally) "
            "and that the endpoint is the host name the certificate was issued for"
        )
    if isinstance(cause, ssl.SSLError) and any(
        part in (cause.reason or "") for part in _CERTIFICATE_REASONS
    ):
        return TLSError(
            f"the TLS handshake with {where} failed: the broker refused the client certificate "
            f"({cause.reason}); check that cert_path is a certificate registered and active in "
            "AWS IoT (or issued by the emulator's CA)"
        )
    if isinstance(cause, socket.gaierror):
        return ConnectError(f"cannot resolve {host} ({cause.strerror}); check the endpoint")
    if isinstance(cause, ConnectionRefusedError):
        return ConnectError(f"{where} refused the TCP connection; is the broker running?")
    if isinstance(cause, TimeoutError) and not str(cause):
        return ConnectError(f"no answer from {where} within the connect timeout")
    if isinstance(cause, OSError | TimeoutError):
        return ConnectError(f"cannot connect to {where}: {cause}")
    return ConnectError(f"cannot connect to {where}: {exc}")


def _lost(exc: BaseException) -> ConnectError:
    cause = exc.__cause__ or exc.__context__
    return ConnectError(f"connection lost: {cause or exc}")


# --- the aiomqtt implementation ------------------------------------------------------------


class _PahoLog(logging.LoggerAdapter[logging.Logger]):
    """paho's logger for one connection: forwards to ``ancsync.mqtt.paho`` and remembers the
    last error, because paho reports a socket error (such as a TLS alert) only in its log."""

    last_error: str | None = None

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level >= logging.ERROR:
            self.last_error = str(msg) % args if args else str(msg)
        self.logger.log(level, msg, *args, **kwargs)  # paho logs every packet: stay lean


def _fail_fast_before_connack(client: aiomqtt.Client, paho_log: _PahoLog) -> None:
    """End the CONNACK wait when the connection drops first.

    aiomqtt ignores a disconnect before CONNACK and waits out its timeout; a broker that refuses
    the client certificate after a TLS 1.3 handshake, or AWS IoT refusing a CONNECT, closes the
    connection exactly there. aiomqtt-private ``_connected`` is the future its connect awaits.
    """
    paho = client._client
    aiomqtt_on_disconnect = paho.on_disconnect

    def on_disconnect(*args: Any, **kwargs: Any) -> None:
        if not client._connected.done():
            client._connected.set_exception(_ClosedBeforeConnack(paho_log.last_error))
        if aiomqtt_on_disconnect is not None:
            aiomqtt_on_disconnect(*args, **kwargs)

    paho.on_disconnect = on_disconnect


def _call_on_publish(client: aiomqtt.Client, callback: Callable[[int], None]) -> None:
    """Call ``callback(mid)`` when paho completes a publish (PUBACK, or QoS 0 written)."""
    paho = client._client
    aiomqtt_on_publish = paho.on_publish

    def on_publish(*args: Any, **kwargs: Any) -> None:
        callback(args[2])  # (client, userdata, mid, reason_code, properties)
        if aiomqtt_on_publish is not None:
            aiomqtt_on_publish(*args, **kwargs)

    paho.on_publish = on_publish


class AiomqttTransport:
    """A :class:`Transport` on an :class:`aiomqtt.Client` (one client per connection).

    ``max_inflight`` bounds the QoS 1 messages paho has on the wire awaiting PUBACK (AWS allows
    100); the session keeps its own window at most this size.
    """

    def __init__(self, *, max_inflight: int = 20) -> None:
        self._max_inflight = max_inflight
        self._client: aiomqtt.Client | None = None
        self._keep_alive = 0
        self._watchdog: asyncio.Task[None] | None = None
        self._dead_reason: str | None = None
        self._acks: dict[int, Callable[[], None]] = {}

    async def connect(self, options: ConnectOptions) -> None:
        paho_log = _PahoLog(logging.getLogger("ancsync.mqtt.paho"))
        will = None
        if options.will is not None:
            w = options.will
            will = aiomqtt.Will(w.topic, w.payload, w.qos, w.retain)
        client = aiomqtt.Client(
            options.host,
            options.port,
            identifier=options.client_id,
            keepalive=options.keep_alive,
            clean_session=options.clean_session,
            will=will,
            tls_context=options.ssl_context,
            timeout=options.connect_timeout,
            max_inflight_messages=self._max_inflight,
            logger=cast(logging.Logger, paho_log),
        )
        # aiomqtt warns above 10 pending calls; a full in-flight window is normal here.
        client.pending_calls_threshold = self._max_inflight + 10
        # Bounds the TCP connect and TLS handshake, which aiomqtt runs in a worker thread.
        client._client.connect_timeout = options.connect_timeout
        _fail_fast_before_connack(client, paho_log)
        _call_on_publish(client, self._on_publish)
        try:
            # Shielded: a cancelled connect would leave that thread to finish the connection
            # unseen, and a stray connection with our client id would kick the next one off.
            # The timeouts above bound the wait.
            with anyio.CancelScope(shield=True):
                await client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise _connect_failure(exc, options.host, options.port) from exc
        self._client = client
        self._keep_alive = options.keep_alive
        if options.keep_alive > 0:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch_keepalive())

    def _connected_client(self) -> aiomqtt.Client:
        if self._client is None:
            raise ConnectError("not connected")
        return self._client

    def publish(
        self, topic: str, payload: bytes, qos: int, retain: bool, on_done: Callable[[], None]
    ) -> None:
        # paho directly, not aiomqtt's publish coroutine, which needs a task per message to keep
        # several in flight (measured: benchmarks/bench_publish.py). No timeout: a missing
        # PUBACK means a dead link, which the keep-alive watchdog detects.
        info = self._connected_client()._client.publish(topic, payload, qos, retain)
        if info.rc != MQTT_ERR_SUCCESS:
            raise ConnectError(f"connection lost: cannot publish ({error_string(info.rc)})")
        if info.is_published():
            on_done()
        else:
            self._acks[info.mid] = on_done

    def _on_publish(self, mid: int) -> None:
        on_done = self._acks.pop(mid, None)
        if on_done is not None:
            on_done()

    async def subscribe(self, filters: Sequence[tuple[str, int]]) -> list[int]:
        client = self._connected_client()
        try:
            codes = await client.subscribe(list(filters))
        except aiomqtt.MqttError as exc:
            raise _lost(exc) from exc
        return [code.value if isinstance(code, ReasonCode) else int(code) for code in codes]

    async def unsubscribe(self, filters: Sequence[str]) -> None:
        client = self._connected_client()
        try:
            await client.unsubscribe(list(filters))
        except aiomqtt.MqttError as exc:
            raise _lost(exc) from exc

    async def messages(self) -> AsyncIterator[IncomingMessage]:
        client = self._connected_client()
        try:
            async for message in client.messages:
                payload = message.payload
                yield IncomingMessage(
                    topic=message.topic.value,
                    payload=payload if isinstance(payload, bytes) else str(payload).encode(),
                    qos=message.qos,
                    retain=message.retain,
                )
        except aiomqtt.MqttError as exc:
            if self._dead_reason is not None:
                raise ConnectError(f"connection lost: {self._dead_reason}") from exc
            raise _lost(exc) from exc
        raise ConnectError("connection lost: the broker closed it")

    async def close(self) -> None:
        self._acks.clear()  # no completion callbacks once the session let go of the connection
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        client, self._client = self._client, None
        if client is None:
            return
        with anyio.CancelScope(shield=True), contextlib.suppress(aiomqtt.MqttError, OSError):
            # A dead link cannot carry the DISCONNECT: cut the socket instead of waiting.
            if self._dead_reason is not None:
                self._abort(client)
            await client.__aexit__(None, None, None)

    async def _watch_keepalive(self) -> None:
        """Declare the link dead when a PINGREQ goes unanswered for half the keep-alive.

        paho sends a PINGREQ after a keep-alive without traffic but only gives up one more
        keep-alive later (about 2x); AWS IoT drops a silent client at 1.5x, and a half-open link
        (a NAT that forgot us, a swallowing proxy) would stall publishes that long. Calling
        paho's public ``loop_misc`` more often than aiomqtt's once-a-second also sends the
        PINGREQ on time. ``_ping_t`` (when the PINGREQ went out) is paho-private, read here only.
        """
        assert self._client is not None
        paho = self._client._client
        tick = min(1.0, self._keep_alive / 8)
        while True:
            await asyncio.sleep(tick)
            paho.loop_misc()
            ping_sent: float = getattr(paho, "_ping_t", 0.0)
            if ping_sent and time.monotonic() - ping_sent >= self._keep_alive / 2:
                self._dead_reason = (
                    f"no answer to a keep-alive ping within {self._keep_alive / 2:g} s "
                    f"(keep-alive {self._keep_alive} s): the link is half-open"
                )
                log.warning("%s; reconnecting", self._dead_reason)
                self._abort(self._client)
                return

    @staticmethod
    def _abort(client: aiomqtt.Client) -> None:
        # Shutting the socket down makes paho's reader see EOF and report the loss the normal
        # way (the messages iterator raises), with no DISCONNECT sent: the will still fires.
        sock = client._client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
