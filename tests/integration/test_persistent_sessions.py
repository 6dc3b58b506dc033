"""Persistent sessions (clean_session=False) as AWS IoT Core keeps them.

- session present is 0 after a clean session with the same client id and 1 when a persistent
  one is resumed within its expiry (amqtt resumed a clean session it still held, and then lost
  what was queued for it);
- QoS 1 messages queued while the client was away arrive as ordinary messages, without the
  retain flag (amqtt flagged them retained), and one in flight at the disconnect comes again;
- a session expires ``session_expiry`` seconds after its client left (default one hour).

Session present is read with paho (aiomqtt does not expose it), in a worker thread.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import partial

import aiomqtt
import anyio
import paho.mqtt.client as paho
import pytest
from helpers import HOST, client_tls_context, device_client, next_message, operator_client
from paho.mqtt.enums import CallbackAPIVersion
from raw_mqtt import PUBLISH, puback_packet, raw_device, subscribe_packet

from ancsync.emulator.broker import DEFAULT_SESSION_EXPIRY, EmbeddedBroker
from ancsync.emulator.certs import DevCerts
from ancsync.emulator.server import Emulator
from ancsync.errors import ConfigError

DEVICE = "anc-device-001"
COMMANDS = f"anc/devices/{DEVICE}/commands"
TIMEOUT = 10


@dataclass
class PahoVisit:
    """What one paho connection saw: the CONNACK's session-present flag and its messages."""

    session_present: bool = False
    messages: list[tuple[str, bytes, int, bool]] = field(default_factory=list)


def _visit(
    port: int,
    certs: DevCerts,
    *,
    clean_session: bool,
    subscribe: str | None = None,
    expect: int = 0,
) -> PahoVisit:
    """Connect as DEVICE with paho, optionally subscribe (QoS 1), wait for ``expect`` messages,
    disconnect cleanly. Runs in a worker thread; every wait is bounded."""
    visit = PahoVisit()
    connected, subscribed, received = threading.Event(), threading.Event(), threading.Event()
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=DEVICE,
        clean_session=clean_session,
        protocol=paho.MQTTv311,
    )
    client.tls_set_context(client_tls_context(certs.ca, certs.device(DEVICE)))

    def on_connect(*args: object) -> None:
        flags = args[2]
        visit.session_present = bool(flags.session_present)  # type: ignore[attr-defined]
        connected.set()

    def on_message(_client: object, _userdata: object, message: paho.MQTTMessage) -> None:
        visit.messages.append((message.topic, message.payload, message.qos, bool(message.retain)))
        if len(visit.messages) >= expect:
            received.set()

    client.on_connect = on_connect
    client.on_subscribe = lambda *args: subscribed.set()
    client.on_message = on_message
    client.connect(HOST, port, keepalive=60)
    client.loop_start()
    try:
        assert connected.wait(TIMEOUT), "no CONNACK"
        if subscribe is not None:
            client.subscribe(subscribe, qos=1)
            assert subscribed.wait(TIMEOUT), "no SUBACK"
        if expect:
            assert received.wait(TIMEOUT), f"got {len(visit.messages)} of {expect} messages"
    finally:
        client.disconnect()
        client.loop_stop()
    return visit


async def visit(
    port: int,
    certs: DevCerts,
    *,
    clean_session: bool,
    subscribe: str | None = None,
    expect: int = 0,
) -> PahoVisit:
    call = partial(
        _visit, port, certs, clean_session=clean_session, subscribe=subscribe, expect=expect
    )
    return await anyio.to_thread.run_sync(call)


async def send_command(emulator: Emulator, payload: bytes) -> None:
    async with operator_client(emulator.port, emulator.certs, "cloud") as cloud:
        await cloud.publish(COMMANDS, payload, qos=1)


async def test_a_persistent_session_after_a_clean_one_starts_afresh_then_resumes(
    emulator: Emulator,
) -> None:
    port, certs = emulator.port, emulator.certs
    with anyio.fail_after(TIMEOUT):
        async with device_client(port, certs, DEVICE) as clean:  # clean session, right before
            await clean.subscribe(COMMANDS, qos=1)
        first = await visit(port, certs, clean_session=False, subscribe=COMMANDS)
        await send_command(emulator, b"while you were away")
        second = await visit(port, certs, clean_session=False, expect=1)
    assert first.session_present is False  # the clean session ended with its connection
    assert second.session_present is True
    assert second.messages == [(COMMANDS, b"while you were away", 1, False)]


async def test_a_clean_session_ends_a_persistent_one(emulator: Emulator) -> None:
    port, certs = emulator.port, emulator.certs
    with anyio.fail_after(TIMEOUT):
        await visit(port, certs, clean_session=False, subscribe=COMMANDS)
        clean = await visit(port, certs, clean_session=True)
        await send_command(emulator, b"nobody subscribed")
        persistent = await visit(port, certs, clean_session=False)
        async with device_client(port, certs, DEVICE) as device:  # nothing is queued: a marker
            await device.subscribe(COMMANDS, qos=1)
            await send_command(emulator, b"marker")
            message = await next_message(device)
    assert (clean.session_present, persistent.session_present) == (False, False)
    assert persistent.messages == []
    assert message.payload == b"marker"


async def test_queued_messages_arrive_in_order_without_the_retain_flag(
    emulator: Emulator,
) -> None:
    port, certs = emulator.port, emulator.certs
    with anyio.fail_after(TIMEOUT):
        async with device_client(port, certs, DEVICE, clean_session=False) as device:
            await device.subscribe(COMMANDS, qos=1)
        for n in range(3):
            await send_command(emulator, f"command {n}".encode())
        async with device_client(port, certs, DEVICE, clean_session=False) as device:
            messages = [await next_message(device) for _ in range(3)]
    assert [m.payload for m in messages] == [b"command 0", b"command 1", b"command 2"]
    assert [(m.qos, m.retain) for m in messages] == [(1, False)] * 3


async def test_a_message_in_flight_at_the_disconnect_is_sent_again(emulator: Emulator) -> None:
    """Raw packets: the device leaves without acknowledging a QoS 1 delivery; when it comes
    back the broker sends it again, flagged DUP."""
    port, certs = emulator.port, emulator.certs
    with anyio.fail_after(TIMEOUT):
        async with raw_device(port, certs, DEVICE, clean_session=False) as raw:
            await raw.send(subscribe_packet(1, [(COMMANDS, 1)]))
            await raw.next_packet()  # SUBACK
            await send_command(emulator, b"unacknowledged")
            first, _ = await raw.next_packet()  # the PUBLISH, never acknowledged
        async with raw_device(port, certs, DEVICE, clean_session=False) as raw:
            again, body = await raw.next_packet()
            packet_id = body[2 + len(COMMANDS) : 4 + len(COMMANDS)]
            await raw.send(puback_packet(int.from_bytes(packet_id, "big")))
            present = raw.session_present
    assert first & 0xF0 == PUBLISH
    assert (again & 0xF0, again & 0x08, (again >> 1) & 3, again & 1) == (PUBLISH, 0x08, 1, 0)
    assert body.endswith(b"unacknowledged")
    assert present


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("away", "resumed"), [(59.0, True), (60.0, False)])
async def test_a_persistent_session_expires(
    dev_certs: DevCerts, away: float, resumed: bool
) -> None:
    clock = FakeClock()
    with anyio.fail_after(TIMEOUT):
        async with EmbeddedBroker(dev_certs, session_expiry=60, clock=clock) as broker:
            await visit(broker.port, dev_certs, clean_session=False, subscribe=COMMANDS)
            async with operator_client(broker.port, dev_certs, "cloud") as cloud:
                await cloud.publish(COMMANDS, b"queued", qos=1)
            clock.now += away
            back = await visit(broker.port, dev_certs, clean_session=False, expect=int(resumed))
    assert back.session_present is resumed
    assert back.messages == ([(COMMANDS, b"queued", 1, False)] if resumed else [])


@pytest.mark.parametrize("clean_session", [True, False], ids=["clean", "persistent"])
async def test_a_second_connection_with_the_client_id_disconnects_the_first(
    emulator: Emulator, clean_session: bool
) -> None:
    """AWS: a second connection with the same client id disconnects the first. amqtt left the
    first connected when the second asked for a clean session, and when it took a persistent
    session over, marked the session disconnected, so the new connection received nothing."""
    port, certs = emulator.port, emulator.certs
    with anyio.fail_after(TIMEOUT):
        async with device_client(port, certs, DEVICE, clean_session=False) as first:
            await first.subscribe(COMMANDS, qos=1)
            second = device_client(port, certs, DEVICE, clean_session=clean_session)
            async with second:
                with pytest.raises(aiomqtt.MqttError, match="Disconnected"):
                    await next_message(first)
                if clean_session:  # a new session: nothing subscribed
                    await second.subscribe(COMMANDS, qos=1)
                await send_command(emulator, b"for the new connection")
                message = await next_message(second)
    assert message.payload == b"for the new connection"


async def test_the_expiry_is_an_hour_by_default_and_configurable(tmp_path: object) -> None:
    assert DEFAULT_SESSION_EXPIRY == 3600.0
    assert Emulator("unused", session_expiry=120).session_expiry == 120
    with pytest.raises(ConfigError, match="session_expiry 0 is not a duration"):
        EmbeddedBroker(None, plain_port=0, session_expiry=0)
