"""QoS 1 deliveries from the broker and its shutdown: the amqtt races the emulator works around.

See ``PubackFirstHandler`` in ``ancsync/emulator/amqtt_broker.py``.
"""

from __future__ import annotations

import logging
import struct

import anyio
import pytest
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream
from device import device_connection

from ancsync import DeviceShadowSync
from ancsync.emulator.broker import EmbeddedBroker
from ancsync.emulator.server import Emulator

TIMEOUT = 10


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + _remaining_length(len(body)) + body


def _string(text: str) -> bytes:
    return struct.pack("!H", len(text)) + text.encode()


async def _read_fixed_header(reader: BufferedByteReceiveStream) -> tuple[int, int]:
    first = (await reader.receive_exactly(1))[0]
    length, shift = 0, 0
    while True:
        digit = (await reader.receive_exactly(1))[0]
        length |= (digit & 0x7F) << shift
        shift += 7
        if not digit & 0x80:
            return first, length


async def _raw_subscriber(port: int, topic: str) -> tuple[SocketStream, BufferedByteReceiveStream]:
    """A hand-written MQTT 3.1.1 client subscribed to ``topic`` at QoS 1 (it acks by hand)."""
    stream = await anyio.connect_tcp("127.0.0.1", port)
    reader = BufferedByteReceiveStream(stream)
    await stream.send(_packet(0x10, _string("MQTT") + b"\x04\x02\x00\x3c" + _string("raw")))
    assert await _read_fixed_header(reader) == (0x20, 2)
    assert (await reader.receive_exactly(2))[1] == 0, "CONNACK refused"
    await stream.send(_packet(0x82, b"\x00\x01" + _string(topic) + b"\x01"))
    assert await _read_fixed_header(reader) == (0x90, 3)
    assert (await reader.receive_exactly(3))[2] == 1, "SUBACK did not grant QoS 1"
    return stream, reader


async def test_a_puback_that_arrives_while_the_broker_still_writes_the_publish_is_not_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The client acks a large QoS 1 message while the broker is still blocked writing it."""
    caplog.set_level(logging.WARNING)
    payload = b"x" * (16 * 1024 * 1024)  # far more than the socket buffers: the write blocks
    with anyio.fail_after(TIMEOUT):
        async with EmbeddedBroker(None, plain_port=0) as broker:
            assert broker.plain_port is not None
            stream, reader = await _raw_subscriber(broker.plain_port, "big")
            async with stream:
                await broker.publish("big", payload, qos=1)
                first, length = await _read_fixed_header(reader)
                assert first & 0xF6 == 0x32, "expected a QoS 1 PUBLISH"
                topic_length = struct.unpack("!H", await reader.receive_exactly(2))[0]
                header = await reader.receive_exactly(topic_length + 2)
                packet_id = header[-2:]
                # ack before reading the rest: the broker is still inside its write
                await stream.send(_packet(0x40, packet_id))
                rest = length - 2 - topic_length - 2
                while rest:
                    rest -= len(await reader.receive(min(rest, 65536)))
                # the broker handles packets in order: its PINGRESP follows the PUBACK's handling
                await stream.send(b"\xc0\x00")
                assert await _read_fixed_header(reader) == (0xD0, 0)
    lost = [r.getMessage() for r in caplog.records if "PUBACK" in r.getMessage()]
    assert lost == [], "the broker lost the client's PUBACK"


async def test_stop_after_a_shadow_get_is_prompt(
    tmp_path: anyio.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The shadow reply's PUBACK arrives as the broker stops: the stop must not wait forever."""
    caplog.set_level(logging.WARNING, logger="ancsync.emulator")
    async with Emulator(tmp_path, port=0) as emulator:
        iot = device_connection(emulator.certs, emulator.port)
        async with iot:
            with anyio.fail_after(TIMEOUT):
                await iot.wait_connected(5)
                await DeviceShadowSync(iot).get()
            with anyio.fail_after(2):
                await emulator.broker.stop()
    assert not [r for r in caplog.records if "did not shut down" in r.getMessage()]


async def test_a_stop_past_its_deadline_cuts_the_connections_and_frees_the_port(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="ancsync.emulator")
    with anyio.fail_after(TIMEOUT):
        # a stop deadline that leaves amqtt's own shutdown no time at all
        broker = EmbeddedBroker(None, plain_port=0, stop_timeout=0.5)
        await broker.start()
        assert broker.plain_port is not None
        stream, reader = await _raw_subscriber(broker.plain_port, "anything")
        async with stream:
            await broker.stop()
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError)):
                await reader.receive()
        async with EmbeddedBroker(None, plain_port=broker.plain_port) as again:
            assert again.plain_port == broker.plain_port
    assert any("did not shut down within 0" in r.getMessage() for r in caplog.records)
