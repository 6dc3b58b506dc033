"""amqtt's broker with the AWS IoT behaviour the emulator needs: every use of amqtt's private API.

:class:`AwsLikeBroker` is what :class:`~ancsync.emulator.broker.EmbeddedBroker` runs. It

- requires client certificates (amqtt makes them optional) and caps TLS at a given version,
- decides each CONNECT before amqtt ends or takes over an existing session with the same client
  id, and puts back what amqtt copied from a refused CONNECT into a session it resumes,
- authorises every publish (with its retain flag) before amqtt acknowledges it, hands reserved
  AWS request topics to the reserved-topic routes of its decisions and really disconnects a
  client amqtt stops serving,
- authorises every subscription (a denied publish or subscribe disconnects the client, a QoS 2
  one gets no answer),
- broadcasts every message a client sent (and was PUBACKed) before its session ends, also when
  the client disconnects right after publishing (amqtt dropped what was still queued), and
- keeps persistent sessions as AWS IoT Core does: a clean session is never resumed, a
  persistent one expires, queued messages go out without the retain flag, and a session taken
  over by a new connection stays connected.

It also gives every client connection a protocol handler that waits for a QoS 1 PUBACK before
sending the PUBLISH (:class:`PubackFirstHandler`), and bounds the shutdown
(:meth:`AwsLikeBroker.shutdown_within`).

It overrides private methods of amqtt 0.12 and calls others, reads private attributes
(``_servers`` and their sockets, the connections' handlers, writers and tasks,
``_puback_waiters``, a session's queues and in-flight messages), its state machine, and relies
on the fields amqtt copies into a resumed session (``_RESUMED_FIELDS``);
``tests/unit/test_amqtt_contract.py`` fails with a clear message if an amqtt upgrade changes them.
The decisions themselves (counting, logging, asking the authorizer, routing reserved topics) are a
:class:`~ancsync.emulator.decisions.BrokerDecisions`, which knows nothing of amqtt.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import ssl
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, Literal, NoReturn

from amqtt.adapters import ReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import BrokerConfig, ListenerConfig
from amqtt.errors import MQTTError
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.constants import QOS_1, QOS_2
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.publish import PublishPacket
from amqtt.session import OUTGOING, Session

from ancsync.codec import MAX_PAYLOAD_BYTES
from ancsync.emulator.auth import ClientIdentity, identity_of, remember_identity
from ancsync.emulator.decisions import BrokerDecisions

__all__ = [
    "MAX_PACKET_BYTES",
    "MQTT5_UNSUPPORTED_CONNACK",
    "AwsLikeBroker",
    "ProtocolViolation",
    "PubackFirstHandler",
    "server_tls_context",
]

log = logging.getLogger("ancsync.emulator.amqtt_broker")


def _is_ordinary_topic(topic: str) -> bool:
    """A topic a client may publish to in MQTT: not empty, no wildcard or U+0000, not `$...`."""
    return bool(topic) and topic[0] != "$" and not any(c in topic for c in "+#\x00")


# The client id of each connection's reader, once amqtt has read its CONNECT (for the log).
_client_ids: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


async def _refuse_connection(writer: Any) -> None:
    """Answer CONNACK "not authorised" and close (what amqtt does for a bad CONNECT)."""
    with contextlib.suppress(ConnectionError):
        await ConnackPacket.build(0, NOT_AUTHORIZED).to_stream(writer)
        await writer.close()


# An MQTT 5 CONNACK: no session present, reason 0x84 "unsupported protocol version", no
# properties. amqtt speaks 3.1.1 only and would answer a 3.1.1 CONNACK an MQTT 5 client cannot
# read, or nothing at all (when the CONNECT carries properties), leaving the client to time out.
MQTT5_UNSUPPORTED_CONNACK = bytes([0x20, 0x03, 0x00, 0x84, 0x00])
_MQTT5_LEVEL = 5
# In a CONNECT's variable header: the protocol name "MQTT" (length-prefixed), then the level.
_LEVEL_OFFSET = 6


# The largest packet the emulator reads: a PUBLISH of AWS's largest payload with the longest
# topic fits many times over. A larger one (hostile or broken) closes the connection at once,
# before its body is read; a payload over MAX_PAYLOAD_BYTES in a smaller packet is refused in
# order, after what the client sent before it (see AwsLikeBroker._admit_publish).
MAX_PACKET_BYTES = 1024 * 1024
_CONNECT, _PUBLISH, _SUBSCRIBE, _UNSUBSCRIBE = 1, 3, 8, 10
# The packets a client may send after its CONNECT (MQTT 3.1.1, 2.2): the fixed-header flags
# they must carry (PUBLISH: any but QoS 3) and their remaining length (exact, or a minimum).
_CLIENT_PACKETS: dict[int, tuple[str, int | None, int, bool]] = {
    # type: (name, flags, length, exact)
    3: ("PUBLISH", None, 2, False),
    4: ("PUBACK", 0, 2, True),
    5: ("PUBREC", 0, 2, True),
    6: ("PUBREL", 2, 2, True),
    7: ("PUBCOMP", 0, 2, True),
    8: ("SUBSCRIBE", 2, 5, False),
    10: ("UNSUBSCRIBE", 2, 4, False),
    12: ("PINGREQ", 0, 0, True),
    14: ("DISCONNECT", 0, 0, True),
}


class ProtocolViolation(Exception):
    """Bytes MQTT 3.1.1 forbids from a client; amqtt's reader ends and the socket is closed.

    Deliberately not an amqtt ``MQTTError``: amqtt discards a packet on those and reads on,
    out of step with the stream.
    """


async def _read_fixed_header(reader: asyncio.StreamReader) -> bytes:
    """The first byte and the remaining-length bytes of the next MQTT packet."""
    header = await reader.readexactly(1)
    for _ in range(4):  # the remaining length takes at most four bytes
        byte = await reader.readexactly(1)
        header += byte
        if not byte[0] & 0x80:
            return header
    raise ProtocolViolation(f"a remaining length longer than four bytes ({header[1:].hex()})")


def _remaining_length(header: bytes) -> int:
    length = 0
    for shift, byte in enumerate(header[1:]):
        length |= (byte & 0x7F) << (7 * shift)
    return length


def _header_problem(first: int, length: int) -> str | None:
    """Why a client may not send a packet with this fixed header after its CONNECT, or None."""
    kind, flags = first >> 4, first & 0x0F
    if length > MAX_PACKET_BYTES:
        return f"a packet of {length} bytes (the emulator reads at most {MAX_PACKET_BYTES})"
    if kind not in _CLIENT_PACKETS:
        return f"packet type {kind} (first byte {first:#04x}), which a client may not send"
    name, wanted_flags, wanted_length, exact = _CLIENT_PACKETS[kind]
    if wanted_flags is None and (flags >> 1) & 3 == 3:
        return "a PUBLISH with QoS 3"
    if wanted_flags is not None and flags != wanted_flags:
        return f"a {name} with the flags {flags:#x} (MQTT 3.1.1 requires {wanted_flags:#x})"
    if length != wanted_length if exact else length < wanted_length:
        return f"a {name} of {length} bytes"
    return None


# What amqtt is given instead of a PUBLISH's invalid topic name: a `$` topic, refused in any case.
_INVALID_TOPIC_PLACEHOLDER = "$ancsync/invalid-topic-name"


def _topic_name_problem(topic: bytes) -> str | None:
    """Why a PUBLISH may not carry this topic name (MQTT 3.1.1, 1.5.3 and 3.3.2), or None."""
    try:
        text = topic.decode("utf-8")
    except UnicodeDecodeError:
        return "a topic name that is not UTF-8"
    if "+" in text or "#" in text:
        return "a topic name with a wildcard"
    if "\x00" in text:
        return "a topic name with U+0000"
    return None


def _filters_problem(body: bytes, *, with_qos: bool) -> str | None:
    """Why the topic filters of a SUBSCRIBE (``with_qos``) or UNSUBSCRIBE body are malformed:
    one runs past the packet, is empty or not UTF-8, or a requested QoS is over 2 (MQTT 3.1.1,
    3.8.3 and 3.10.3). amqtt took a filter that is not UTF-8 in as ``str(the bytes)``."""
    name = "SUBSCRIBE" if with_qos else "UNSUBSCRIBE"
    position = 2  # after the packet id
    while position < len(body):
        size = int.from_bytes(body[position : position + 2], "big")
        end = position + 2 + size
        if end + (1 if with_qos else 0) > len(body):
            return f"a {name} whose topic filter runs past its end"
        topic_filter = body[position + 2 : end]
        if not topic_filter:
            return f"a {name} with an empty topic filter"
        try:
            topic_filter.decode("utf-8")
        except UnicodeDecodeError:
            return f"a {name} with a topic filter that is not UTF-8 ({topic_filter!r})"
        if with_qos and body[end] > 2:
            return f"a {name} asking QoS byte {body[end]:#04x}"
        position = end + (1 if with_qos else 0)
    return None


def _mqtt_string(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def _encode_remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _retrieve_exception(task: asyncio.Future[bytes]) -> None:
    """Mark a packet read's error as seen: when its connection ended, no one awaits it."""
    if not task.cancelled():
        task.exception()


class _CheckedReader(ReaderAdapter):  # type: ignore[misc]  # amqtt is untyped
    """Gives amqtt the client's stream one whole, checked packet at a time.

    ``first`` is the CONNECT, read and checked before. Every later packet is read whole and
    checked first: a type a client may not send, wrong flags or length, a packet over
    :data:`MAX_PACKET_BYTES`, or a string running past the end of its packet raises
    :class:`ProtocolViolation` (``on_malformed`` is told why), and amqtt's reader ends, closing
    the connection; so does a SUBSCRIBE or UNSUBSCRIBE with a malformed topic filter (empty,
    not UTF-8, past the end, QoS over 2). A PUBLISH whose topic name is invalid (not UTF-8, a
    wildcard, U+0000) reaches amqtt with a placeholder topic instead, and
    :meth:`took_invalid_topic` gives the real one, so that the publish is refused in its turn,
    after those the client sent before.
    (amqtt took a non-UTF-8 name in as ``str(the bytes)``, an ordinary-looking topic, and
    discarded a wildcard one but then read its payload as packets.)
    """

    def __init__(
        self, first: bytes, reader: asyncio.StreamReader, on_malformed: Callable[[str], None]
    ) -> None:
        self._packet, self._offset = first, 0  # amqtt has read the packet up to the offset
        self._pending: asyncio.Future[bytes] | None = None
        self._reader = reader
        self._on_malformed = on_malformed
        self._invalid_topics: deque[tuple[str, str]] = deque()

    async def read(self, n: int = -1) -> bytes:
        if n == 0:
            return b""
        if self._offset == len(self._packet):
            # amqtt bounds its wait for a packet with the keep-alive and reads on after a
            # timeout: a packet half read then must not be lost, so it is read in a task of its
            # own that the timeout does not cancel, and the next read waits for the same one.
            if self._pending is None:
                self._pending = asyncio.ensure_future(self._next_packet())
                self._pending.add_done_callback(_retrieve_exception)
            try:
                packet = await asyncio.shield(self._pending)
            finally:
                if self._pending.done():
                    self._pending = None
            self._packet, self._offset = packet, 0
        left = len(self._packet) - self._offset
        if n == -1:
            n = left
        if n > left:
            self._refuse(f"a field of {n} bytes where {left} are left in its packet")
        start, self._offset = self._offset, self._offset + n
        return self._packet[start : self._offset]

    def feed_eof(self) -> None:
        self._reader.feed_eof()
        if self._pending is not None:
            self._pending.cancel()

    def took_invalid_topic(self, topic: str) -> tuple[str, str] | None:
        """For a PUBLISH amqtt decoded with ``topic``: its real topic name and why it is invalid,
        or None for a valid one. Ask once per PUBLISH, in the order they were read."""
        if topic == _INVALID_TOPIC_PLACEHOLDER and self._invalid_topics:
            return self._invalid_topics.popleft()
        return None

    def _refuse(self, problem: str) -> NoReturn:
        self._on_malformed(problem)
        raise ProtocolViolation(problem)

    async def _next_packet(self) -> bytes:
        try:
            header = await _read_fixed_header(self._reader)
        except ProtocolViolation as exc:
            self._refuse(str(exc))
        length = _remaining_length(header)
        problem = _header_problem(header[0], length)
        if problem is not None:
            self._refuse(problem)
        body = await self._reader.readexactly(length)
        if header[0] >> 4 in (_SUBSCRIBE, _UNSUBSCRIBE):
            problem = _filters_problem(body, with_qos=header[0] >> 4 == _SUBSCRIBE)
            if problem is not None:
                self._refuse(problem)
        if header[0] >> 4 != _PUBLISH:
            return header + body
        topic_length = int.from_bytes(body[:2], "big")
        if 2 + topic_length > length:
            self._refuse(f"a PUBLISH whose topic name runs past its end ({length} bytes)")
        topic = body[2 : 2 + topic_length]
        why = _topic_name_problem(topic)
        if why is None:
            return header + body
        # amqtt would discard it (wildcards) and read its payload as packets, or take it in under
        # a made-up topic (not UTF-8): it gets a placeholder topic, to be refused in its turn.
        self._invalid_topics.append((topic.decode("utf-8", "backslashreplace"), why))
        body = _mqtt_string(_INVALID_TOPIC_PLACEHOLDER) + body[2 + topic_length :]
        return bytes([header[0]]) + _encode_remaining_length(len(body)) + body


# The TLS object of the connection whose CONNECT amqtt is processing in this task.
_NOT_CONNECTING = object()
_connecting_tls: contextvars.ContextVar[object] = contextvars.ContextVar("connecting_tls")

# What amqtt copies from a CONNECT into the persistent session it resumes, and where the values
# of the last accepted CONNECT are kept, so that a refused one can be undone.
_RESUMED_FIELDS = (
    "will_flag",
    "will_message",
    "will_topic",
    "will_qos",
    "keep_alive",
    "username",
    "password",
)
_ACCEPTED_FIELDS_KEY = "ancsync.accepted_connect"


def _keep_accepted_fields(session: Session) -> None:
    session.attributes[_ACCEPTED_FIELDS_KEY] = {
        name: getattr(session, name) for name in _RESUMED_FIELDS
    }


def _undo_refused_fields(session: Session) -> None:
    """Give a resumed session back the values of its last accepted CONNECT (no-op if new)."""
    for name, value in session.attributes.get(_ACCEPTED_FIELDS_KEY, {}).items():
        setattr(session, name, value)


# How long a persistent session is kept after its client disconnected (AWS IoT Core's default).
DEFAULT_SESSION_EXPIRY = 3600.0
# The longest persistent session expiry AWS IoT Core can be configured with: 7 days.
MAX_SESSION_EXPIRY = 604800.0
# Where a session keeps the time (the broker's clock) its last connection ended, and the
# handler of its latest accepted connection.
_DISCONNECTED_AT_KEY = "ancsync.disconnected_at"
_CONNECTION_KEY = "ancsync.connection"

# How long a QoS 1 delivery waits for the client's PUBACK (amqtt's own value).
PUBACK_TIMEOUT = 5.0
# How long a stopping connection waits for its reader to end before cancelling it again.
_READER_STOP_RETRY = 0.2


# What becomes of an incoming PUBLISH, decided before amqtt queues (and acknowledges) it:
# taken in, ignored (no ack, not delivered, the client stays), or refused (the client is cut off).
Admission = Literal["admit", "ignore", "refuse"]
# (the session, the packet, (its real topic name, why it is invalid) or None) -> its fate
PublishAdmission = Callable[[Session, PublishPacket, tuple[str, str] | None], Admission]


class PubackFirstHandler(BrokerProtocolHandler):  # type: ignore[misc]  # amqtt is untyped
    """amqtt's broker protocol handler, fixed for two races around QoS 1 deliveries, and with
    a gate for incoming publishes.

    - amqtt registers the PUBACK waiter of an outgoing QoS 1 message only after the PUBLISH is
      written; on loopback the client's PUBACK can be handled during that write, is dropped as
      "unknown", and the delivery then waits for a PUBACK that never comes. We register first.
    - amqtt stops a connection by cancelling its reader task once; on Python 3.11
      ``asyncio.wait_for`` swallows a cancel that lands as a packet (a late PUBACK) arrives, and
      the reader reads on, so the stop waits forever. We cancel until the reader has ended.
    - amqtt acknowledges a QoS 1 publish as soon as it has read it. ``admit_publish`` (set by
      :class:`AwsLikeBroker`) decides each one first; a refused publish gets no PUBACK and ends
      the connection (:meth:`refuse`), as on AWS IoT Core, and nothing the client sends after
      it is taken in. An ignored one (QoS 2) gets no answer at all and is not delivered.
    """

    # Class attributes: amqtt builds the handler and we only change its class.
    admit_publish: PublishAdmission | None = None
    refused = False

    async def handle_publish(self, publish_packet: PublishPacket) -> None:
        if self.refused:
            return  # the connection is ending: nothing after a refusal is taken in
        admit, session, reader = self.admit_publish, self.session, self.reader
        invalid = None
        if isinstance(reader, _CheckedReader):
            invalid = reader.took_invalid_topic(publish_packet.topic_name or "")
        admission = (
            "admit" if admit is None or session is None else admit(session, publish_packet, invalid)
        )
        if admission == "refuse":
            await self.refuse()
        elif admission == "admit":
            await super().handle_publish(publish_packet)

    async def refuse(self) -> None:
        """End this connection for a refused request: no acknowledgement, the socket closed.

        What the client sent before is still delivered (the broker's loop drains its queue);
        what it sends after is ignored. The session ends like any abnormal disconnect (the
        client's last will is published).
        """
        if self.refused:
            return
        self.refused = True
        await self.handle_connection_closed()
        if self.writer is not None:
            with contextlib.suppress(ConnectionError, OSError):
                await self.writer.close()

    async def stop(self) -> None:
        reader = self._reader_task
        if reader is not None and reader is not asyncio.current_task():
            while not reader.done():
                reader.cancel()
                await asyncio.wait([reader], timeout=_READER_STOP_RETRY)
        await super().stop()

    async def _handle_qos1_message_flow(self, app_message: Any) -> None:
        outgoing = app_message.direction == OUTGOING and app_message.qos == QOS_1
        ready = self.session is not None and app_message.packet_id is not None
        if not outgoing or not ready or app_message.puback_packet:
            # incoming messages, and the errors amqtt reports itself, stay amqtt's
            await super()._handle_qos1_message_flow(app_message)
            return
        session = self.session
        packet_id = app_message.packet_id
        session.inflight_out.setdefault(packet_id, app_message)
        puback: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._puback_waiters[packet_id] = puback
        resend_later = False
        try:
            # a message with a PUBLISH already sent is a retry (after a reconnect): flag DUP
            packet = app_message.build_publish_packet(dup=app_message.publish_packet is not None)
            await self._send_packet(packet)
            app_message.publish_packet = packet
            app_message.puback_packet = await asyncio.wait_for(puback, PUBACK_TIMEOUT)
        except TimeoutError:
            log.warning("no PUBACK for packet id %s within %ss", packet_id, PUBACK_TIMEOUT)
            raise
        except asyncio.CancelledError:
            # The connection ended before the PUBACK: a persistent session keeps the message
            # in flight, and amqtt sends it again (DUP) when the client comes back.
            resend_later = session.clean_session is False
            raise
        finally:
            self._puback_waiters.pop(packet_id, None)
            if not resend_later:
                session.inflight_out.pop(packet_id, None)


def server_tls_context(
    listener: ListenerConfig, max_tls_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
) -> ssl.SSLContext:
    """The server TLS context of a TLS listener: amqtt's, with a client certificate required.

    amqtt makes client certificates optional; AWS IoT (and we) require them, chained to the
    listener's CA and within their validity. TLS 1.2 by default because with TLS 1.3 a refused
    client certificate reaches an aiomqtt client only as "Operation timed out", while 1.2 fails
    its handshake at once, visibly.
    """
    context: ssl.SSLContext = Broker._create_ssl_context(listener)
    context.verify_mode = ssl.CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = max_tls_version
    return context


class AwsLikeBroker(Broker):  # type: ignore[misc]  # amqtt is untyped
    """amqtt's broker with the AWS IoT behaviour the emulator needs (see the module docstring).

    ``decisions`` decides every connect, publish and subscribe; ``max_tls_version`` caps TLS.
    """

    def __init__(
        self,
        config: BrokerConfig,
        decisions: BrokerDecisions,
        *,
        max_tls_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
        session_expiry: float = DEFAULT_SESSION_EXPIRY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # amqtt's session monitor forgets expired sessions (in real time, about once a second);
        # whether a session is resumed is decided at connect, with ``clock``.
        config.session_expiry_interval = math.ceil(session_expiry)
        super().__init__(config)
        self._decisions = decisions
        self._max_tls_version = max_tls_version
        self._session_expiry = session_expiry
        self._clock = clock
        # every connection's handler, also those amqtt has already let go while shutting down
        self._handlers: weakref.WeakSet[PubackFirstHandler] = weakref.WeakSet()
        # messages sent to one client (publish_to_client), kept until delivered
        self._client_replies: set[asyncio.Future[Any]] = set()

    def _create_ssl_context(self, listener: ListenerConfig) -> ssl.SSLContext:
        return server_tls_context(listener, self._max_tls_version)

    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        peer = writer.get_extra_info("peername")
        try:
            first = await self._read_connect(reader, writer)
            if first is None:
                return
            checked: _CheckedReader

            def malformed(problem: str) -> None:
                who = _client_ids.get(checked, f"the client at {peer}")
                self._decisions.count_malformed_packet(who, problem)

            checked = _CheckedReader(first, reader, malformed)
            await self.external_connected(checked, StreamWriterAdapter(writer), listener_name)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            # amqtt lets a reset while closing a refused client escape as an asyncio error
            log.debug("client connection ended abruptly: %s", exc)
        except ProtocolViolation:
            writer.close()  # a CONNECT amqtt read past its end (counted and logged)

    async def _read_connect(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes | None:
        """The first packet's bytes, or None after refusing it (the socket closed).

        An MQTT 5 CONNECT gets an MQTT 5 CONNACK 0x84 first. Anything but a CONNECT (MQTT
        3.1.1, 3.1: the first packet must be one), or a CONNECT over :data:`MAX_PACKET_BYTES`,
        is closed at once (counted as a malformed packet). A 3.1.1 CONNECT goes on to amqtt
        unchanged, which refuses an invalid one itself.
        """
        peer = writer.get_extra_info("peername")
        try:
            header = await _read_fixed_header(reader)
        except ProtocolViolation as exc:
            problem: str | None = str(exc)
        else:
            length = _remaining_length(header)
            problem = None
            if header[0] != _CONNECT << 4:
                problem = f"a first packet of type {header[0] >> 4} (first byte {header[0]:#04x})"
            elif length > MAX_PACKET_BYTES:
                problem = f"a CONNECT of {length} bytes (at most {MAX_PACKET_BYTES} are read)"
        if problem is not None:
            self._decisions.count_malformed_packet(f"the client at {peer}", problem)
            writer.close()
            return None
        body = await reader.readexactly(length)
        if len(body) > _LEVEL_OFFSET and body[_LEVEL_OFFSET] == _MQTT5_LEVEL:
            self._decisions.count_refused_protocol(peer)
            writer.write(MQTT5_UNSUPPORTED_CONNACK)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()
            return None
        return header + body

    async def _initialize_client_session(
        self, reader: Any, writer: Any, remote_address: str, remote_port: int
    ) -> tuple[Any, Session]:
        # Decide the connect here, before amqtt's authentication step: by then amqtt has already
        # ended (clean session) or taken over (persistent session) the session of a connected
        # client with the same id, so a refused impostor would cut off the real device.
        tls = writer.get_ssl_info()
        token = _connecting_tls.set(tls)
        try:
            handler, session = await super()._initialize_client_session(
                reader, writer, remote_address, remote_port
            )
        finally:
            _connecting_tls.reset(token)
        # amqtt builds the handler itself (BrokerProtocolHandler.init_from_connect, by name):
        # make it ours before it serves any message.
        handler.__class__ = PubackFirstHandler
        handler.admit_publish = self._admit_publish
        self._handlers.add(handler)
        if isinstance(reader, _CheckedReader):
            _client_ids[reader] = repr(session.client_id)
        # For a resumed persistent session amqtt keeps the will's retain flag of the session's
        # first CONNECT (it copies topic, payload and QoS only): check the will it will publish.
        will_topic = session.will_topic if session.will_flag else None
        identity, reason = self._decisions.decide_connect(
            session.client_id or "", tls, will_topic=will_topic, will_retain=session.will_retain
        )
        if reason is not None:
            # amqtt has already copied this CONNECT's will, keep-alive and credentials into the
            # session it resumes (maybe the real device's): nothing of a refused one may stay.
            _undo_refused_fields(session)
            await _refuse_connection(writer)
            raise MQTTError(f"refused connection of {identity}: {reason}")
        _keep_accepted_fields(session)
        if session.parent == 1 and not self._resumable(session):
            await self._start_afresh(session)
        session.attributes[_CONNECTION_KEY] = handler
        # A resumed session keeps the TLS object of its previous connection: use this one's.
        session.ssl_object = tls
        remember_identity(session, identity)
        return handler, session

    def _resumable(self, session: Session) -> bool:
        """Whether the session amqtt found for a persistent CONNECT is one to resume.

        amqtt resumes any session it still holds for the client id: also a clean one (kept
        until its monitor runs, or still connected) and one past its expiry (up to a second
        later). A clean session ends with its connection, and a persistent one expires
        ``session_expiry`` seconds after its client disconnected (AWS IoT Core: one hour).
        """
        if session.clean_session is not False:
            return False
        ended = session.attributes.get(_DISCONNECTED_AT_KEY)
        connected = session.transitions.state == "connected"
        return connected or ended is None or self._clock() - ended < self._session_expiry

    async def _start_afresh(self, session: Session) -> None:
        """Make the session amqtt resumed a new persistent one: no subscriptions, nothing
        queued for the client, session present 0 in the CONNACK.

        What the client itself sent before (its delivery queue) is still delivered.
        """
        log.debug("client %r starts a new persistent session", session.client_id)
        session.clean_session = False
        session.parent = 0
        session.attributes.pop(_DISCONNECTED_AT_KEY, None)
        await self._del_all_subscriptions(session)
        while not session.retained_messages.empty():
            session.retained_messages.get_nowait()
        session.inflight_out.clear()
        session.inflight_in.clear()

    async def _publish_session_retained_messages(self, session: Session) -> None:
        """Send what was queued for a persistent session while its client was away.

        amqtt sends these flagged *retained*; they are ordinary messages (MQTT 3.1.1, AWS IoT
        Core, mosquitto), so they go out without the flag, in the order they were queued.
        """
        handler = self._get_handler(session)
        if handler is None:
            return
        tasks = []
        while not session.retained_messages.empty():
            queued = session.retained_messages.get_nowait()
            publish = handler.mqtt_publish(queued.topic, queued.data, queued.qos, retain=False)
            tasks.append(asyncio.ensure_future(publish))
        if tasks:
            await asyncio.wait(tasks)

    async def disconnect_certificate(self, certificate_id: str, status: str) -> int:
        """Drop every connection made with ``certificate_id``, now ``status`` (e.g. REVOKED).

        Each is recorded (:meth:`BrokerDecisions.record_certificate_disconnect`) and ended like
        a connection refused for a policy violation (:meth:`PubackFirstHandler.refuse`).
        Returns how many were dropped.
        """
        dropped = 0
        for session, _handler in list(self._sessions.values()):
            handler = session.attributes.get(_CONNECTION_KEY)
            identity = identity_of(session)
            if (
                identity.certificate_id != certificate_id
                or session.transitions.state != "connected"
                or not isinstance(handler, PubackFirstHandler)
                or handler.refused
            ):
                continue
            self._decisions.record_certificate_disconnect(identity, status)
            await handler.refuse()
            dropped += 1
        return dropped

    def publish_to_client(
        self, identity: ClientIdentity, topic: str, payload: bytes, qos: int
    ) -> bool:
        """Send one message to the connection of ``identity`` only, if a subscription of its
        matches ``topic`` (AWS answers a fleet provisioning request on the requesting
        connection alone). Returns whether it was queued for that client."""
        session, _handler = self._sessions.get(identity.client_id, (None, None))
        if session is None or session.transitions.state != "connected":
            return False
        handler = session.attributes.get(_CONNECTION_KEY)
        if handler is None or identity_of(session).certificate_id != identity.certificate_id:
            return False
        granted = [
            sub_qos
            for topic_filter, subscriptions in self._subscriptions.items()
            if self._matches(topic, topic_filter)
            for subscriber, sub_qos in subscriptions
            if subscriber is session
        ]
        if not granted:
            return False
        task = asyncio.ensure_future(
            handler.mqtt_publish(topic, payload, min(qos, max(granted)), retain=False)
        )
        self._client_replies.add(task)
        task.add_done_callback(self._client_replies.discard)
        return True

    def bound_ports(self) -> dict[str, int]:
        """The port each listener bound, by amqtt's listener name."""
        return {
            name: server.instance.sockets[0].getsockname()[1]
            for name, server in self._servers.items()
        }

    async def shutdown_within(self, seconds: float) -> None:
        """amqtt's shutdown, but after ``seconds`` close whatever is left (logged) and return.

        After a failed or interrupted start it closes the listeners that were bound.
        """
        if self.transitions.state != "started":
            await self._close_remaining()
            return
        try:
            await asyncio.wait_for(self.shutdown(), seconds)
        except TimeoutError:
            log.warning(
                "the broker did not shut down within %ss; closing its remaining connections",
                seconds,
            )
            await self._close_remaining()

    async def _close_remaining(self) -> None:
        for handler in list(self._handlers):
            if handler.writer is not None:
                handler.writer._writer.transport.abort()
            if handler._reader_task is not None:
                handler._reader_task.cancel()
        for task in (self._broadcast_task, self._session_monitor_task):
            if task is not None:
                task.cancel()
        for server in self._servers.values():
            await server.close_instance()

    async def _delete_session(self, client_id: str) -> None:
        """amqtt's end of a session for a clean CONNECT with its client id, and then

        - the connection still using it is closed (AWS: a second connection with the same
          client id disconnects the first; amqtt left both connected), and
        - what that connection had sent is still delivered (amqtt emptied its queue).
        """
        tls = _connecting_tls.get(_NOT_CONNECTING)
        if tls is not _NOT_CONNECTING and self._decisions.would_refuse(client_id, tls):
            return  # keep the session of the client already connected with this id
        session, handler = self._sessions.get(client_id, (None, None))
        if session is None:
            await super()._delete_session(client_id)
            return
        queue = session.delivered_message_queue
        sent = [queue.get_nowait() for _ in range(queue.qsize())]
        await super()._delete_session(client_id)
        for message in sent:
            queue.put_nowait(message)  # the old connection's loop delivers them
        if handler is not None and session.transitions.state == "connected":
            log.info("a new connection of %r disconnects the previous one", client_id)
            await handler.handle_connection_closed()
            await handler.stop()

    async def _client_message_loop(self, client_session: Session, handler: Any) -> None:
        """amqtt's loop over one client's packets, except that nothing acknowledged is lost.

        amqtt PUBACKs a QoS 1 publish once it is in the session's delivery queue, and its loop
        ended at the client's disconnect with the rest of that queue undelivered (a client
        that published fast and left at once lost a third of its acknowledged messages). Here
        a disconnect first broadcasts everything already queued (:meth:`_deliver_queued`),
        then ends the session as amqtt does (its will, if the disconnect was abnormal, last).
        """
        disconnect_waiter = asyncio.ensure_future(handler.wait_disconnect())
        subscribe_waiter = asyncio.ensure_future(handler.get_next_pending_subscription())
        unsubscribe_waiter = asyncio.ensure_future(handler.get_next_pending_unsubscription())
        wait_deliver = asyncio.ensure_future(handler.mqtt_deliver_next_message())
        waiters = [disconnect_waiter, subscribe_waiter, unsubscribe_waiter, wait_deliver]
        try:
            while True:
                done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                if subscribe_waiter in done:
                    await self._handle_subscription(client_session, handler, subscribe_waiter)
                    subscribe_waiter = asyncio.ensure_future(
                        handler.get_next_pending_subscription()
                    )
                if unsubscribe_waiter in done:
                    await self._handle_unsubscription(client_session, handler, unsubscribe_waiter)
                    unsubscribe_waiter = asyncio.ensure_future(
                        handler.get_next_pending_unsubscription()
                    )
                if wait_deliver in done:
                    await self._handle_message_delivery(client_session, handler, wait_deliver)
                    wait_deliver = asyncio.ensure_future(handler.mqtt_deliver_next_message())
                waiters = [disconnect_waiter, subscribe_waiter, unsubscribe_waiter, wait_deliver]
                if disconnect_waiter in done:
                    break
            # A cancelled wait for the next message leaves that message in the queue.
            wait_deliver.cancel()
            await asyncio.gather(wait_deliver, return_exceptions=True)
            await self._deliver_queued(client_session, handler)
            await self._end_connection(client_session, handler, disconnect_waiter)
        except asyncio.CancelledError:
            log.debug("the message loop of %r was cancelled", client_session.client_id)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def _end_connection(
        self, client_session: Session, handler: Any, disconnect_waiter: asyncio.Future[Any]
    ) -> None:
        """amqtt's end of a connection (the will, the handler stopped, the session marked
        disconnected), and the time it ended, for the session's expiry.

        When a new connection has taken the session over, the session stays connected: amqtt
        marked it disconnected, and the new connection then received nothing.
        """
        await self._handle_disconnect(client_session, handler, disconnect_waiter)
        newer = client_session.attributes.get(_CONNECTION_KEY)
        if newer is not None and newer is not handler:
            # taken over by a new connection with the same client id: the session lives on
            if client_session.transitions.state == "disconnected":
                client_session.transitions.connect()
            return
        client_session.attributes[_DISCONNECTED_AT_KEY] = self._clock()

    async def _deliver_queued(self, client_session: Session, handler: Any) -> None:
        """Deliver every message still queued from a client that has disconnected.

        The queue is emptied into a list first (and again until it stays empty): amqtt clears
        a session's queues when the same client id comes back with a clean session.
        """
        queue = client_session.delivered_message_queue
        delivered = 0
        while not queue.empty():
            batch = [queue.get_nowait() for _ in range(queue.qsize())]
            for message in batch:
                done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                done.set_result(message)
                await self._handle_message_delivery(client_session, handler, done)
            delivered += len(batch)
        if delivered:
            log.debug(
                "delivered %d message(s) %r had sent before it disconnected",
                delivered,
                client_session.client_id,
            )

    def _admit_publish(
        self, session: Session, packet: PublishPacket, invalid_topic: tuple[str, str] | None
    ) -> Admission:
        """Whether an incoming PUBLISH is taken in (queued, acknowledged), before amqtt sees it.

        A publish whose topic name is invalid (``invalid_topic``: not UTF-8, a wildcard, U+0000;
        see :class:`_CheckedReader`) or whose payload is over 128 KB
        (:data:`~ancsync.codec.MAX_PAYLOAD_BYTES`, AWS IoT Core's limit) is refused (counted,
        logged). A QoS 2 publish is ignored: no PUBREC, not delivered, counted (AWS IoT Core:
        "QoS 0 and 1 only; QoS 2 gets no ack"). A publish the authorizer denies is refused (recorded
        as a policy violation); so is one on a `$` topic no service answers or on an invalid
        topic, which amqtt would refuse only after acknowledging it. The handler then ends the
        connection.
        """
        topic: str = packet.topic_name or ""
        identity = identity_of(session)
        if invalid_topic is not None:
            real_topic, why = invalid_topic
            self._decisions.count_refused_publish(identity, real_topic, f"which is {why}")
            return "refuse"
        size = len(packet.data or b"")
        if size > MAX_PAYLOAD_BYTES:
            self._decisions.count_too_large_publish(identity, topic, size)
            return "refuse"
        if packet.qos == QOS_2:
            self._decisions.count_qos2_publish(identity, topic)
            return "ignore"
        reserved = topic.startswith("$") and self._decisions.serves_reserved(topic)
        if not reserved and not _is_ordinary_topic(topic):
            self._decisions.count_refused_publish(identity, topic)
            return "refuse"
        retain = bool(packet.retain_flag)
        if self._decisions.publish_violation(identity, topic, retain=retain) is not None:
            return "refuse"
        return "admit"

    async def _handle_message_delivery(
        self, client_session: Session, handler: Any, wait_deliver: asyncio.Future[Any]
    ) -> bool:
        # Every message here passed _admit_publish (authorised, a served or ordinary topic).
        message = wait_deliver.result()
        topic: str = getattr(message, "topic", None) or ""
        if topic.startswith("$") and self._decisions.serves_reserved(topic):
            payload = bytes(message.data or b"")
            await self._decisions.serve_reserved(identity_of(client_session), topic, payload)
            return True
        # amqtt refuses an invalid topic or any other `$` topic by no longer serving the client,
        # but leaves its socket open (and answering pings): disconnect it for real instead.
        if not await super()._handle_message_delivery(client_session, handler, wait_deliver):
            self._decisions.count_refused_publish(identity_of(client_session), topic)
            await handler.handle_connection_closed()
            return True  # the client loop now sees the disconnection and ends the session
        if _is_ordinary_topic(topic):
            payload = bytes(message.data or b"")
            await self._decisions.notify_listeners(identity_of(client_session), topic, payload)
        return True

    async def _handle_subscription(
        self, client_session: Session, handler: Any, subscribe_waiter: asyncio.Future[Any]
    ) -> None:
        """Leave a SUBSCRIBE asking QoS 2 for any filter unanswered (no SUBACK, nothing
        subscribed, counted: AWS IoT Core's "QoS 2 gets no ack"); refuse one with any filter the
        authorizer denies: no SUBACK, disconnected (AWS IoT Core on MQTT 3.1.1), every denied
        filter recorded as a violation."""
        identity = identity_of(client_session)
        requested = subscribe_waiter.result().topics
        filters = [topic_filter for topic_filter, _qos in requested]
        if any(qos == QOS_2 for _filter, qos in requested):
            self._decisions.count_qos2_subscribe(identity, filters)
            return
        denied = [f for f in filters if self._decisions.subscribe_violation(identity, f)]
        if denied:
            await handler.refuse()
            return
        await super()._handle_subscription(client_session, handler, subscribe_waiter)
