"""The awscrt backend of the transport seam (MQTT 3.1.1 on ``awscrt.mqtt.Connection``).

awscrt runs the MQTT protocol, TLS (s2n) and the socket in C, on the threads of its own event
loop group (awscrt's static default, shared by every connection of the process). Its
completions (CONNACK, PUBACK, SUBACK, an incoming PUBLISH, a lost link) arrive in those threads;
:class:`_Handoff` carries them to the asyncio loop in order, in batches, with one
``loop.call_soon_threadsafe`` wake-up per batch rather than per message, and bounds the incoming
messages it holds (drop oldest, counted). Nothing here blocks the loop and no thread is started.

awscrt would reconnect by itself after a lost link; the session decides about retrying, so the
first interruption ends the transport (``messages()`` raises) and it is disconnected at once.
awscrt needs the certificate files, not an :class:`ssl.SSLContext`: it reads
:attr:`~ancsync.mqtt.transport.ConnectOptions.tls_files`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future
from typing import Any

import anyio
from awscrt import io as crt_io
from awscrt import mqtt as crt_mqtt

from ancsync.errors import ConfigError, ConnectError
from ancsync.mqtt import crt_errors
from ancsync.mqtt.incoming import IncomingQueue
from ancsync.mqtt.tls import AWS_ALPN_PROTOCOL
from ancsync.mqtt.transport import SUBSCRIBE_FAILURE, ConnectOptions, IncomingMessage, TlsFiles

__all__ = ["CrtTransport"]

log = logging.getLogger("ancsync.mqtt.crt_transport")

# How long close() waits for awscrt to write the DISCONNECT and close the socket.
_DISCONNECT_TIMEOUT = 1.0
# awscrt's own reconnect waits this long (seconds) after a lost link: far longer than the
# transport takes to disconnect it (at once, in the loop), so awscrt never reconnects; the
# session does the retrying. awscrt completes that disconnect only when the wait ends.
_NO_RECONNECT = 5
# How long the TLS probe after a connect timeout may take.
_PROBE_TIMEOUT = 2.0
_QOS = (crt_mqtt.QoS.AT_MOST_ONCE, crt_mqtt.QoS.AT_LEAST_ONCE, crt_mqtt.QoS.EXACTLY_ONCE)

_Event = tuple[Callable[[Any], None], Any]


class _Handoff:
    """From awscrt's threads to the event loop: events in order, one wake-up per batch.

    :meth:`call` and :meth:`message` may be called from any thread. The first item of a batch
    schedules :meth:`_flush` with ``call_soon_threadsafe``; items added before it runs join the
    same batch. Incoming messages are held at most ``limit`` (the oldest dropped and counted in
    :attr:`dropped`) and handed to ``incoming`` before the batch's events run, so a lost link
    is reported after the messages that came before it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, incoming: IncomingQueue, limit: int):
        self._loop = loop
        self._incoming = incoming
        self._limit = limit
        self._lock = threading.Lock()
        self._events: list[_Event] = []
        self._messages: deque[IncomingMessage] = deque()
        self._scheduled = False
        self.dropped = 0
        """Messages dropped because the event loop was ``limit`` messages behind awscrt."""

    def call(self, function: Callable[[Any], None], argument: Any) -> None:
        """Run ``function(argument)`` in the loop's thread, after what was handed off before."""
        with self._lock:
            self._events.append((function, argument))
            if self._scheduled:
                return
            self._scheduled = True
        self._wake()

    def message(self, message: IncomingMessage) -> None:
        """Hand ``message`` to the incoming queue; if ``limit`` are waiting, drop the oldest."""
        with self._lock:
            if len(self._messages) >= self._limit:
                self._messages.popleft()
                self.dropped += 1
            self._messages.append(message)
            if self._scheduled:
                return
            self._scheduled = True
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to tell
            self._loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        with self._lock:
            events, self._events = self._events, []
            messages, self._messages = self._messages, deque()
            self._scheduled = False
        for message in messages:
            self._incoming.put(message)
        for function, argument in events:
            function(argument)


async def _probe_tls(options: ConnectOptions) -> BaseException | None:
    """A TLS handshake with :mod:`ssl` and the session's context (no MQTT): what it raised.

    Only after a connect timed out: awscrt (s2n) holds back a handshake failure of its own for
    10 to 30 s, and this names it (an untrusted server certificate) at once.
    """
    try:
        with anyio.fail_after(_PROBE_TIMEOUT):
            stream = await anyio.connect_tcp(
                options.host,
                options.port,
                ssl_context=options.ssl_context,
                tls_hostname=options.host,
            )
            await stream.aclose()
    except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
        return exc
    return None


class CrtTransport:
    """A :class:`~ancsync.mqtt.transport.Transport` on awscrt's MQTT 3.1.1 client.

    One instance is one connection attempt. ``max_inflight`` is accepted for symmetry with
    :class:`~ancsync.mqtt.paho_transport.PahoTransport`: awscrt does not bound the QoS 1
    messages on the wire, the session's own window (at most this size) does.
    ``incoming_limit`` bounds the incoming messages waiting for :meth:`messages` (and, again,
    those waiting for the event loop to take them from awscrt's thread); beyond it the oldest
    are dropped and counted in :attr:`dropped`.

    A link is declared dead when a keep-alive ping goes unanswered for half a keep-alive:
    awscrt sends its PINGREQ one keep-alive after it last sent something, so a dead link is
    noticed within 1.5 x keep-alive.
    """

    def __init__(self, *, max_inflight: int = 20, incoming_limit: int = 1000) -> None:
        self._max_inflight = max_inflight
        self._incoming_limit = incoming_limit
        self._incoming = IncomingQueue(incoming_limit)
        self._handoff: _Handoff | None = None
        self._connection: Any = None  # awscrt.mqtt.Connection (awscrt has no type hints)
        self._options: ConnectOptions | None = None
        self._connack: asyncio.Future[None] | None = None
        self._connected = False
        self._lost: ConnectError | None = None
        self._acks: dict[Future[Any], Callable[[], None]] = {}
        self._requests: dict[Future[Any], asyncio.Future[Any]] = {}
        self._connecting: Future[Any] | None = None  # awscrt's connect, until it completes
        self._disconnecting: Future[Any] | None = None

    @property
    def dropped(self) -> int:
        """Incoming messages dropped, oldest first, because the reader fell behind."""
        held = self._handoff.dropped if self._handoff is not None else 0
        return held + self._incoming.dropped

    # --- connect -------------------------------------------------------------------------

    async def connect(self, options: ConnectOptions) -> None:
        """Connect and wait for a successful CONNACK, within ``options.connect_timeout``.

        A connect cancelled or timed out half-way leaves no connection behind for long: awscrt
        cannot abort it, so it is disconnected the moment awscrt completes it (see
        :meth:`close`). A timeout with TLS on probes the handshake with :mod:`ssl` first, so an
        untrusted server certificate is reported as such (awscrt holds that verdict back).
        """
        loop = asyncio.get_running_loop()
        self._options = options
        self._handoff = _Handoff(loop, self._incoming, self._incoming_limit)
        self._connack = loop.create_future()
        try:
            connection = self._new_connection(options)
            self._connection = connection
            connection.on_message(self._on_message)
            self._connecting = connection.connect()
            self._connecting.add_done_callback(self._in_loop(self._on_connect_done))
            await self._wait_connack(options)
        except BaseException:
            await self.close()
            raise

    async def _wait_connack(self, options: ConnectOptions) -> None:
        assert self._connack is not None
        with anyio.move_on_after(options.connect_timeout):
            await self._connack
            self._connected = True
            return
        probe = await _probe_tls(options) if options.ssl_context is not None else None
        raise crt_errors.connack_timeout(options.host, options.port, options.connect_timeout, probe)

    def _new_connection(self, options: ConnectOptions) -> Any:
        tls = None
        if options.ssl_context is not None:
            if options.tls_files is None:
                raise ConfigError(
                    'transport="crt" needs the certificate files (ConnectOptions.tls_files), '
                    "not only an ssl.SSLContext; IoTConnection passes them from the settings"
                )
            tls = self._tls_context(options.tls_files, options.port)
        socket_options = crt_io.SocketOptions()
        socket_options.connect_timeout_ms = max(1, round(options.connect_timeout * 1000))
        will = None
        if options.will is not None:
            w = options.will
            will = crt_mqtt.Will(w.topic, _QOS[w.qos], w.payload, w.retain)
        keep_alive = options.keep_alive
        return crt_mqtt.Connection(
            client=crt_mqtt.Client(crt_io.ClientBootstrap.get_or_create_static_default(), tls),
            host_name=options.host,
            port=options.port,
            client_id=options.client_id,
            clean_session=options.clean_session,
            on_connection_interrupted=self._on_interrupted,
            reconnect_min_timeout_secs=_NO_RECONNECT,
            reconnect_max_timeout_secs=_NO_RECONNECT,
            keep_alive_secs=keep_alive,
            # Half a keep-alive for the PINGRESP: a dead link is cut at 1.5 x keep-alive.
            ping_timeout_ms=max(1, keep_alive * 500),
            will=will,
            socket_options=socket_options,
            disable_metrics=True,  # no SDK name in the user name: the CONNECT paho sends
        )

    @staticmethod
    def _tls_context(files: TlsFiles, port: int) -> Any:
        """awscrt's TLS context: client certificate, TLS 1.2+, the CA given (or the system's)."""
        cert, key = str(files.cert_path), str(files.key_path)
        try:
            tls = crt_io.TlsContextOptions.create_client_with_mtls_from_path(cert, key)
            tls.min_tls_ver = crt_io.TlsVersion.TLSv1_2
            if files.root_ca_path is not None:
                tls.override_default_trust_store_from_path(None, str(files.root_ca_path))
            if port == 443:
                tls.alpn_list = [AWS_ALPN_PROTOCOL]
            return crt_io.ClientTlsContext(tls)
        except Exception as exc:  # awscrt raises its own errors for files it cannot use
            raise crt_errors.tls_setup(exc, cert, key) from exc

    def _in_loop(self, function: Callable[[Any], None]) -> Callable[[Any], None]:
        """A callback for awscrt's threads that runs ``function`` in the loop's thread."""
        handoff = self._handoff
        assert handoff is not None
        return lambda argument: handoff.call(function, argument)

    def _where(self) -> tuple[str, int]:
        assert self._options is not None
        return self._options.host, self._options.port

    # --- awscrt's callbacks (in its threads): hand over to the loop ------------------------

    def _on_interrupted(self, connection: Any, error: BaseException, **kwargs: Any) -> None:
        assert self._handoff is not None
        self._handoff.call(self._lose, error)

    def _on_message(
        self, topic: str, payload: bytes, dup: bool, qos: Any, retain: bool, **kwargs: Any
    ) -> None:
        assert self._handoff is not None
        self._handoff.message(IncomingMessage(topic, payload, int(qos), retain))

    def _on_publish_done(self, future: Future[Any]) -> None:
        assert self._handoff is not None
        self._handoff.call(self._acked, future)

    def _on_request_done(self, future: Future[Any]) -> None:
        assert self._handoff is not None
        self._handoff.call(self._answered, future)

    # --- the same, in the loop's thread ----------------------------------------------------

    def _on_connect_done(self, done: Future[Any]) -> None:
        connack = self._connack
        if connack is None or connack.done():
            return
        error = done.exception()
        if error is None:
            connack.set_result(None)
            return
        host, port = self._where()
        code = error.args[0] if error.args else None
        if isinstance(code, crt_mqtt.ConnectReturnCode):
            connack.set_exception(crt_errors.refused(int(code), host))
        else:
            assert self._options is not None
            connack.set_exception(
                crt_errors.connect_failure(error, host, port, self._options.connect_timeout)
            )

    def _lose(self, error: BaseException) -> None:
        """The link is gone: end ``messages()``, drop the acknowledgements, stop awscrt."""
        if self._lost is not None:
            return
        keep_alive = self._options.keep_alive if self._options is not None else 0
        self._lost = crt_errors.lost(error, keep_alive)
        log.debug("%s", self._lost)
        self._incoming.end(self._lost)
        self._acks.clear()  # never completed: the session puts these messages back
        requests, self._requests = self._requests, {}
        for request in requests.values():
            if not request.done():
                request.set_exception(self._lost)
        self._disconnect()  # no reconnect of awscrt's own

    def _disconnect(self) -> Future[Any] | None:
        """Tell awscrt to disconnect (once); the future completes when the socket is closed."""
        if self._disconnecting is None and self._connection is not None:
            try:
                self._disconnecting = self._connection.disconnect()
            except Exception as exc:  # awscrt refuses when there is nothing to disconnect
                log.debug("disconnect: %s", exc)
        return self._disconnecting

    def _acked(self, future: Future[Any]) -> None:
        on_done = self._acks.pop(future, None)
        if on_done is not None and future.exception() is None:
            on_done()

    def _answered(self, future: Future[Any]) -> None:
        request = self._requests.pop(future, None)
        if request is None or request.done():
            return
        error = future.exception()
        if error is None:
            request.set_result(future.result())
        elif isinstance(error, crt_mqtt.SubscribeError):
            request.set_result({"qos": SUBSCRIBE_FAILURE})
        else:
            request.set_exception(crt_errors.lost(error))

    # --- the seam --------------------------------------------------------------------------

    def _connected_connection(self) -> Any:
        if self._lost is not None:
            raise self._lost
        if self._connection is None or not self._connected:
            raise crt_errors.lost("not connected")
        return self._connection

    def publish(
        self, topic: str, payload: bytes, qos: int, retain: bool, on_done: Callable[[], None]
    ) -> None:
        """Hand a PUBLISH to awscrt now; ``on_done`` on its PUBACK (QoS 1) or once written."""
        future, _ = self._connected_connection().publish(topic, payload, _QOS[qos], retain)
        self._acks[future] = on_done
        future.add_done_callback(self._on_publish_done)

    async def _request(self, operation: str, *args: Any) -> Any:
        """Send ``connection.<operation>(*args)`` (subscribe, unsubscribe); await its answer."""
        future, _ = getattr(self._connected_connection(), operation)(*args)
        request: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._requests[future] = request
        future.add_done_callback(self._on_request_done)
        try:
            return await request
        finally:
            self._requests.pop(future, None)

    async def subscribe(self, filters: Sequence[tuple[str, int]]) -> list[int]:
        """Subscribe to ``filters``; the granted QoS or ``SUBSCRIBE_FAILURE`` per filter.

        awscrt's MQTT 3.1.1 client sends one SUBSCRIBE per filter: they go out together and
        are awaited together.
        """
        answers = await asyncio.gather(
            *(self._request("subscribe", topic, _QOS[qos]) for topic, qos in filters)
        )
        return [int(answer["qos"]) for answer in answers]

    async def unsubscribe(self, filters: Sequence[str]) -> None:
        """Unsubscribe from ``filters`` (one UNSUBSCRIBE each); returns on the last UNSUBACK."""
        await asyncio.gather(*(self._request("unsubscribe", topic) for topic in filters))

    async def messages(self) -> AsyncIterator[IncomingMessage]:
        """Incoming messages, until the connection is lost (then ``ConnectError``)."""
        if self._connection is None:
            raise ConnectError("not connected")
        while True:
            yield await self._incoming.get()

    async def close(self) -> None:
        """Send a DISCONNECT (unless the link is dead already) and close; never raises.

        awscrt cannot abort a connect half-way (it refuses to disconnect before the CONNACK):
        a connect cancelled or timed out is disconnected by awscrt's thread the moment it
        completes, within awscrt's own limits (10 s for the TLS handshake, half a keep-alive
        for the CONNACK), and close() returns at once.
        """
        self._acks.clear()  # no completion callbacks once the session let go of the connection
        connection, connecting = self._connection, self._connecting
        if connection is None or connecting is None:
            self._connection = None
            return
        if not connecting.done():
            connecting.add_done_callback(lambda done: _disconnect_if_connected(connection, done))
        elif connecting.exception() is None:
            lost = self._lost is not None
            done = self._disconnect()
            # A lost link has no socket left to close: awscrt completes that disconnect only
            # when its reconnect wait ends, so it is not waited for.
            if done is not None and not lost:
                with anyio.CancelScope(shield=True), anyio.move_on_after(_DISCONNECT_TIMEOUT):
                    try:
                        await asyncio.wrap_future(done)
                    except Exception as exc:  # awscrt failed the disconnect: the socket is gone
                        log.debug("disconnect: %s", exc)
        self._connection = None
        self._incoming.end(self._lost or crt_errors.lost("closed by the client"))


def _disconnect_if_connected(connection: Any, connecting: Future[Any]) -> None:
    """In awscrt's thread: disconnect a connection whose connect completed after close()."""
    if connecting.exception() is None:
        log.debug("disconnecting a connection that completed after it was closed")
        connection.disconnect()
