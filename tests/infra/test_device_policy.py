"""The device policy template allows exactly what the SDK does, for its own thing only.

The template (src/ancsync/emulator/device_policy.json.tpl) is the one source of device
permissions: Terraform renders it with ``templatefile`` and the emulator's authoriser evaluates
it. These tests render it the way Terraform does and evaluate it with AWS policy semantics.
"""

from __future__ import annotations

import json
import re

import pytest
from iot_policy_eval import REPO, TEMPLATE, DevicePolicy, render_template

from ancsync.topics import (
    TELEMETRY_KINDS,
    ShadowTopics,
    commands_topic,
    emergency_topic,
    status_topic,
    telemetry_topic,
)

THING = "anc-device-001"
OTHER = "anc-device-002"
SHADOW_NAMES = [None, "config", "anc:profile_2"]


@pytest.fixture(scope="module")
def policy() -> DevicePolicy:
    return DevicePolicy.from_template(region="eu-west-1", account_id="123456789012")


def shadow_requests(thing: str) -> list[str]:
    return [
        topic
        for name in SHADOW_NAMES
        for topic in (
            ShadowTopics(thing, name).get,
            ShadowTopics(thing, name).update,
            ShadowTopics(thing, name).delete,
        )
    ]


def shadow_responses(thing: str) -> list[str]:
    topics = []
    for name in SHADOW_NAMES:
        s = ShadowTopics(thing, name)
        topics += [
            s.get_accepted,
            s.get_rejected,
            s.update_accepted,
            s.update_rejected,
            s.update_delta,
            s.update_documents,
            s.delete_accepted,
            s.delete_rejected,
        ]
    return topics


def device_publishes(thing: str) -> list[str]:
    """Every topic the SDK publishes to for ``thing``."""
    return [
        status_topic(thing),
        emergency_topic(thing),
        *(telemetry_topic(thing, kind) for kind in TELEMETRY_KINDS),
        *shadow_requests(thing),
    ]


def device_subscriptions(thing: str) -> list[str]:
    """Every filter the SDK subscribes to: one filter per shadow, or each response topic alone."""
    return [
        commands_topic(thing),
        *(ShadowTopics(thing, name).all_responses for name in SHADOW_NAMES),
        *shadow_responses(thing),
    ]


def device_receives(thing: str) -> list[str]:
    return [commands_topic(thing), *shadow_responses(thing)]


def test_template_renders_to_valid_policy_json() -> None:
    rendered = render_template(TEMPLATE.read_text(), {"region": "r", "account_id": "1"})
    document = json.loads(rendered)
    assert document["Version"] == "2012-10-17"
    # The policy variable survives rendering, escaped in the template as $${...}.
    assert "${iot:Connection.Thing.ThingName}" in rendered
    assert "$${" not in rendered


def test_template_uses_only_the_variables_terraform_passes() -> None:
    # Terraform passes exactly region and account_id (infra/terraform/iot.tf): any other
    # ${name} would make `terraform apply` fail, so the renderer refuses it too.
    iot_tf = (REPO / "infra" / "terraform" / "iot.tf").read_text()
    passed = set(
        re.findall(r"^\s*(\w+)\s*=", iot_tf.split("templatefile(", 1)[1].split("})")[0], re.M)
    )
    assert passed == {"region", "account_id"}
    with pytest.raises(KeyError, match="account_id"):
        render_template(TEMPLATE.read_text(), {"region": "r"})


def test_terraform_renders_the_same_template_file() -> None:
    main_tf = (REPO / "infra" / "terraform" / "main.tf").read_text()
    found = re.search(r'device_policy_template\s*=\s*"\$\{path\.module\}/([^"]+)"', main_tf)
    assert found, "main.tf must point device_policy_template at the shared template"
    assert (REPO / "infra" / "terraform" / found.group(1)).resolve() == TEMPLATE.resolve()


def test_connect_only_as_own_thing(policy: DevicePolicy) -> None:
    assert policy.can_connect(THING, thing_name=THING)
    assert not policy.can_connect(OTHER, thing_name=THING)
    assert not policy.can_connect(f"{THING}-2", thing_name=THING)


@pytest.mark.parametrize("topic", device_publishes(THING))
def test_device_may_publish_its_topics(policy: DevicePolicy, topic: str) -> None:
    assert policy.can_publish(THING, topic)


@pytest.mark.parametrize("topic", device_publishes(OTHER))
def test_device_may_not_publish_another_things_topics(policy: DevicePolicy, topic: str) -> None:
    assert not policy.can_publish(THING, topic)


def test_status_may_be_retained_and_be_the_will(policy: DevicePolicy) -> None:
    # The last will is checked at CONNECT like a publish of its topic, retained flag included.
    assert policy.can_publish(THING, status_topic(THING), retain=True)
    assert not policy.can_publish(THING, status_topic(OTHER), retain=True)
    # Nothing else is retained: an emergency or telemetry batch must not linger on the broker.
    assert not policy.can_publish(THING, emergency_topic(THING), retain=True)
    assert not policy.can_publish(THING, telemetry_topic(THING, "anc"), retain=True)


@pytest.mark.parametrize("topic_filter", device_subscriptions(THING))
def test_device_may_subscribe_to_its_filters(policy: DevicePolicy, topic_filter: str) -> None:
    assert policy.can_subscribe(THING, topic_filter)


@pytest.mark.parametrize("topic_filter", device_subscriptions(OTHER))
def test_device_may_not_subscribe_to_another_things_filters(
    policy: DevicePolicy, topic_filter: str
) -> None:
    assert not policy.can_subscribe(THING, topic_filter)


@pytest.mark.parametrize("topic", device_receives(THING))
def test_device_receives_its_commands_and_shadow_responses(
    policy: DevicePolicy, topic: str
) -> None:
    assert policy.can_receive(THING, topic)


@pytest.mark.parametrize("topic", device_receives(OTHER))
def test_device_receives_nothing_of_another_thing(policy: DevicePolicy, topic: str) -> None:
    assert not policy.can_receive(THING, topic)


@pytest.mark.parametrize(
    ("action", "target"),
    [
        # A device must not forge commands to itself or read other devices' data.
        ("publish", commands_topic(THING)),
        ("publish", f"anc/telemetry/{THING}/unknown-kind"),
        ("publish", f"anc/telemetry/{THING}/anc/extra"),
        ("subscribe", "anc/#"),
        ("subscribe", "anc/devices/+/commands"),
        ("subscribe", "$aws/things/+/shadow/update/delta"),
        ("subscribe", f"anc/telemetry/{THING}/anc"),
        ("receive", emergency_topic(THING)),
    ],
)
def test_least_privilege(policy: DevicePolicy, action: str, target: str) -> None:
    check = {
        "publish": policy.can_publish,
        "subscribe": policy.can_subscribe,
        "receive": policy.can_receive,
    }[action]
    assert not check(THING, target)


def test_a_thing_name_that_prefixes_another_gains_nothing(policy: DevicePolicy) -> None:
    # "anc-device-001" must not reach "anc-device-0012"'s topics through a trailing wildcard.
    longer = f"{THING}2"
    for topic in device_publishes(longer):
        assert not policy.can_publish(THING, topic), topic


def test_evaluator_denies_by_default_and_honours_explicit_deny() -> None:
    # The evaluator itself: without this, a broken evaluator could pass every test above.
    base = DevicePolicy.from_template().document
    denied = dict(
        base,
        Statement=[
            *base["Statement"],
            {
                "Effect": "Deny",
                "Action": "iot:Publish",
                "Resource": "arn:aws:iot:eu-west-1:123456789012:topic/anc/devices/*/emergency",
            },
        ],
    )
    policy = DevicePolicy(denied, "eu-west-1", "123456789012")
    assert not policy.can_publish(THING, emergency_topic(THING))
    assert policy.can_publish(THING, status_topic(THING))
    assert not DevicePolicy({"Statement": []}, "r", "1").can_publish(THING, status_topic(THING))


def test_other_region_or_account_is_not_granted(policy: DevicePolicy) -> None:
    assert policy.can_publish(THING, status_topic(THING))
    # The same document checked as if it were used in another account and region.
    foreign = DevicePolicy(policy.document, "us-east-1", "999999999999")
    assert not foreign.can_publish(THING, status_topic(THING))
