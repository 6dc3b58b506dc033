"""The device policy template allows exactly what the SDK does, for its own thing only.

The template (src/ancsync/emulator/device_policy.json.tpl) is the one source of device
permissions: Terraform renders it with ``templatefile`` (infra/terraform/iot.tf) and the
emulator evaluates it (``ancsync.emulator.policy``). These tests render it the way Terraform does
and evaluate it with the emulator's AWS-semantics evaluator, so what is tested here is what the
emulator enforces and what AWS is given.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ancsync.emulator.auth import ClientIdentity
from ancsync.emulator.policy import DevicePolicy, PolicyStatement, render_policy_template
from ancsync.errors import ConfigError
from ancsync.topics import (
    TELEMETRY_KINDS,
    JobsTopics,
    ShadowTopics,
    commands_topic,
    emergency_topic,
    status_topic,
    telemetry_topic,
)

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "src" / "ancsync" / "emulator" / "device_policy.json.tpl"
TERRAFORM = REPO / "infra" / "terraform"
REGION, ACCOUNT = "eu-west-1", "123456789012"
THING = "anc-device-001"
OTHER = "anc-device-002"
SHADOW_NAMES = [None, "config", "anc:profile_2"]
DEVICE = ClientIdentity(client_id=THING, common_name=THING)


@pytest.fixture(scope="module")
def policy() -> DevicePolicy:
    return DevicePolicy([THING, OTHER], region=REGION, account_id=ACCOUNT)


def can(policy: DevicePolicy, action: str, kind: str, name: str) -> bool:
    return policy.allows(DEVICE, f"iot:{action}", kind, name)


def shadow_requests(thing: str) -> list[str]:
    shadows = [ShadowTopics(thing, name) for name in SHADOW_NAMES]
    return [topic for s in shadows for topic in (s.get, s.update, s.delete)]


def shadow_responses(thing: str) -> list[str]:
    topics = []
    for name in SHADOW_NAMES:
        s = ShadowTopics(thing, name)
        topics += [s.get_accepted, s.get_rejected, s.update_accepted, s.update_rejected]
        topics += [s.update_delta, s.update_documents, s.delete_accepted, s.delete_rejected]
    return topics


def jobs_requests(thing: str) -> list[str]:
    jobs = JobsTopics(thing)
    return [
        jobs.get,
        jobs.start_next,
        jobs.describe("fw-1"),
        jobs.describe("$next"),
        jobs.update("fw-1"),
    ]


def jobs_receives(thing: str) -> list[str]:
    replies = [
        f"{topic}/{outcome}"
        for topic in jobs_requests(thing)
        for outcome in ("accepted", "rejected")
    ]
    return [JobsTopics(thing).notify, JobsTopics(thing).notify_next, *replies]


def device_publishes(thing: str) -> list[str]:
    """Every topic the SDK publishes to for ``thing``."""
    return [
        status_topic(thing),
        emergency_topic(thing),
        *(telemetry_topic(thing, kind) for kind in TELEMETRY_KINDS),
        *shadow_requests(thing),
        *jobs_requests(thing),
    ]


def device_subscriptions(thing: str) -> list[str]:
    """Every filter the SDK subscribes to: one filter per shadow, or each response alone."""
    return [
        commands_topic(thing),
        *(ShadowTopics(thing, name).all_responses for name in SHADOW_NAMES),
        *shadow_responses(thing),
        *JobsTopics(thing).reply_filters,
        *jobs_receives(thing),
    ]


def device_receives(thing: str) -> list[str]:
    return [commands_topic(thing), *shadow_responses(thing), *jobs_receives(thing)]


def test_template_renders_to_policy_json_with_the_policy_variable() -> None:
    rendered = render_policy_template(TEMPLATE.read_text(), {"region": "r", "account_id": "1"})
    document = json.loads(rendered)
    assert document["Version"] == "2012-10-17"
    # The policy variable survives rendering, escaped in the template as $${...}.
    assert "${iot:Connection.Thing.ThingName}" in rendered
    assert "$${" not in rendered


def test_template_uses_only_the_variables_terraform_passes() -> None:
    # Terraform passes exactly region and account_id: any other ${name} in the template would
    # make `terraform apply` fail, and the emulator's renderer refuses it the same way.
    iot_tf = (TERRAFORM / "iot.tf").read_text()
    call = iot_tf.split("templatefile(", 1)[1].split("})", 1)[0]
    assert set(re.findall(r"^\s*(\w+)\s*=", call, re.M)) == {"region", "account_id"}
    with pytest.raises(ConfigError, match="account_id"):
        render_policy_template(TEMPLATE.read_text(), {"region": "r"})


def test_terraform_renders_the_same_template_file() -> None:
    main_tf = (TERRAFORM / "main.tf").read_text()
    found = re.search(r'device_policy_template\s*=\s*"\$\{path\.module\}/([^"]+)"', main_tf)
    assert found, "main.tf must point device_policy_template at the shared template"
    assert (TERRAFORM / found.group(1)).resolve() == TEMPLATE.resolve()
    assert "templatefile(local.device_policy_template" in (TERRAFORM / "iot.tf").read_text()


def test_connect_only_as_own_thing(policy: DevicePolicy) -> None:
    assert can(policy, "Connect", "client", THING)
    assert not can(policy, "Connect", "client", OTHER)
    assert not can(policy, "Connect", "client", f"{THING}-2")


@pytest.mark.parametrize("topic", device_publishes(THING))
def test_device_may_publish_its_topics(policy: DevicePolicy, topic: str) -> None:
    assert policy.authorize_publish(DEVICE, topic)


@pytest.mark.parametrize("topic", device_publishes(OTHER))
def test_device_may_not_publish_another_things_topics(policy: DevicePolicy, topic: str) -> None:
    assert not policy.authorize_publish(DEVICE, topic)


def test_status_may_be_retained_and_be_the_will(policy: DevicePolicy) -> None:
    # The last will is checked at CONNECT like a publish of its topic, retained flag included.
    assert policy.authorize_retain_publish(DEVICE, status_topic(THING))
    assert not policy.authorize_retain_publish(DEVICE, status_topic(OTHER))
    # Nothing else is retained: an emergency or telemetry batch must not linger on the broker.
    assert not policy.authorize_retain_publish(DEVICE, emergency_topic(THING))
    assert not policy.authorize_retain_publish(DEVICE, telemetry_topic(THING, "anc"))


@pytest.mark.parametrize("topic_filter", device_subscriptions(THING))
def test_device_may_subscribe_to_its_filters(policy: DevicePolicy, topic_filter: str) -> None:
    assert can(policy, "Subscribe", "topicfilter", topic_filter)
    assert policy.authorize_subscribe(DEVICE, topic_filter)


@pytest.mark.parametrize("topic_filter", device_subscriptions(OTHER))
def test_device_may_not_subscribe_to_another_things_filters(
    policy: DevicePolicy, topic_filter: str
) -> None:
    assert not can(policy, "Subscribe", "topicfilter", topic_filter)


@pytest.mark.parametrize("topic", device_receives(THING))
def test_device_receives_its_commands_and_shadow_responses(
    policy: DevicePolicy, topic: str
) -> None:
    assert can(policy, "Receive", "topic", topic)


@pytest.mark.parametrize("topic", device_receives(OTHER))
def test_device_receives_nothing_of_another_thing(policy: DevicePolicy, topic: str) -> None:
    assert not can(policy, "Receive", "topic", topic)


@pytest.mark.parametrize(
    ("action", "kind", "name"),
    [
        # A device must not forge commands to itself, nor read other devices' data.
        ("Publish", "topic", commands_topic(THING)),
        ("Publish", "topic", f"anc/telemetry/{THING}/unknown-kind"),
        ("Publish", "topic", f"anc/telemetry/{THING}/anc/extra"),
        ("Subscribe", "topicfilter", "anc/#"),
        ("Subscribe", "topicfilter", "anc/devices/+/commands"),
        ("Subscribe", "topicfilter", "$aws/things/+/shadow/update/delta"),
        ("Subscribe", "topicfilter", f"anc/telemetry/{THING}/anc"),
        ("Receive", "topic", emergency_topic(THING)),
    ],
)
def test_least_privilege(policy: DevicePolicy, action: str, kind: str, name: str) -> None:
    assert not can(policy, action, kind, name)


def test_a_thing_name_that_prefixes_another_gains_nothing(policy: DevicePolicy) -> None:
    # "anc-device-001" must not reach "anc-device-0012"'s topics through a trailing wildcard.
    for topic in device_publishes(f"{THING}2"):
        assert not policy.authorize_publish(DEVICE, topic), topic


def test_another_account_or_region_is_not_granted() -> None:
    # The same statements judged as if used in another account: the ARNs no longer match.
    rendered = DevicePolicy([THING], region=REGION, account_id=ACCOUNT).statements
    foreign = DevicePolicy([THING], statements=rendered, region="us-east-1", account_id="9" * 12)
    assert not foreign.authorize_publish(DEVICE, status_topic(THING))


def test_evaluator_denies_by_default_and_honours_explicit_deny(policy: DevicePolicy) -> None:
    # The evaluator itself: without this, a lenient evaluator could pass every test above.
    deny = PolicyStatement(
        "Deny", ("iot:Publish",), (f"arn:aws:iot:{REGION}:{ACCOUNT}:topic/anc/devices/*/emergency",)
    )
    denied = DevicePolicy(
        [THING], statements=[*policy.statements, deny], region=REGION, account_id=ACCOUNT
    )
    assert not denied.authorize_publish(DEVICE, emergency_topic(THING))
    assert denied.authorize_publish(DEVICE, status_topic(THING))
    empty = DevicePolicy([THING], statements=[], region=REGION, account_id=ACCOUNT)
    assert not empty.authorize_publish(DEVICE, status_topic(THING))
