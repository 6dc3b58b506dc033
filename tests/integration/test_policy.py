"""Device authorisation through the running emulator: the device policy over real TLS clients."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import aiomqtt
import anyio
import orjson
import pytest
from disconnects import until_disconnected
from faultproxy import FaultProxy
from helpers import (
    cut_off,
    device_client,
    granted,
    mqtt_client,
    next_message,
    operator_client,
    plain_mqtt_client,
)

from ancsync.emulator.auth import ClientIdentity
from ancsync.emulator.policy import (
    DevicePolicy,
    PolicyStatement,
    load_device_policy,
    render_policy_template,
)
from ancsync.emulator.server import Emulator
from ancsync.errors import ConfigError
from ancsync.topics import ShadowTopics

DEVICE = "anc-device-001"
OTHER = "anc-device-002"
TIMEOUT = 10
STATUS = f"anc/devices/{DEVICE}/status"


def device(emulator: Emulator, thing: str = DEVICE, **options: Any) -> aiomqtt.Client:
    return device_client(emulator.port, emulator.certs, thing, **options)


def operator(emulator: Emulator, client_id: str = "cloud-console") -> aiomqtt.Client:
    return operator_client(emulator.port, emulator.certs, client_id)


OWN_FILTERS = [
    f"anc/devices/{DEVICE}/commands",
    ShadowTopics(DEVICE).all_responses,
    ShadowTopics(DEVICE, "cfg").all_responses,
]
FOREIGN_FILTERS = [
    f"anc/devices/{OTHER}/commands",
    ShadowTopics(OTHER).update_delta,
    "anc/devices/+/commands",
    "#",
    f"anc/telemetry/{DEVICE}/anc",  # may publish there, not subscribe
]


async def test_device_subscribes_only_to_its_own_topics(emulator: Emulator) -> None:
    """Each other filter disconnects the device (AWS on MQTT 3.1.1), with no SUBACK."""
    with anyio.fail_after(TIMEOUT):
        async with device(emulator) as client:
            codes = await client.subscribe([(topic_filter, 1) for topic_filter in OWN_FILTERS])
        for topic_filter in FOREIGN_FILTERS:
            async with device(emulator) as client:
                await until_disconnected(client, partial(client.subscribe, topic_filter, 1))
    assert granted(codes) == [1, 1, 1]
    assert [v.topic for v in emulator.broker.violations()] == FOREIGN_FILTERS
    assert emulator.broker.stats()["subscribes_denied"] == 5


async def test_device_publish_to_another_device_disconnects_it(emulator: Emulator) -> None:
    forged = [f"anc/devices/{OTHER}/emergency", f"anc/telemetry/{OTHER}/anc"]
    with anyio.fail_after(TIMEOUT):
        async with operator(emulator) as cloud:
            await cloud.subscribe("anc/#", qos=1)
            for topic in forged:
                async with device(emulator) as client:
                    await until_disconnected(client, partial(client.publish, topic, b"{}", 1))
            async with device(emulator) as client:
                await client.publish(STATUS, b"marker", qos=1)
            # had a forged one been broadcast, it would arrive first
            message = await next_message(cloud)
    assert (message.topic.value, message.payload) == (STATUS, b"marker")
    assert [v.topic for v in emulator.broker.violations()] == forged
    assert emulator.broker.stats()["publishes_denied"] == 2


async def test_device_cannot_touch_another_devices_shadow(emulator: Emulator) -> None:
    forged = orjson.dumps({"state": {"desired": {"anc_enabled": False}}})
    requests = [(ShadowTopics(OTHER).update, forged), (ShadowTopics(OTHER, "cfg").delete, b"")]
    with anyio.fail_after(TIMEOUT):
        async with operator(emulator) as cloud:
            await cloud.subscribe("$aws/things/+/shadow/+/+", qos=1)
            for topic, payload in requests:
                async with device(emulator) as client:
                    await until_disconnected(client, partial(client.publish, topic, payload, 1))
            async with device(emulator) as client:
                await client.publish(ShadowTopics(DEVICE).get, b"", qos=1)
                message = await next_message(cloud)
    assert message.topic.value == ShadowTopics(DEVICE).get_rejected
    assert emulator.shadows.store.shadow(OTHER) is None
    assert [v.topic for v in emulator.broker.violations()] == [topic for topic, _ in requests]
    assert emulator.broker.stats()["publishes_denied"] == 2


async def test_operator_may_use_every_topic(emulator: Emulator) -> None:
    command = orjson.dumps({"command_id": "c1", "command": "reboot", "params": {}})
    with anyio.fail_after(TIMEOUT):
        async with operator(emulator) as cloud, device(emulator, OTHER) as client:
            codes = await cloud.subscribe([("#", 1), ("$aws/things/+/shadow/#", 1)])
            assert granted(codes) == [1, 1]
            await client.subscribe(f"anc/devices/{OTHER}/commands", qos=1)
            await cloud.publish(f"anc/devices/{OTHER}/commands", command, qos=1)
            received = await next_message(client)
            await cloud.publish(ShadowTopics(OTHER).update, b'{"state": {"desired": {"a": 1}}}')
            seen = [(await next_message(cloud)).topic.value for _ in range(3)]
    assert received.payload == command
    assert seen == [
        f"anc/devices/{OTHER}/commands",
        ShadowTopics(OTHER).update_accepted,
        ShadowTopics(OTHER).update_delta,
    ]
    assert emulator.broker.stats()["publishes_denied"] == 0


async def test_only_the_status_may_be_retained(emulator: Emulator) -> None:
    emergency = f"anc/devices/{DEVICE}/emergency"
    with anyio.fail_after(TIMEOUT):
        async with operator(emulator) as cloud:
            await cloud.subscribe("anc/#", qos=1)
            async with device(emulator) as client:
                await until_disconnected(
                    client, partial(client.publish, emergency, b"not retained", 1, retain=True)
                )
            async with device(emulator) as client:
                await client.publish(STATUS, b"online", qos=1, retain=True)
                live = await next_message(cloud)  # the refused one was not broadcast
        async with operator(emulator, "late-subscriber") as late:
            await late.subscribe(f"anc/devices/{DEVICE}/#", qos=1)
            retained = await next_message(late)
    assert (live.topic.value, live.payload) == (STATUS, b"online")
    assert (retained.topic.value, retained.payload, retained.retain) == (STATUS, b"online", True)
    [violation] = emulator.broker.violations()
    assert (violation.topic, violation.action) == (emergency, "iot:RetainPublish")


@pytest.mark.parametrize(
    ("topic", "retain"),
    [(f"anc/devices/{DEVICE}/emergency", True), (f"anc/devices/{OTHER}/status", False)],
)
async def test_a_will_the_policy_does_not_allow_refuses_the_connection(
    emulator: Emulator, topic: str, retain: bool
) -> None:
    will = aiomqtt.Will(topic, b"offline", qos=1, retain=retain)
    with anyio.fail_after(TIMEOUT), pytest.raises(aiomqtt.MqttCodeError, match="Not authorized"):
        async with device(emulator, will=will):
            pass
    assert emulator.broker.stats()["connects_denied"] == 1


async def test_the_retained_will_on_the_status_is_published_and_retained(
    emulator: Emulator,
) -> None:
    will = aiomqtt.Will(STATUS, b"offline", qos=1, retain=True)
    with anyio.fail_after(TIMEOUT):
        async with FaultProxy(emulator.port) as proxy, operator(emulator) as cloud:
            await cloud.subscribe(STATUS, qos=1)
            async with device_client(proxy.port, emulator.certs, DEVICE, will=will) as client:
                await cut_off(client, proxy)
            live = await next_message(cloud)
        async with operator(emulator, "late-subscriber") as late:
            await late.subscribe(STATUS, qos=1)
            retained = await next_message(late)
    assert live.payload == b"offline"
    assert (retained.payload, retained.retain) == (b"offline", True)
    assert emulator.broker.stats()["connects_denied"] == 0


@pytest.mark.parametrize(
    ("certificate", "client_id"),
    [(DEVICE, "not-the-thing"), (DEVICE, OTHER), ("operator", DEVICE)],
)
async def test_client_id_must_fit_the_certificate(
    emulator: Emulator, certificate: str, client_id: str
) -> None:
    certs = emulator.certs
    pair = certs.operator if certificate == "operator" else certs.device(certificate)
    with anyio.fail_after(TIMEOUT), pytest.raises(aiomqtt.MqttCodeError, match="Not authorized"):
        async with mqtt_client(emulator.port, certs, pair, client_id):
            pass
    assert emulator.broker.stats()["connects_denied"] == 1


async def test_plain_listener_tells_devices_by_client_id(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            Emulator(tmp_path / "certs", [DEVICE, OTHER], tls=False) as emulator,
            plain_mqtt_client(emulator.port, DEVICE) as client,
            plain_mqtt_client(emulator.port, "dashboard") as cloud,
        ):
            await until_disconnected(
                client, partial(client.subscribe, f"anc/devices/{OTHER}/commands")
            )
            assert granted(await cloud.subscribe("anc/#")) == [0]
            [violation] = emulator.broker.violations()
    assert (violation.client_id, violation.common_name) == (DEVICE, None)


# -- the policy document itself -------------------------------------------------------------------


def test_the_template_renders_like_terraform() -> None:
    text = '{"r": "arn:aws:iot:${region}:${account_id}:client/$${iot:ClientId}"}'
    rendered = render_policy_template(text, {"region": "eu-west-1", "account_id": "123"})
    assert rendered == '{"r": "arn:aws:iot:eu-west-1:123:client/${iot:ClientId}"}'
    with pytest.raises(ConfigError, match=r"\$\{stage\}.*escape AWS policy variables"):
        render_policy_template("${stage}", {"region": "r"})


def test_the_packaged_policy_scopes_every_resource_to_the_thing() -> None:
    statements = load_device_policy("eu-west-1", "123456789012")
    assert {action for s in statements for action in s.actions} == {
        "iot:Connect",
        "iot:Publish",
        "iot:RetainPublish",
        "iot:Subscribe",
        "iot:Receive",
    }
    # the fleet provisioning API (certificate rotation) has no per-thing topics in AWS
    rotation = {"RotateOwnCertificate", "SubscribeCertificateRotationReplies"}
    for statement in statements:
        for resource in statement.resources:
            assert resource.startswith("arn:aws:iot:eu-west-1:123456789012:")
            if statement.sid in rotation:
                assert (
                    "/$aws/certificates/" in resource or "/$aws/provisioning-templates/" in resource
                )
            else:
                assert "${iot:Connection.Thing.ThingName}" in resource


def test_retained_publishes_are_limited_to_the_status_topic() -> None:
    policy = DevicePolicy([DEVICE])
    identity = ClientIdentity(DEVICE, DEVICE)
    assert policy.authorize_retain_publish(identity, f"anc/devices/{DEVICE}/status")
    assert policy.authorize_publish(identity, f"anc/devices/{DEVICE}/emergency")
    assert not policy.authorize_retain_publish(identity, f"anc/devices/{DEVICE}/emergency")


def test_an_explicit_deny_wins() -> None:
    deny = PolicyStatement(
        "Deny",
        ("iot:Publish",),
        ("arn:aws:iot:local-1:000000000000:topic/anc/telemetry/*/errors",),
    )
    policy = DevicePolicy([DEVICE], statements=[*load_device_policy(), deny])
    identity = ClientIdentity(DEVICE, DEVICE)
    assert policy.authorize_publish(identity, f"anc/telemetry/{DEVICE}/anc")
    assert not policy.authorize_publish(identity, f"anc/telemetry/{DEVICE}/errors")
