"""The SDK against AWS's reaction to a denied topic: the broker closes the connection.

The emulator disconnects a client that publishes or subscribes where its policy denies, as AWS
IoT Core does on MQTT 3.1.1. The device must reconnect, tell the application which topic is
not allowed, stop using it (no reconnect loop), and lose nothing else.
"""

from __future__ import annotations

import anyio
import pytest
from device import THING, device_connection

from ancsync import TopicNotAllowed
from ancsync.emulator.server import Emulator
from ancsync.mqtt.backoff import BackoffPolicy
from ancsync.mqtt.refusals import REFUSAL_STRIKES

FAST = BackoffPolicy(base=0.02, cap=0.1)
TIMEOUT = 20
OTHER = "anc-device-002"


async def test_a_denied_subscription_is_given_up_and_the_others_work(emulator: Emulator) -> None:
    iot = device_connection(emulator.certs, emulator.port, reconnect=FAST)
    own = anyio.Event()
    iot.subscribe(f"anc/devices/{THING}/commands", lambda topic, payload: own.set())
    iot.subscribe(f"anc/devices/{OTHER}/commands", lambda topic, payload: None)
    with anyio.fail_after(TIMEOUT):
        async with iot:
            with iot.events() as events:
                async for event in events:
                    if event.kind == "refused":
                        break
            assert isinstance(event.error, TopicNotAllowed)
            assert event.error.topic == f"anc/devices/{OTHER}/commands"
            await iot.wait_connected(5)
            # The allowed subscription is in place: a command reaches the device.
            await emulator.broker.publish(f"anc/devices/{THING}/commands", b'{"x": 1}', qos=1)
            await own.wait()
            status = iot.get_status()
    assert status["failed_subscriptions"] == [f"anc/devices/{OTHER}/commands"]
    denied = [v for v in emulator.broker.violations() if v.request == "subscribe"]
    # The first SUBSCRIBE with both filters, then the suspect alone: no loop.
    assert len(denied) == 1 + REFUSAL_STRIKES
    assert {v.topic for v in denied} == {f"anc/devices/{OTHER}/commands"}


async def test_a_denied_publish_fails_its_handle_and_the_rest_is_delivered(
    emulator: Emulator,
) -> None:
    iot = device_connection(emulator.certs, emulator.port, reconnect=FAST)
    with anyio.fail_after(TIMEOUT):
        async with iot:
            await iot.wait_connected(5)
            mine = [await iot.publish(f"anc/telemetry/{THING}/system", {"n": n}) for n in range(10)]
            theirs = await iot.publish(f"anc/telemetry/{OTHER}/system", {"n": 99})
            later = [
                await iot.publish(f"anc/telemetry/{THING}/system", {"n": n}) for n in range(10, 20)
            ]
            with pytest.raises(
                TopicNotAllowed, match=f"iot:Publish on topic/anc/telemetry/{OTHER}"
            ):
                await theirs.delivered()
            for handle in mine + later:
                await handle.delivered()
            await iot.wait_connected(5)
            status = iot.get_status()
    assert status["refused_topics"] == [f"anc/telemetry/{OTHER}/system"]
    denied = [v for v in emulator.broker.violations() if v.request == "publish"]
    assert len(denied) == 1 + REFUSAL_STRIKES
    assert emulator.rules.record_count(OTHER) == 0
