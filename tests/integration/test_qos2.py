"""QoS 2 as AWS IoT Core answers it: "QoS 0 and 1 only (QoS 2 gets no ack)"
(shared/reference/aws-iot-core.md).

A QoS 2 PUBLISH gets no PUBREC and is not delivered; a SUBSCRIBE asking QoS 2 for any filter gets
no SUBACK and subscribes nothing. The client stays connected; both are counted and logged.
"""

from __future__ import annotations

import aiomqtt
import anyio
import pytest
from helpers import device_client, next_message, operator_client
from raw_mqtt import (
    PINGREQ_PACKET,
    PINGRESP,
    SUBACK,
    publish_packet,
    raw_device,
    subscribe_packet,
)

from ancsync.emulator.server import Emulator

DEVICE = "anc-device-001"
STATUS = f"anc/devices/{DEVICE}/status"
COMMANDS = f"anc/devices/{DEVICE}/commands"
TIMEOUT = 10
NO_ACK_WITHIN = 0.5  # how long the aiomqtt tests give the broker to (not) answer


async def test_a_qos2_publish_gets_no_ack_and_is_not_delivered(emulator: Emulator) -> None:
    with anyio.fail_after(TIMEOUT):
        async with operator_client(emulator.port, emulator.certs, "cloud") as cloud:
            await cloud.subscribe("anc/#", qos=1)
            device = device_client(emulator.port, emulator.certs, DEVICE, timeout=NO_ACK_WITHIN)
            async with device:
                with pytest.raises(aiomqtt.MqttError, match="timed out"):
                    await device.publish(STATUS, b"qos 2", qos=2)
                await device.publish(STATUS, b"qos 1", qos=1)  # still connected and served
            message = await next_message(cloud)  # the QoS 2 one would have come first
    assert message.payload == b"qos 1"
    assert emulator.broker.stats()["qos2_publishes_ignored"] == 1
    assert emulator.broker.violations() == []


async def test_a_qos2_subscribe_gets_no_suback_and_subscribes_nothing(
    emulator: Emulator,
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with operator_client(emulator.port, emulator.certs, "cloud") as cloud:
            device = device_client(emulator.port, emulator.certs, DEVICE, timeout=NO_ACK_WITHIN)
            async with device:
                with pytest.raises(aiomqtt.MqttError, match="timed out"):
                    await device.subscribe(COMMANDS, qos=2)
                await cloud.publish(COMMANDS, b"not subscribed yet", qos=1)
                await device.subscribe(COMMANDS, qos=1)  # still connected and served
                await cloud.publish(COMMANDS, b"subscribed", qos=1)
                message = await next_message(device)
    assert message.payload == b"subscribed"
    assert emulator.broker.stats()["qos2_subscribes_ignored"] == 1


async def test_on_the_wire_no_pubrec_or_suback_comes_and_the_connection_stays(
    emulator: Emulator,
) -> None:
    """Raw packets: the PINGRESP is the first answer to a QoS 2 PUBLISH and to a SUBSCRIBE
    with a QoS 2 filter among QoS 1 ones; a QoS 1 SUBSCRIBE afterwards is answered."""
    with anyio.fail_after(TIMEOUT):
        async with raw_device(emulator.port, emulator.certs, DEVICE) as raw:
            await raw.send(publish_packet(STATUS, b"qos 2", qos=2, packet_id=7) + PINGREQ_PACKET)
            after_publish = await raw.next_packet()
            mixed = [(COMMANDS, 1), (f"$aws/things/{DEVICE}/shadow/get/accepted", 2)]
            await raw.send(subscribe_packet(8, mixed) + PINGREQ_PACKET)
            after_subscribe = await raw.next_packet()
            await raw.send(subscribe_packet(9, [(COMMANDS, 1)]))
            suback = await raw.next_packet()
    assert after_publish == (PINGRESP, b"")
    assert after_subscribe == (PINGRESP, b"")
    assert suback == (SUBACK, b"\x00\x09\x01")
    stats = emulator.broker.stats()
    assert (stats["qos2_publishes_ignored"], stats["qos2_subscribes_ignored"]) == (1, 1)


async def test_services_cannot_publish_with_qos2(emulator: Emulator) -> None:
    with pytest.raises(ValueError, match="QoS 0 and 1 only"):
        await emulator.broker.publish(COMMANDS, b"x", qos=2)
