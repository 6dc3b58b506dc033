"""QoS 1 deliveries from the broker and its shutdown: the amqtt races the emulator works around.

See ``PubackFirstHandler`` in ``ancsync/emulator/amqtt_broker.py``.
"""

from __future__ import annotations

import logging
import struct

import anyio
import pytest
from device import device_connection
from raw_mqtt import PINGREQ_PACKET, PINGRESP, SUBACK, puback_packet, raw_plain, subscribe_packet

from ancsync import DeviceShadowSync
from ancsync.emulator.broker import EmbeddedBroker
from ancsync.emulator.server import Emulator

TIMEOUT = 10


async def test_a_puback_that_arrives_while_the_broker_still_writes_the_publish_is_not_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The client acks a large QoS 1 message while the broker is still blocked writing it."""
    caplog.set_level(logging.WARNING)
    payload = b"x" * (16 * 1024 * 1024)  # far more than the socket buffers: the write blocks
    with anyio.fail_after(TIMEOUT):
        async with EmbeddedBroker(None, plain_port=0) as broker:
            assert broker.plain_port is not None
            async with raw_plain(broker.plain_port, "raw") as client:
                await client.send(subscribe_packet(1, [("big", 1)]))
                assert await client.next_packet() == (SUBACK, b"\x00\x01\x01"), "not QoS 1"
                await broker.publish("big", payload, qos=1)
                first, length = await client.next_header()
                assert first & 0xF6 == 0x32, "expected a QoS 1 PUBLISH"
                topic_length = struct.unpack("!H", await client.reader.receive_exactly(2))[0]
                header = await client.reader.receive_exactly(topic_length + 2)
                # ack before reading the rest: the broker is still inside its write
                await client.send(puback_packet(struct.unpack("!H", header[-2:])[0]))
                rest = length - 2 - topic_length - 2
                while rest:
                    rest -= len(await client.reader.receive(min(rest, 65536)))
                # the broker handles packets in order: its PINGRESP follows the PUBACK's handling
                await client.send(PINGREQ_PACKET)
                assert await client.next_packet() == (PINGRESP, b"")
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
        async with raw_plain(broker.plain_port, "raw") as client:
            await client.send(subscribe_packet(1, [("anything", 1)]))
            assert (await client.next_packet())[0] == SUBACK
            await broker.stop()
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError)):
                await client.reader.receive()
        async with EmbeddedBroker(None, plain_port=broker.plain_port) as again:
            assert again.plain_port == broker.plain_port
    assert any("did not shut down within 0" in r.getMessage() for r in caplog.records)
