"""A hand-written MQTT 3.1.1 client (TLS or plain TCP), for tests that must see every packet.

aiomqtt (paho) hides what a broker did not send: a QoS 1 publish or a subscribe without an ack
just times out. These tests need to see "no PUBACK, then the socket closed".
"""

from __future__ import annotations

import ssl
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.abc import ByteStream
from anyio.streams.buffered import BufferedByteReceiveStream
from helpers import HOST

from ancsync.emulator.certs import DevCerts

CONNACK, PUBLISH, PUBACK, PUBREC, SUBACK = 0x20, 0x30, 0x40, 0x50, 0x90


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + remaining_length(len(body)) + body


def string(text: str | bytes) -> bytes:
    """An MQTT string: its length, then its bytes (UTF-8 for a ``str``, as given for ``bytes``)."""
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(data)) + data


def connect_packet(client_id: str, *, clean_session: bool = True, keep_alive: int = 60) -> bytes:
    flags = 0x02 if clean_session else 0x00
    variable = string("MQTT") + bytes([4, flags]) + struct.pack("!H", keep_alive)
    return packet(0x10, variable + string(client_id))


def publish_packet(
    topic: str | bytes, payload: bytes, *, qos: int = 0, packet_id: int = 1, retain: bool = False
) -> bytes:
    first = PUBLISH | (qos << 1) | (1 if retain else 0)
    ident = struct.pack("!H", packet_id) if qos else b""
    return packet(first, string(topic) + ident + payload)


def subscribe_packet(packet_id: int, filters: list[tuple[str | bytes, int]]) -> bytes:
    body = struct.pack("!H", packet_id)
    for topic_filter, qos in filters:
        body += string(topic_filter) + bytes([qos])
    return packet(0x82, body)


def unsubscribe_packet(packet_id: int, filters: list[str | bytes]) -> bytes:
    return packet(0xA2, struct.pack("!H", packet_id) + b"".join(string(f) for f in filters))


def puback_packet(packet_id: int) -> bytes:
    return packet(PUBACK, struct.pack("!H", packet_id))


class RawClient:
    """A connected raw client: send packets, read packets, or read until the broker closes."""

    def __init__(self, stream: ByteStream, session_present: bool) -> None:
        self.stream = stream
        self.reader = BufferedByteReceiveStream(stream)
        self.session_present = session_present

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def next_header(self) -> tuple[int, int]:
        """The next packet's first byte and body length; the body is left in ``reader``."""
        first = (await self.reader.receive_exactly(1))[0]
        length, shift = 0, 0
        while True:
            digit = (await self.reader.receive_exactly(1))[0]
            length |= (digit & 0x7F) << shift
            shift += 7
            if not digit & 0x80:
                return first, length

    async def next_packet(self) -> tuple[int, bytes]:
        """The next packet: (first byte, body). Bound the wait with ``anyio.fail_after``."""
        first, length = await self.next_header()
        return first, await self.reader.receive_exactly(length) if length else b""

    async def connect(
        self, client_id: str, *, clean_session: bool = True, keep_alive: int = 60
    ) -> None:
        """Send CONNECT and check the CONNACK accepts it (sets ``session_present``)."""
        await self.send(
            connect_packet(client_id, clean_session=clean_session, keep_alive=keep_alive)
        )
        first, body = await self.next_packet()
        assert first == CONNACK, f"expected a CONNACK, got {first:#x}"
        assert body[1] == 0, f"CONNACK refused with return code {body[1]}"
        self.session_present = bool(body[0] & 1)

    async def packets_until_closed(self) -> list[tuple[int, bytes]]:
        """Every packet the broker sends until it closes the connection."""
        received = []
        while True:
            try:
                received.append(await self.next_packet())
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
                return received
            except ssl.SSLError:  # a TLS connection cut without close_notify
                return received


def device_tls(certs: DevCerts, thing: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca))
    pair = certs.device(thing)
    context.load_cert_chain(str(pair.cert), str(pair.key))
    return context


@asynccontextmanager
async def raw_tls(port: int, certs: DevCerts, thing: str) -> AsyncIterator[RawClient]:
    """A TLS connection with ``thing``'s certificate and nothing sent on it yet (no CONNECT)."""
    stream = await anyio.connect_tcp(
        HOST, port, ssl_context=device_tls(certs, thing), tls_standard_compatible=False
    )
    async with stream:
        yield RawClient(stream, session_present=False)


@asynccontextmanager
async def raw_device(
    port: int, certs: DevCerts, thing: str, *, clean_session: bool = True, keep_alive: int = 60
) -> AsyncIterator[RawClient]:
    """A raw MQTT 3.1.1 connection over TLS as ``thing`` (its certificate, its client id)."""
    async with raw_tls(port, certs, thing) as client:
        await client.connect(thing, clean_session=clean_session, keep_alive=keep_alive)
        yield client


@asynccontextmanager
async def raw_plain(port: int, client_id: str) -> AsyncIterator[RawClient]:
    """A raw MQTT 3.1.1 connection over plain TCP (the broker's ``plain_port``)."""
    async with await anyio.connect_tcp(HOST, port) as stream:
        client = RawClient(stream, session_present=False)
        await client.connect(client_id)
        yield client


PINGREQ_PACKET = bytes([0xC0, 0x00])
PINGRESP = 0xD0
