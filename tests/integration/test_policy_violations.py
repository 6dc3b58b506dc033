"""A publish or subscribe the device policy denies disconnects the client, as AWS IoT Core does
on MQTT 3.1.1: no PUBACK or SUBACK, the socket closed, a log line and a violation record naming
the client, the topic and the statement. Other clients are served throughout.
"""

from __future__ import annotations

import logging

import anyio
import pytest
from disconnects import until_disconnected
from helpers import device_client, next_message, operator_client
from raw_mqtt import PUBACK, publish_packet, raw_device, subscribe_packet

from ancsync.emulator.auth import ClientIdentity
from ancsync.emulator.broker import EmbeddedBroker, PolicyViolation
from ancsync.emulator.certs import DevCerts
from ancsync.emulator.policy import DevicePolicy, PolicyStatement, load_device_policy
from ancsync.emulator.server import Emulator
from ancsync.topics import JobsTopics

DEVICE = "anc-device-001"
OTHER = "anc-device-002"
TIMEOUT = 10
ARN = "arn:aws:iot:local-1:000000000000"


async def test_a_denied_publish_disconnects_the_client_and_the_record_names_it(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "ancsync.emulator")
    forbidden = f"anc/devices/{OTHER}/emergency"
    with anyio.fail_after(TIMEOUT):
        async with (
            operator_client(emulator.port, emulator.certs, "cloud") as cloud,
            device_client(emulator.port, emulator.certs, OTHER) as healthy,
        ):
            await cloud.subscribe("anc/#", qos=1)
            async with device_client(emulator.port, emulator.certs, DEVICE) as client:
                await until_disconnected(client, lambda: client.publish(forbidden, b"{}", qos=1))
            # the other device and the cloud are still served
            await healthy.publish(f"anc/devices/{OTHER}/status", b"still here", qos=1)
            message = await next_message(cloud)
    assert (message.topic.value, message.payload) == (f"anc/devices/{OTHER}/status", b"still here")
    [violation] = emulator.broker.violations()
    assert violation == PolicyViolation(
        client_id=DEVICE,
        common_name=DEVICE,
        request="publish",
        topic=forbidden,
        retain=False,
        action="iot:Publish",
        resource=f"{ARN}:topic/{forbidden}",
        statement=None,
        at=violation.at,
    )
    assert emulator.broker.stats()["publishes_denied"] == 1
    [line] = [r.getMessage() for r in caplog.records if "policy violation" in r.getMessage()]
    assert DEVICE in line
    assert forbidden in line
    assert "implicit deny" in line


async def test_a_denied_subscribe_disconnects_the_client_without_a_suback(
    emulator: Emulator,
) -> None:
    forbidden = f"anc/devices/{OTHER}/commands"
    with anyio.fail_after(TIMEOUT):
        async with (
            operator_client(emulator.port, emulator.certs, "cloud") as cloud,
            device_client(emulator.port, emulator.certs, OTHER) as healthy,
        ):
            await healthy.subscribe(forbidden, qos=1)  # its own: allowed
            async with device_client(emulator.port, emulator.certs, DEVICE) as client:
                await until_disconnected(client, lambda: client.subscribe(forbidden, qos=1))
            await cloud.publish(forbidden, b"for the healthy one", qos=1)
            message = await next_message(healthy)
    assert message.payload == b"for the healthy one"
    [violation] = emulator.broker.violations()
    assert (violation.client_id, violation.request, violation.topic, violation.action) == (
        DEVICE,
        "subscribe",
        forbidden,
        "iot:Subscribe",
    )
    assert violation.resource == f"{ARN}:topicfilter/{forbidden}"
    assert emulator.broker.stats()["subscribes_denied"] == 1


async def test_on_the_wire_no_ack_comes_and_earlier_publishes_are_kept(
    emulator: Emulator,
) -> None:
    """Raw packets: the allowed QoS 1 publish is PUBACKed and delivered, the denied one gets
    nothing but the closed socket, and what follows it is not taken in."""
    allowed = f"anc/devices/{DEVICE}/status"
    with anyio.fail_after(TIMEOUT):
        async with operator_client(emulator.port, emulator.certs, "cloud") as cloud:
            await cloud.subscribe("anc/#", qos=1)
            async with raw_device(emulator.port, emulator.certs, DEVICE) as raw:
                await raw.send(
                    publish_packet(allowed, b"before", qos=1, packet_id=1)
                    + publish_packet(f"anc/devices/{OTHER}/status", b"denied", qos=1, packet_id=2)
                    + publish_packet(allowed, b"after", qos=1, packet_id=3)
                )
                received = await raw.packets_until_closed()
            delivered = await next_message(cloud)
            async with raw_device(emulator.port, emulator.certs, DEVICE) as raw:
                await raw.send(subscribe_packet(1, [(f"anc/devices/{OTHER}/commands", 1)]))
                after_subscribe = await raw.packets_until_closed()
            # had "after" been taken in, it would come before this one
            await cloud.publish("anc/marker", b"marker", qos=1)
            marker = await next_message(cloud)
    assert received == [(PUBACK, b"\x00\x01")]
    assert delivered.payload == b"before"
    assert marker.payload == b"marker"
    assert after_subscribe == []
    assert [v.request for v in emulator.broker.violations()] == ["publish", "subscribe"]


async def test_a_denied_retained_publish_names_iot_retain_publish(emulator: Emulator) -> None:
    topic = f"anc/devices/{DEVICE}/emergency"  # may be published, not retained
    with anyio.fail_after(TIMEOUT):
        async with device_client(emulator.port, emulator.certs, DEVICE) as client:
            await until_disconnected(
                client, lambda: client.publish(topic, b"{}", qos=1, retain=True)
            )
    [violation] = emulator.broker.violations()
    assert (violation.topic, violation.retain, violation.action) == (
        topic,
        True,
        "iot:RetainPublish",
    )
    assert "retained publish" in violation.describe()


async def test_an_explicit_deny_is_named_by_its_sid(dev_certs: DevCerts) -> None:
    errors = f"anc/telemetry/{DEVICE}/errors"
    deny = PolicyStatement(
        "Deny", ("iot:Publish",), (f"{ARN}:topic/anc/telemetry/*/errors",), "NoErrorTelemetry"
    )
    policy = DevicePolicy([DEVICE, OTHER], statements=[*load_device_policy(), deny])
    with anyio.fail_after(TIMEOUT):
        async with (
            EmbeddedBroker(dev_certs, authorizer=policy) as broker,
            device_client(broker.port, dev_certs, DEVICE) as client,
        ):
            await until_disconnected(client, lambda: client.publish(errors, b"{}", qos=0))
    [violation] = broker.violations()
    assert (violation.topic, violation.action, violation.statement) == (
        errors,
        "iot:Publish",
        "NoErrorTelemetry",
    )
    assert "statement 'NoErrorTelemetry' denies it" in violation.describe()


class NothingUnderForbidden:
    """An authorizer that cannot explain itself: the record names its class and method."""

    def authorize_connect(self, identity: ClientIdentity) -> str | None:
        return None

    def authorize_publish(
        self, identity: ClientIdentity, topic: str, *, retain: bool = False
    ) -> bool:
        return not topic.startswith("forbidden/")

    def authorize_subscribe(self, identity: ClientIdentity, topic_filter: str) -> bool:
        return not topic_filter.startswith("forbidden/")


async def test_any_authorizer_is_named_in_the_record(dev_certs: DevCerts) -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            EmbeddedBroker(dev_certs, authorizer=NothingUnderForbidden()) as broker,
            device_client(broker.port, dev_certs, DEVICE) as client,
        ):
            await until_disconnected(client, lambda: client.subscribe("forbidden/#"))
    [violation] = broker.violations()
    assert (violation.topic, violation.resource, violation.statement) == (
        "forbidden/#",
        "topicfilter/forbidden/#",
        "NothingUnderForbidden.authorize_subscribe",
    )


async def test_another_things_jobs_topics_disconnect_the_device(emulator: Emulator) -> None:
    """Was SUBACK 0x80 (tests/integration/test_jobs.py still expects that)."""
    other = JobsTopics(OTHER)
    with anyio.fail_after(TIMEOUT):
        async with device_client(emulator.port, emulator.certs, DEVICE) as client:
            await until_disconnected(client, lambda: client.subscribe(other.notify_next, qos=1))
    [violation] = emulator.broker.violations()
    assert (violation.topic, violation.action) == (other.notify_next, "iot:Subscribe")
