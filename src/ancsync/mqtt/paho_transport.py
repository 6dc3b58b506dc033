"""The paho-mqtt backend of the transport seam, on paho's public API only.

paho runs no thread and no loop of its own here. Its socket callbacks hook the connection into
asyncio: the socket's reader calls ``loop_read`` (every PUBACK, SUBACK and PUBLISH is handled
right there, in a loop callback), ``on_socket_register_write`` adds a writer that calls
``loop_write`` while paho has bytes queued, and a timer calls ``loop_misc`` for paho's
keep-alive. Only the blocking part of a connect (DNS, TCP connect, TLS handshake, writing the
CONNECT) runs in a worker thread, bounded by the connect timeout.

None of this depends on a task of the caller: a publish is acknowledged even while the session's
own tasks are being cancelled, which is what lets it drain its outbox during shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import traceback
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any, cast

import anyio
import anyio.lowlevel
from paho.mqtt.client import (
    MQTT_ERR_SUCCESS,
    Client,
    ConnectFlags,
    DisconnectFlags,
    MQTTMessage,
    error_string,
)
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ancsync.errors import ConnectError
from ancsync.mqtt import paho_errors
from ancsync.mqtt.incoming import IncomingQueue
from ancsync.mqtt.transport import ConnectOptions, IncomingMessage

__all__ = ["PahoTransport"]

log = logging.getLogger("ancsync.mqtt.paho_transport")

# How long close() waits for its DISCONNECT to be written before cutting the socket.
_DISCONNECT_TIMEOUT = 1.0
# Reads that empty the socket after an abort (each takes at least one packet).
_ABORT_READS = 10_000
# paho's name for "the keep-alive ping went unanswered" (it gives up at 2 x keep-alive).
_KEEPALIVE_TIMEOUT = "Keep alive timeout"
# paho's name for an answer it cannot take, such as a CONNACK refusing MQTT 3.1.1.
_PROTOCOL_ERROR = "Protocol error"


def _close_sockets_left_in(trace: TracebackType | None) -> None:
    """Close the sockets a failed connect made, and clear the frames that held them.

    A failed TLS handshake leaves the half-made socket referenced only by the frames of its
    traceback, so it would stay open (the server seeing a live connection) until the error is
    collected, and then close with a ResourceWarning.
    """
    for frame, _ in traceback.walk_tb(trace):
        for value in frame.f_locals.values():
            if isinstance(value, socket.socket):
                value.close()
    traceback.clear_frames(trace)


class _PahoLog(logging.LoggerAdapter[logging.Logger]):
    """paho's logger for one connection: forwards to ``ancsync.mqtt.paho`` and remembers the
    last error, because paho reports a socket error (such as a TLS alert) only in its log."""

    last_error: str | None = None

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level >= logging.ERROR:
            self.last_error = str(msg) % args if args else str(msg)
        self.logger.log(level, msg, *args, **kwargs)  # paho logs every packet: stay lean


class PahoTransport:
    """A :class:`~ancsync.mqtt.transport.Transport` on a paho-mqtt 2.x client (MQTT 3.1.1).

    One instance is one connection attempt. ``max_inflight`` bounds the QoS 1 messages on the
    wire awaiting their PUBACK (AWS IoT allows 100; paho holds further ones back until a slot
    frees); the session keeps its own window at most this size. ``incoming_limit`` bounds the
    incoming messages waiting for :meth:`messages`; beyond it the oldest are dropped and counted
    in :attr:`dropped`.

    A link is declared dead (half-open) when nothing arrived for 1.5 x keep-alive: paho sends
    its PINGREQ at one keep-alive without traffic, so a live link answers well before that. The
    socket is then cut without a DISCONNECT, so the broker publishes the last will.
    """

    def __init__(self, *, max_inflight: int = 20, incoming_limit: int = 1000) -> None:
        self._max_inflight = max_inflight
        self._incoming = IncomingQueue(incoming_limit)
        self._client: Client | None = None
        self._options: ConnectOptions | None = None
        self._paho_log = _PahoLog(logging.getLogger("ancsync.mqtt.paho"))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connack: asyncio.Future[None] | None = None
        self._acks: dict[int, Callable[[], None]] = {}
        self._requests: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._last_inbound = 0.0
        self._dead_reason: str | None = None
        self._closed = asyncio.Event()

    @property
    def dropped(self) -> int:
        """Incoming messages dropped, oldest first, because the reader fell behind."""
        return self._incoming.dropped

    # --- connect -------------------------------------------------------------------------

    async def connect(self, options: ConnectOptions) -> None:
        """Connect and wait for a successful CONNACK, within ``options.connect_timeout``.

        A connect cancelled half-way leaves nothing behind: the worker thread is waited for
        (it is bounded by the timeout), then the connection it made is closed with a DISCONNECT,
        so no stray connection with our client id lingers to kick the next one off.
        """
        self._loop = asyncio.get_running_loop()
        self._options = options
        self._connack = self._loop.create_future()
        client = self._new_client(options)
        self._client = client
        try:
            try:
                # Not abandoned on cancel: the thread finishes (bounded), then we clean up.
                await anyio.to_thread.run_sync(self._open, client, options)
            except (OSError, ValueError) as exc:
                # Cancelled while the thread ran: that, not the thread's failure, is the news.
                await anyio.lowlevel.checkpoint_if_cancelled()
                raise paho_errors.connect_failure(
                    exc, options.host, options.port, options.connect_timeout
                ) from exc
            self._attach(client)
            await self._wait_connack(options)
        except BaseException:
            await self.close()
            raise
        self._schedule_tick()

    async def _wait_connack(self, options: ConnectOptions) -> None:
        assert self._connack is not None
        with anyio.move_on_after(options.connect_timeout):
            await self._connack
            return
        raise paho_errors.connack_timeout(options.host, options.port, options.connect_timeout)

    def _new_client(self, options: ConnectOptions) -> Client:
        client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=options.client_id,
            clean_session=options.clean_session,
            protocol=MQTTProtocolVersion.MQTTv311,
            reconnect_on_failure=False,  # one attempt; the session decides about retrying
        )
        client.enable_logger(cast(logging.Logger, self._paho_log))
        client.connect_timeout = options.connect_timeout  # the TCP connect and TLS handshake
        client.max_inflight_messages_set(self._max_inflight)
        if options.ssl_context is not None:
            client.tls_set_context(options.ssl_context)
        if options.will is not None:
            will = options.will
            client.will_set(will.topic, will.payload, will.qos, will.retain)
        return client

    @staticmethod
    def _open(client: Client, options: ConnectOptions) -> None:
        """In a worker thread: resolve, connect, handshake, write the CONNECT (blocking)."""
        try:
            client.connect(options.host, options.port, options.keep_alive)
        except BaseException as exc:
            _close_sockets_left_in(exc.__traceback__)
            raise

    def _attach(self, client: Client) -> None:
        """Hand the connected socket to the event loop, in the loop's thread.

        Every callback is set only now, so none ever runs in the worker thread.
        """
        assert self._loop is not None
        sock = client.socket()
        if sock is None:  # the worker could not even write the CONNECT
            raise paho_errors.closed_before_connack(self._paho_log.last_error, *self._where())
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_request_done
        client.on_unsubscribe = self._on_request_done
        client.on_message = self._on_message
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        self._last_inbound = self._loop.time()
        self._loop.add_reader(sock, self._readable, client)
        if client.want_write():  # the CONNECT did not fit in the socket buffer at once
            self._loop.add_writer(sock, client.loop_write)

    def _where(self) -> tuple[str, int]:
        assert self._options is not None
        return self._options.host, self._options.port

    # --- the event loop's side: socket readiness, timer ------------------------------------

    def _readable(self, client: Client) -> None:
        assert self._loop is not None
        self._last_inbound = self._loop.time()
        client.loop_read()
        # TLS may hold decrypted records the socket no longer signals: read them too.
        sock = client.socket()
        while isinstance(sock, ssl.SSLSocket) and sock.pending() and client.socket() is sock:
            client.loop_read()

    def _on_register_write(self, client: Client, userdata: Any, sock: Any) -> None:
        # Next turn of the loop, not now: the publishes made in this turn then go out in one
        # write. Measured with benchmarks/bench_publish.py: about 12 % less CPU per message.
        assert self._loop is not None
        self._loop.call_soon(self._add_writer, client, sock)

    def _add_writer(self, client: Client, sock: Any) -> None:
        assert self._loop is not None
        still_open = client.socket() is sock
        if still_open:
            self._loop.add_writer(sock, client.loop_write)

    def _on_unregister_write(self, client: Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_writer(sock)

    def _on_socket_close(self, client: Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._closed.set()

    def _schedule_tick(self) -> None:
        """Run :meth:`_tick` at the next moment the keep-alive needs attention."""
        assert self._options is not None
        assert self._loop is not None
        keep_alive = self._options.keep_alive
        if keep_alive <= 0:
            return
        # Often enough for paho's own outbound keep-alive, and exactly when the PINGREQ is due
        # (one keep-alive after the last inbound bytes) and when the link would be dead.
        now = self._loop.time()
        due = [now + min(1.0, keep_alive / 8)]
        for moment in (self._last_inbound + keep_alive, self._last_inbound + 1.5 * keep_alive):
            if moment > now:
                due.append(moment + 0.001)
        self._timer = self._loop.call_at(min(due), self._tick)

    def _tick(self) -> None:
        self._timer = None
        client, options = self._client, self._options
        if client is None or options is None or client.socket() is None:
            return
        assert self._loop is not None
        silent = self._loop.time() - self._last_inbound
        if silent >= 1.5 * options.keep_alive:
            self._dead_reason = (
                f"nothing from the broker for {silent:.1f} s, not even an answer to the "
                f"keep-alive ping (keep-alive {options.keep_alive} s): the link is half-open"
            )
            log.warning("%s; reconnecting", self._dead_reason)
            self._abort(client)
            return
        client.loop_misc()  # sends the PINGREQ when one is due
        if client.socket() is not None:
            self._schedule_tick()

    @staticmethod
    def _abort(client: Client) -> None:
        """Cut the link with no DISCONNECT (the will fires); paho then sees the loss itself."""
        sock = client.socket()
        if not isinstance(sock, socket.socket):
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        # Reading to the end of the stream (past any packets still buffered) makes paho close
        # the socket and report the loss through on_disconnect, as for any other loss. Each
        # read takes at least one packet or the end; the bound is a guard, never reached.
        for _ in range(_ABORT_READS):
            if client.socket() is None:
                return
            client.loop_read()

    # --- paho's callbacks (all in the event loop's thread) ---------------------------------

    def _on_connect(
        self,
        client: Client,
        userdata: Any,
        flags: ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if self._connack is None or self._connack.done():
            return
        if reason.is_failure:
            self._connack.set_exception(paho_errors.refused(reason, self._where()[0]))
        else:
            self._connack.set_result(None)

    def _on_disconnect(
        self,
        client: Client,
        userdata: Any,
        flags: DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if self._connack is not None and not self._connack.done():
            if reason.getName() == _PROTOCOL_ERROR:
                error = paho_errors.protocol_refused(*self._where())
            else:
                error = paho_errors.closed_before_connack(self._paho_log.last_error, *self._where())
            self._connack.set_exception(error)
        if self._dead_reason is None and reason.getName() == _KEEPALIVE_TIMEOUT:
            self._dead_reason = "no answer to the keep-alive ping: the link is half-open"
        lost = paho_errors.lost(self._dead_reason or self._paho_log.last_error)
        self._incoming.end(lost)
        self._acks.clear()  # never completed: the session puts these messages back
        requests, self._requests = self._requests, {}
        for request in requests.values():
            if not request.done():
                request.set_exception(lost)

    def _on_publish(
        self,
        client: Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        on_done = self._acks.pop(mid, None)
        if on_done is not None:
            on_done()

    def _on_request_done(
        self,
        client: Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        request = self._requests.pop(mid, None)
        if request is not None and not request.done():
            request.set_result(reasons)

    def _on_message(self, client: Client, userdata: Any, message: MQTTMessage) -> None:
        payload = message.payload
        if not isinstance(payload, bytes):
            payload = bytes(payload)
        self._incoming.put(IncomingMessage(message.topic, payload, message.qos, message.retain))

    # --- the seam --------------------------------------------------------------------------

    def _connected_client(self) -> Client:
        client = self._client
        if client is None or client.socket() is None:
            raise paho_errors.lost(self._dead_reason or "not connected")
        return client

    def publish(
        self, topic: str, payload: bytes, qos: int, retain: bool, on_done: Callable[[], None]
    ) -> None:
        """Queue a PUBLISH for the socket's writer; ``on_done`` on PUBACK or once written.

        No timeout: a missing PUBACK means a dead link, which the keep-alive check detects.
        """
        info = self._connected_client().publish(topic, payload, qos, retain)
        if info.rc != MQTT_ERR_SUCCESS:
            raise paho_errors.lost(f"cannot publish ({error_string(info.rc)})")
        self._acks[info.mid] = on_done

    async def _request(self, send: Callable[[Client], tuple[int, int | None]]) -> list[ReasonCode]:
        assert self._loop is not None
        rc, mid = send(self._connected_client())
        if rc != MQTT_ERR_SUCCESS or mid is None:
            raise paho_errors.lost(f"cannot send the request ({error_string(rc)})")
        request: asyncio.Future[list[ReasonCode]] = self._loop.create_future()
        self._requests[mid] = request
        try:
            return await request
        finally:
            self._requests.pop(mid, None)

    async def subscribe(self, filters: Sequence[tuple[str, int]]) -> list[int]:
        """One SUBSCRIBE; returns the granted QoS or ``SUBSCRIBE_FAILURE`` per filter."""
        reasons = await self._request(lambda client: client.subscribe(list(filters)))
        return [reason.value for reason in reasons]

    async def unsubscribe(self, filters: Sequence[str]) -> None:
        """One UNSUBSCRIBE for ``filters``; returns once the UNSUBACK arrived."""
        await self._request(lambda client: client.unsubscribe(list(filters)))

    async def messages(self) -> AsyncIterator[IncomingMessage]:
        """Incoming messages, until the connection is lost (then ``ConnectError``)."""
        if self._client is None:
            raise ConnectError("not connected")
        while True:
            yield await self._incoming.get()

    async def close(self) -> None:
        """Send a DISCONNECT (unless the link is dead) and close; never raises; idempotent."""
        self._acks.clear()  # no completion callbacks once the session let go of the connection
        client, self._client = self._client, None
        if client is None:
            return
        with anyio.CancelScope(shield=True):
            if client.socket() is not None and self._dead_reason is None:
                client.disconnect()  # paho closes the socket once the DISCONNECT is written
                if client.socket() is not None:
                    with anyio.move_on_after(_DISCONNECT_TIMEOUT):
                        await self._closed.wait()
            if client.socket() is not None:  # dead, or the DISCONNECT could not be written
                self._abort(client)
        self._incoming.end(paho_errors.lost("closed by the client"))
