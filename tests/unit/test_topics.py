"""Topic builders, AWS topic limits, name validation and MQTT filter matching."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ancsync.errors import InvalidTopic
from ancsync.topics import (
    MAX_TOPIC_BYTES,
    TELEMETRY_KINDS,
    ShadowTopic,
    ShadowTopics,
    commands_topic,
    emergency_topic,
    is_jobs_request_topic,
    is_provisioning_request_topic,
    is_shadow_request_topic,
    matches,
    parse_shadow_topic,
    status_topic,
    telemetry_topic,
    validate_filter,
    validate_shadow_name,
    validate_thing_name,
    validate_topic,
)

ALLOWED = "use 1 to 128 characters of letters, digits, ':', '_' and '-'"

# --- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "anc-device-001", "A:b_c-9", "x" * 128])
def test_valid_thing_names_are_returned(name: str) -> None:
    assert validate_thing_name(name) == name


@pytest.mark.parametrize("name", ["", "a/b", "a+b", "a#", "$aws", "a b", "é", "x" * 129])
def test_invalid_thing_names_are_refused_with_the_rule(name: str) -> None:
    with pytest.raises(InvalidTopic, match=re.escape(ALLOWED)):
        validate_thing_name(name)


def test_thing_name_error_message() -> None:
    with pytest.raises(InvalidTopic) as caught:
        validate_thing_name("dev/1")
    assert str(caught.value) == f"thing name 'dev/1' is not allowed: {ALLOWED}"


def test_shadow_name_limits() -> None:
    assert validate_shadow_name("s" * 64) == "s" * 64
    with pytest.raises(InvalidTopic) as caught:
        validate_shadow_name("s" * 65)
    assert "use 1 to 64 characters of letters, digits, ':', '_' and '-'" in str(caught.value)
    with pytest.raises(InvalidTopic):
        validate_shadow_name("")


def test_long_values_are_shortened_in_messages() -> None:
    with pytest.raises(InvalidTopic) as caught:
        validate_thing_name("/" * 10_000)
    assert len(str(caught.value)) < 200


# --- publish topics ----------------------------------------------------------------------------


def test_builders_follow_the_design_table() -> None:
    assert status_topic("d1") == "anc/devices/d1/status"
    assert commands_topic("d1") == "anc/devices/d1/commands"
    assert emergency_topic("d1") == "anc/devices/d1/emergency"
    assert [telemetry_topic("d1", kind) for kind in TELEMETRY_KINDS] == [
        "anc/telemetry/d1/anc",
        "anc/telemetry/d1/audio",
        "anc/telemetry/d1/system",
        "anc/telemetry/d1/errors",
    ]


def test_builders_refuse_bad_things_and_kinds() -> None:
    with pytest.raises(InvalidTopic, match="thing name 'a/b'"):
        status_topic("a/b")
    with pytest.raises(InvalidTopic) as caught:
        telemetry_topic("d1", "video")  # type: ignore[arg-type]
    assert str(caught.value) == (
        "telemetry kind 'video' is not allowed: use one of anc, audio, system, errors"
    )


@pytest.mark.parametrize(
    ("topic", "message"),
    [
        ("", "topic is empty: give at least one character"),
        (
            "a/+/c",
            "topic 'a/+/c' contains the wildcard '+': wildcards are only allowed in "
            "subscription filters; publish to a concrete topic",
        ),
        (
            "a/#",
            "topic 'a/#' contains the wildcard '#': wildcards are only allowed in "
            "subscription filters; publish to a concrete topic",
        ),
        ("a\x00b", "topic 'a\\x00b' contains a NUL character, which MQTT forbids"),
        (
            "a/b/c/d/e/f/g/h/i",
            "topic 'a/b/c/d/e/f/g/h/i' has 8 slashes, over the AWS IoT limit of 7 "
            "(at most 8 levels); use fewer levels",
        ),
        (
            "$SYS/broker",
            "topic '$SYS/broker' starts with '$', which AWS IoT reserves; the only '$' topics a "
            "device may publish to are the shadow requests "
            "$aws/things/{thing}/shadow[/name/{shadow}]/get|update|delete, the jobs requests "
            "$aws/things/{thing}/jobs/get|start-next|{jobId}/get|{jobId}/update and the fleet "
            "provisioning requests $aws/certificates/create[-from-csr]/json and "
            "$aws/provisioning-templates/{template}/provision/json",
        ),
    ],
)
def test_publish_topic_errors_say_what_is_wrong(topic: str, message: str) -> None:
    with pytest.raises(InvalidTopic) as caught:
        validate_topic(topic)
    assert str(caught.value) == message


def test_topic_length_is_counted_in_utf8_bytes() -> None:
    at_limit = "é" * (MAX_TOPIC_BYTES // 2)  # 2 bytes each
    assert validate_topic(at_limit) == at_limit
    with pytest.raises(InvalidTopic, match="is 258 bytes \\(UTF-8\\), over the AWS IoT limit"):
        validate_topic(at_limit + "é")


def test_topic_that_is_not_encodable_is_refused() -> None:
    with pytest.raises(InvalidTopic, match="is not valid UTF-8"):
        validate_topic("a/\ud800")


def test_shadow_request_topics_are_the_only_publishable_dollar_topics() -> None:
    for shadow in (ShadowTopics("d1"), ShadowTopics("d1", "cfg")):
        for topic in (shadow.get, shadow.update, shadow.delete):
            assert validate_topic(topic) == topic
        for topic in (shadow.update_accepted, shadow.update_delta, shadow.get_rejected):
            with pytest.raises(InvalidTopic, match="starts with '\\$'"):
                validate_topic(topic)


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("$aws/things/d1/shadow/update", True),
        ("$aws/things/d1/shadow/name/cfg/get", True),
        ("$aws/things/d1/shadow/delete", True),
        ("$aws/things/d1/shadow/update/accepted", False),
        ("$aws/things/d1/shadow/patch", False),
        ("$aws/things/d1/shadow", False),
        ("$aws/things/d/1/shadow/get", False),
        ("$aws/things/d1/shadow/name//get", False),
        ("$aws/things/d1/shadow/update/", False),
        ("$AWS/things/d1/shadow/update", False),
        ("anc/devices/d1/status", False),
    ],
)
def test_is_shadow_request_topic(topic: str, expected: bool) -> None:
    assert is_shadow_request_topic(topic) is expected


# --- filters -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic_filter", ["#", "+", "a/+/c", "a/#", "+/+/#", "$aws/things/d1/shadow/+/+", "a//b"]
)
def test_valid_filters(topic_filter: str) -> None:
    assert validate_filter(topic_filter) == topic_filter


@pytest.mark.parametrize(
    ("topic_filter", "message"),
    [
        (
            "a/#/b",
            "topic filter 'a/#/b' uses '#' inside a level or before the end: '#' must be the "
            "whole last level, as in 'a/b/#'",
        ),
        (
            "a/b#",
            "topic filter 'a/b#' uses '#' inside a level or before the end: '#' must be the "
            "whole last level, as in 'a/b/#'",
        ),
        (
            "a/b+/c",
            "topic filter 'a/b+/c' uses '+' inside the level 'b+': '+' must be a whole level, "
            "as in 'a/+/c'",
        ),
        ("", "topic filter is empty: give at least one character"),
        (
            "+/+/+/+/+/+/+/+/#",
            "topic filter '+/+/+/+/+/+/+/+/#' has 8 slashes, over the AWS IoT limit of 7 "
            "(at most 8 levels); use fewer levels",
        ),
    ],
)
def test_filter_errors_say_what_is_wrong(topic_filter: str, message: str) -> None:
    with pytest.raises(InvalidTopic) as caught:
        validate_filter(topic_filter)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/+", "a/", True),
        ("a/+", "a", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("a/#", "ab", False),
        ("#", "a/b", True),
        ("#", "/", True),
        ("+/b", "/b", True),
        ("#", "$aws/things/d1/shadow/get", False),
        ("+/things/#", "$aws/things/d1", False),
        ("$aws/#", "$aws/things/d1", True),
        ("$aws/things/+/shadow/+/+", "$aws/things/d1/shadow/update/delta", True),
        ("A/b", "a/b", False),
    ],
)
def test_matches_examples(topic_filter: str, topic: str, expected: bool) -> None:
    assert matches(topic_filter, topic) is expected


# --- shadow topics -----------------------------------------------------------------------------


def test_classic_shadow_topics() -> None:
    shadow = ShadowTopics("anc-device-001")
    prefix = "$aws/things/anc-device-001/shadow"
    assert shadow.prefix == prefix
    assert shadow.get == f"{prefix}/get"
    assert shadow.get_accepted == f"{prefix}/get/accepted"
    assert shadow.get_rejected == f"{prefix}/get/rejected"
    assert shadow.update == f"{prefix}/update"
    assert shadow.update_accepted == f"{prefix}/update/accepted"
    assert shadow.update_rejected == f"{prefix}/update/rejected"
    assert shadow.update_delta == f"{prefix}/update/delta"
    assert shadow.update_documents == f"{prefix}/update/documents"
    assert shadow.delete == f"{prefix}/delete"
    assert shadow.delete_accepted == f"{prefix}/delete/accepted"
    assert shadow.delete_rejected == f"{prefix}/delete/rejected"


def test_named_shadow_topics_reach_but_do_not_pass_the_slash_limit() -> None:
    shadow = ShadowTopics("t" * 128, "s" * 64)
    assert (
        shadow.update_documents
        == f"$aws/things/{'t' * 128}/shadow/name/{'s' * 64}/update/documents"
    )
    assert shadow.update_documents.count("/") == 7
    assert validate_filter(shadow.update_documents)
    assert validate_filter(shadow.all_responses)


def test_shadow_topics_validate_names_and_are_frozen() -> None:
    with pytest.raises(InvalidTopic, match="thing name 'a/b'"):
        ShadowTopics("a/b")
    with pytest.raises(InvalidTopic, match="shadow name 'x y'"):
        ShadowTopics("d1", "x y")
    shadow = ShadowTopics("d1")
    with pytest.raises(AttributeError):
        shadow.thing_name = "d2"  # type: ignore[misc]


RESPONSES = (
    "get_accepted",
    "get_rejected",
    "update_accepted",
    "update_rejected",
    "update_delta",
    "update_documents",
    "delete_accepted",
    "delete_rejected",
)


@pytest.mark.parametrize("shadow_name", [None, "cfg"])
def test_all_responses_matches_each_response_and_no_request(shadow_name: str | None) -> None:
    shadow = ShadowTopics("d1", shadow_name)
    for attribute in RESPONSES:
        assert matches(shadow.all_responses, getattr(shadow, attribute)), attribute
    for request in (shadow.get, shadow.update, shadow.delete):
        assert not matches(shadow.all_responses, request)


def test_classic_all_responses_does_not_catch_named_shadows_or_other_things() -> None:
    classic = ShadowTopics("d1").all_responses
    assert not matches(classic, ShadowTopics("d1", "cfg").update_delta)
    assert not matches(classic, ShadowTopics("d2").update_delta)


def test_parse_shadow_topic() -> None:
    assert parse_shadow_topic("$aws/things/d1/shadow/update/delta") == ShadowTopic(
        "d1", None, "update", "delta"
    )
    assert parse_shadow_topic("$aws/things/d1/shadow/name/cfg/get") == ShadowTopic(
        "d1", "cfg", "get", None
    )
    # `name` is a valid thing name and must not be mistaken for the named-shadow marker.
    assert parse_shadow_topic("$aws/things/name/shadow/delete/rejected") == ShadowTopic(
        "name", None, "delete", "rejected"
    )
    for not_shadow in (
        "$aws/things/d1/shadow/get/delta",  # delta exists only under update
        "$aws/things/d1/shadow/delete/documents",
        "$aws/things/d1/shadow/update/accepted/x",
        "$aws/things/d1/shadow/name/cfg",
        "anc/devices/d1/status",
    ):
        assert parse_shadow_topic(not_shadow) is None, not_shadow


# --- properties --------------------------------------------------------------------------------

names = st.text(alphabet="abcXYZ019:_-", min_size=1, max_size=20)
levels = st.sampled_from(["a", "b", "ab", "", "$x", "é"])
# An empty topic is not a topic: at least one level must be non-empty or there must be two levels.
topic_levels = st.lists(levels, min_size=1, max_size=6).filter(lambda parts: "/".join(parts) != "")
topics = topic_levels.map("/".join)


def reference_matches(topic_filter: str, topic: str) -> bool:
    """Matching written another way: translate the filter to a regular expression."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    if topic_filter == "#":
        return True
    pattern = topic_filter
    tail = ""
    if pattern.endswith("/#"):
        pattern, tail = pattern[:-2], "(/.*)?"
    body = "/".join("[^/]*" if level == "+" else re.escape(level) for level in pattern.split("/"))
    return re.fullmatch(body + tail, topic, flags=re.DOTALL) is not None


@st.composite
def filters_for(draw: st.DrawFn, topic: str) -> str:
    """A filter built from a topic: some levels become '+', maybe a '#' tail replaces the rest."""
    parts = topic.split("/")
    parts = [draw(st.sampled_from([part, "+"])) for part in parts]
    cut = draw(st.integers(min_value=0, max_value=len(parts)))
    if draw(st.booleans()):
        parts = [*parts[:cut], "#"]
    return "/".join(parts)


random_filters = (
    st.lists(st.sampled_from(["a", "b", "", "+", "$x"]), min_size=1, max_size=6)
    .flatmap(lambda parts: st.sampled_from(["/".join(parts), "/".join([*parts, "#"])]))
    .filter(bool)
) | st.just("#")


@given(topics)
def test_a_topic_matches_itself(topic: str) -> None:
    assert matches(topic, topic)


@given(topics)
def test_hash_matches_everything_except_dollar_topics(topic: str) -> None:
    assert matches("#", topic) is (not topic.startswith("$"))


@given(topic_levels)
def test_plus_matches_exactly_one_level_each(parts: list[str]) -> None:
    topic = "/".join(parts)
    plus_filter = "/".join("+" for _ in parts)
    assert matches(plus_filter, topic) is (not topic.startswith("$"))
    assert not matches(plus_filter + "/+", topic)
    if len(parts) > 1:
        assert not matches("/".join("+" for _ in parts[1:]), topic)


@given(topic_levels)
def test_parent_hash_matches_the_parent_itself(parts: list[str]) -> None:
    topic = "/".join(parts)
    assert matches(topic + "/#", topic)


@given(st.data(), topics)
def test_filters_built_from_a_topic_match_it_unless_dollar(data: st.DataObject, topic: str) -> None:
    topic_filter = data.draw(filters_for(topic))
    validate_filter(topic_filter)
    first_is_wildcard = topic_filter.split("/")[0] in ("+", "#")
    assert matches(topic_filter, topic) is not (topic.startswith("$") and first_is_wildcard)


@given(random_filters, topics)
@example("a/#", "a")
@example("+", "")
@example("#", "$x")
@example("a/+/#", "a/b")
def test_matches_agrees_with_a_reference_implementation(topic_filter: str, topic: str) -> None:
    validate_filter(topic_filter)
    assert matches(topic_filter, topic) is reference_matches(topic_filter, topic)


@given(names, st.none() | names)
def test_every_shadow_topic_parses_back(thing: str, shadow_name: str | None) -> None:
    shadow = ShadowTopics(thing, shadow_name)
    expected = {
        "get": ("get", None),
        "update": ("update", None),
        "delete": ("delete", None),
        **{attribute: tuple(attribute.split("_")) for attribute in RESPONSES},
    }
    for attribute, (operation, suffix) in expected.items():
        topic = getattr(shadow, attribute)
        assert parse_shadow_topic(topic) == ShadowTopic(thing, shadow_name, operation, suffix)
        assert is_shadow_request_topic(topic) is (suffix is None)
        assert matches(shadow.all_responses, topic) is (suffix is not None)


@pytest.mark.parametrize(
    ("topic", "is_request"),
    [
        ("$aws/things/t1/jobs/get", True),
        ("$aws/things/t1/jobs/start-next", True),
        ("$aws/things/t1/jobs/fw-1/get", True),
        ("$aws/things/t1/jobs/$next/get", True),
        ("$aws/things/t1/jobs/fw-1/update", True),
        ("$aws/things/t1/jobs/notify", False),
        ("$aws/things/t1/jobs/fw-1/update/accepted", False),
        ("$aws/things/t1/jobs/a/b/update", False),
    ],
)
def test_jobs_request_topics(topic: str, is_request: bool) -> None:
    assert is_jobs_request_topic(topic) is is_request


@pytest.mark.parametrize(
    ("topic", "is_request"),
    [
        ("$aws/certificates/create/json", True),
        ("$aws/certificates/create-from-csr/json", True),
        ("$aws/provisioning-templates/AncFleet_1/provision/json", True),
        ("$aws/certificates/create/cbor", False),  # ancsync speaks JSON only
        ("$aws/certificates/create/json/accepted", False),
        ("$aws/provisioning-templates/a/b/provision/json", False),
        ("$aws/provisioning-templates/" + "t" * 37 + "/provision/json", False),
    ],
)
def test_fleet_provisioning_request_topics(topic: str, is_request: bool) -> None:
    assert is_provisioning_request_topic(topic) is is_request
    if is_request:
        assert validate_topic(topic) == topic
    else:
        with pytest.raises(InvalidTopic, match="reserves"):
            validate_topic(topic)
