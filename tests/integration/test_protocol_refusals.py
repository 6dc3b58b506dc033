"""MQTT 5 clients against the emulator, which speaks MQTT 3.1.1 only: a prompt, readable refusal.

AWS IoT Core serves MQTT 5; the emulator answers an MQTT 5 CONNECT with an MQTT 5 CONNACK, reason
0x84 (unsupported protocol version), and closes the socket, so a client fails at once with that
reason instead of waiting for its own timeout.
"""

from __future__ import annotations

import ssl
import time

import anyio
import anyio.abc
import pytest
from helpers import HOST, device_client, next_message

from ancsync.emulator.amqtt_broker import MQTT5_UNSUPPORTED_CONNACK
from ancsync.emulator.broker import EmbeddedBroker
from ancsync.emulator.certs import DevCerts

DEVICE = "anc-device-001"
TIMEOUT = 5
# well under a second in practice; the bound leaves room for a loaded 2-core machine
PROMPT = 3.0


def _connect_packet(properties: bytes) -> bytes:
    """An MQTT 5 CONNECT, clean start, keep-alive 60, client id DEVICE, with ``properties``."""
    client_id = DEVICE.encode()
    variable = b"\x00\x04MQTT\x05\x02\x00\x3c" + bytes([len(properties)]) + properties
    payload = len(client_id).to_bytes(2, "big") + client_id
    body = variable + payload
    return bytes([0x10, len(body)]) + body


def _tls_context(dev_certs: DevCerts) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(dev_certs.ca))
    pair = dev_certs.device(DEVICE)
    context.load_cert_chain(str(pair.cert), str(pair.key))
    context.check_hostname = False
    return context


async def _read_until_closed(stream: anyio.abc.ByteStream) -> bytes:
    """Everything the peer sends until it closes the connection (bound it with fail_after)."""
    received = b""
    while True:
        try:
            received += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return received


@pytest.mark.parametrize(
    "properties",
    [
        pytest.param(b"\x21\x00\x14", id="with-properties"),  # receive maximum 20, as awscrt
        pytest.param(b"", id="no-properties"),
    ],
)
async def test_mqtt5_connect_gets_mqtt5_connack_0x84_and_the_socket_closes(
    broker: tuple[EmbeddedBroker, object], dev_certs: DevCerts, properties: bytes
) -> None:
    emulator, _ = broker
    with anyio.fail_after(TIMEOUT):
        stream = await anyio.connect_tcp(
            HOST, emulator.port, ssl_context=_tls_context(dev_certs), tls_standard_compatible=False
        )
        async with stream:
            await stream.send(_connect_packet(properties))
            received = await _read_until_closed(stream)
    assert received == MQTT5_UNSUPPORTED_CONNACK
    assert emulator.stats()["mqtt5_refused"] == 1


async def test_mosquitto_pub_v5_fails_fast_with_the_reason(
    broker: tuple[EmbeddedBroker, object], dev_certs: DevCerts
) -> None:
    emulator, _ = broker
    pair = dev_certs.device(DEVICE)
    command = [
        "mosquitto_pub", "-V", "5", "-h", HOST, "-p", str(emulator.port), "-i", DEVICE,
        "--cafile", str(dev_certs.ca), "--cert", str(pair.cert), "--key", str(pair.key),
        "--insecure", "-t", f"anc/devices/{DEVICE}/status", "-m", "hello", "-q", "1",
    ]  # fmt: skip
    started = time.monotonic()
    result = await anyio.run_process(command, check=False)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert "unsupported protocol version" in (result.stderr + result.stdout).decode().lower()
    assert elapsed < PROMPT


async def test_a_healthy_311_client_is_served_while_mqtt5_clients_are_refused(
    broker: tuple[EmbeddedBroker, object], dev_certs: DevCerts
) -> None:
    emulator, _ = broker
    topic = f"anc/devices/{DEVICE}/status"
    with anyio.fail_after(TIMEOUT):
        async with device_client(emulator.port, dev_certs, DEVICE, clean_session=True) as client:
            await client.subscribe(topic, qos=1)
            stream = await anyio.connect_tcp(
                HOST,
                emulator.port,
                ssl_context=_tls_context(dev_certs),
                tls_standard_compatible=False,
            )
            async with stream:
                await stream.send(_connect_packet(b""))
                assert await stream.receive() == MQTT5_UNSUPPORTED_CONNACK
            await client.publish(topic, b"still served", qos=1)
            message = await next_message(client)
    assert message.payload == b"still served"
