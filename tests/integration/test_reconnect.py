"""Reconnection for real: broker restarts, cut links, half-open links, backoff, priority after
reconnect, persistent sessions. Faults come from a real broker or the fault proxy in between."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream
from device import THING, device_connection
from faultproxy import FaultProxy
from helpers import MosquittoBroker, mqtt_client

from ancsync import BackoffPolicy, ConnectionEvent, Lane
from ancsync.emulator.broker import EmbeddedBroker
from ancsync.emulator.certs import DevCerts
from ancsync.mqtt.backoff import Backoff
from ancsync.topics import commands_topic, emergency_topic, telemetry_topic

# Every test here runs on both transports (IOT_TRANSPORT=paho, then crt).
pytestmark = pytest.mark.usefixtures("each_transport")

# Short delays so a reconnect takes milliseconds; the policy shape is what is tested.
FAST = BackoffPolicy(base=0.02, cap=0.1)


async def next_event(
    events: MemoryObjectReceiveStream[ConnectionEvent], kind: str
) -> ConnectionEvent:
    """The next event of ``kind`` (skipping others)."""
    async for event in events:
        if event.kind == kind:
            return event
    raise AssertionError(f"the event stream ended before a {kind!r} event")


async def test_broker_restart_on_the_same_port(dev_certs: DevCerts) -> None:
    """The session reconnects by itself, resubscribes, and sends what was queued while down."""
    received: list[int] = []
    all_received = anyio.Event()

    def on_echo(topic: str, payload: dict[str, Any]) -> None:
        received.append(payload["n"])
        if len(received) == 5:
            all_received.set()

    broker = EmbeddedBroker(dev_certs)
    await broker.start()
    port = broker.port
    try:
        with anyio.fail_after(15):
            async with device_connection(dev_certs, port, reconnect=FAST) as iot:
                iot.subscribe("anc/echo/#", on_echo)
                with iot.events() as events:
                    await iot.wait_connected()
                    await broker.stop()
                    await next_event(events, "disconnected")
                    assert not iot.connected

                    handles = [await iot.publish(f"anc/echo/{n}", {"n": n}) for n in range(5)]
                    broker = EmbeddedBroker(dev_certs, port=port)
                    await broker.start()

                    await next_event(events, "connected")
                    for handle in handles:
                        await handle.delivered()
                    await all_received.wait()
                assert received == [0, 1, 2, 3, 4]
                status = iot.get_status()
                assert status["reconnect_count"] == 1
                assert status["subscriptions"] == 1
    finally:
        await broker.stop()


async def test_reconnects_after_a_cut(dev_certs: DevCerts, tls_broker: EmbeddedBroker) -> None:
    with anyio.fail_after(10):
        async with (
            FaultProxy(tls_broker.port) as proxy,
            device_connection(dev_certs, proxy.port, reconnect=FAST) as iot,
        ):
            with iot.events() as events:
                await iot.wait_connected()
                await proxy.cut()
                lost = await next_event(events, "disconnected")
                assert "connection lost" in str(lost.error)
                await next_event(events, "connected")
            handle = await iot.publish("anc/after-cut", {"ok": True})
            await handle.delivered()
            assert proxy.accepted == 2
            assert iot.get_status()["reconnect_count"] == 1


async def test_half_open_link_detected_within_one_and_a_half_keep_alives(
    dev_certs: DevCerts, tls_broker: EmbeddedBroker
) -> None:
    """A link that silently swallows traffic is declared dead at about 1.5 x keep-alive (paho
    alone waits 2x), and the message sent into it is delivered after the reconnect."""
    keep_alive = 2
    with anyio.fail_after(15):
        async with (
            FaultProxy(tls_broker.port) as proxy,
            device_connection(dev_certs, proxy.port, keep_alive=keep_alive, reconnect=FAST) as iot,
        ):
            with iot.events() as events:
                await iot.wait_connected()
                # A PUBACK just arrived: the keep-alive clock starts now.
                await (await iot.publish("anc/before", {"n": 0})).delivered()
                proxy.swallow()
                started = anyio.current_time()
                stuck = await iot.publish("anc/into-the-void", {"n": 1})

                lost = await next_event(events, "disconnected")
                detected_after = anyio.current_time() - started
                assert "half-open" in str(lost.error)
                # 1.5 x keep-alive plus two watchdog ticks (keep-alive / 8) and some scheduling
                # slack; paho alone would take at least 2 x keep-alive (4 s).
                assert detected_after < 1.5 * keep_alive + keep_alive / 4 + 0.45

                await next_event(events, "connected")
                await stuck.delivered()
            assert iot.get_status()["lanes"]["telemetry"]["requeued"] == 1


async def test_a_slow_link_is_not_taken_for_a_dead_one(
    dev_certs: DevCerts, tls_broker: EmbeddedBroker
) -> None:
    """A round trip of 0.3 s stays under the watchdog's half keep-alive (0.5 s): keep-alive
    pings keep being answered and the connection stays up through several of them."""
    with anyio.fail_after(10):
        async with (
            FaultProxy(tls_broker.port) as proxy,
            device_connection(dev_certs, proxy.port, keep_alive=1, reconnect=FAST) as iot,
        ):
            with iot.events() as events:
                await iot.wait_connected()
                proxy.delay = 0.15  # each way
                # Watch for 3 keep-alive periods: no disconnect may happen in that window.
                with anyio.move_on_after(3):
                    lost = await next_event(events, "disconnected")
                    pytest.fail(f"a slow link was declared dead: {lost.error}")
                await (await iot.publish("anc/slow-link", {"ok": True})).delivered()
            assert iot.get_status()["reconnect_count"] == 0


async def test_backoff_grows_and_is_capped_then_resets(
    dev_certs: DevCerts, tls_broker: EmbeddedBroker
) -> None:
    """Delays double from base to cap while the broker is unreachable (no jitter here: the random
    source returns 1), and start from base again after a connection that lasted."""
    backoff = Backoff(BackoffPolicy(base=0.01, cap=0.04, reset_after=0), random=lambda: 1.0)
    with anyio.fail_after(10):
        async with FaultProxy(tls_broker.port) as proxy:
            proxy.refuse = True
            async with device_connection(dev_certs, proxy.port, reconnect=backoff) as iot:
                with iot.events() as events:
                    delays = [(await next_event(events, "disconnected")).retry_in for _ in range(6)]
                    assert delays == [0.01, 0.02, 0.04, 0.04, 0.04, 0.04]
                    assert proxy.accepted >= 6

                    proxy.refuse = False
                    await next_event(events, "connected")
                    await proxy.cut()
                    after_connection = await next_event(events, "disconnected")
                    assert after_connection.retry_in == 0.01


async def test_emergency_goes_first_after_reconnect(
    dev_certs: DevCerts, tls_broker: EmbeddedBroker
) -> None:
    """With the link down, 500 telemetry messages and then one emergency are queued; after the
    reconnect the cloud sees the emergency before any telemetry."""
    operator = mqtt_client(tls_broker.port, dev_certs, dev_certs.operator, "operator")
    with anyio.fail_after(15):
        async with (
            operator,
            FaultProxy(tls_broker.port) as proxy,
            device_connection(
                dev_certs, proxy.port, reconnect=FAST, rate_limit=(100_000, 100 * 1024 * 1024)
            ) as iot,
        ):
            await operator.subscribe(f"anc/telemetry/{THING}/#", qos=1)
            await operator.subscribe(emergency_topic(THING), qos=1)
            with iot.events() as events:
                await iot.wait_connected()
                proxy.refuse = True
                await proxy.cut()
                await next_event(events, "disconnected")

                for n in range(500):
                    await iot.publish(telemetry_topic(THING, "anc"), {"n": n})
                await iot.publish(emergency_topic(THING), {"fire": True}, lane=Lane.EMERGENCY)
                proxy.refuse = False

                first = await anext(aiter(operator.messages))
                assert first.topic.value == emergency_topic(THING)
                second = await anext(aiter(operator.messages))
                assert second.payload == b'{"n":0}'


@pytest.mark.mosquitto
async def test_persistent_session_receives_what_was_sent_while_offline(
    dev_certs: DevCerts, mosquitto_broker: MosquittoBroker
) -> None:
    """With persistent_session the broker keeps the device's QoS 1 messages while it is away.

    mosquitto, because amqtt does not queue for this kind of session (DESIGN 7)."""
    got: list[dict[str, Any]] = []
    arrived = anyio.Event()

    def on_command(topic: str, payload: dict[str, Any]) -> None:
        got.append(payload)
        arrived.set()

    operator = mqtt_client(mosquitto_broker.port, dev_certs, dev_certs.operator, "operator")
    with anyio.fail_after(10):
        async with (
            operator,
            FaultProxy(mosquitto_broker.port) as proxy,
            device_connection(
                dev_certs, proxy.port, reconnect=FAST, persistent_session=True
            ) as iot,
        ):
            iot.subscribe(commands_topic(THING), on_command)
            with iot.events() as events:
                await iot.wait_connected()
                proxy.refuse = True
                await proxy.cut()
                await next_event(events, "disconnected")

                await operator.publish(commands_topic(THING), b'{"command":"reboot"}', qos=1)
                proxy.refuse = False
                await next_event(events, "connected")
                await arrived.wait()
            assert got == [{"command": "reboot"}]
