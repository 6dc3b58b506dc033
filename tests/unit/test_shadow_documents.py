"""The pure shadow document core: the conformance table, configurable limits, properties."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shadow_cases import CASES, Clock, Document, Replies, encode

from ancsync.emulator import shadow_json as emulator
from ancsync.emulator.shadow_documents import (
    SECTIONS,
    ShadowLimits,
    ShadowStore,
    client_token_of,
)
from ancsync.shadow import document as sdk

THING = "anc-device-001"


class StoreClient:
    """Drives a :class:`ShadowStore` directly, as the MQTT service would."""

    def __init__(self, store: ShadowStore, clock: Clock, thing: str = THING) -> None:
        self.store = store
        self.clock = clock
        self.thing = thing

    async def request(
        self, operation: str, payload: Document | bytes | None = None, *, shadow: str | None = None
    ) -> Replies:
        assert operation in ("get", "update", "delete")
        replies = self.store.handle(
            operation,  # type: ignore[arg-type]
            self.thing,
            shadow,
            encode(payload),
            int(self.clock()),
        )
        # Round-trip through JSON like the wire does, so the two drivers see the same values.
        return Replies([(reply.suffix, orjson.loads(reply.payload)) for reply in replies])


@pytest.mark.parametrize("name", sorted(CASES))
async def test_conformance(name: str) -> None:
    clock = Clock()
    await CASES[name](StoreClient(ShadowStore(), clock), clock)


def run(store: ShadowStore, operation: str, payload: Any, now: int = 100) -> list[Any]:
    replies = store.handle(operation, THING, None, encode(payload), now)  # type: ignore[arg-type]
    return [(reply.suffix, reply.document) for reply in replies]


# --- Configurable limits and open points ---------------------------------------------------------


def test_depth_limit_is_configurable() -> None:
    store = ShadowStore(ShadowLimits(max_depth=2))
    assert run(store, "update", {"state": {"reported": {"a": {"b": 1}}}})[0][0] == "update/accepted"
    [(suffix, error)] = run(store, "update", {"state": {"reported": {"a": {"b": [1]}}}})
    assert suffix == "update/rejected"
    assert error["message"] == "JSON contains too many levels of nesting; maximum is 2"


def test_size_and_token_limits_are_configurable() -> None:
    store = ShadowStore(ShadowLimits(max_state_bytes=30, max_client_token_bytes=2))
    [(_, too_big)] = run(store, "update", {"state": {"reported": {"a": "x" * 20}}})
    assert too_big["code"] == 413
    [(_, bad_token)] = run(store, "update", {"state": {}, "clientToken": "abc"})
    assert bad_token["message"] == "Invalid clientToken"


def test_empty_update_can_leave_the_version_alone() -> None:
    store = ShadowStore(ShadowLimits(empty_update_bumps_version=False))
    run(store, "update", {"state": {"reported": {"a": 1}}})
    replies = run(store, "update", {"state": {}, "clientToken": "t"})
    assert replies == [
        (
            "update/accepted",
            {"state": {}, "metadata": {}, "version": 1, "timestamp": 100, "clientToken": "t"},
        )
    ]
    assert store.shadow(THING) is not None
    assert store.shadow(THING).version == 1  # type: ignore[union-attr]


def test_version_on_a_missing_shadow_can_be_ignored() -> None:
    store = ShadowStore(ShadowLimits(version_on_missing_shadow_conflicts=False))
    [accepted, *_] = run(store, "update", {"state": {"reported": {"a": 1}}, "version": 7})
    assert accepted[1]["version"] == 1


def test_get_can_include_delta_metadata() -> None:
    store = ShadowStore(ShadowLimits(delta_metadata_in_get=True))
    run(store, "update", {"state": {"desired": {"a": 1, "b": 2}, "reported": {"a": 1}}}, now=5)
    [(_, got)] = run(store, "get", None, now=9)
    assert got["metadata"]["delta"] == {"b": {"timestamp": 5}}


def test_a_rejected_update_changes_nothing() -> None:
    store = ShadowStore()
    run(store, "update", {"state": {"reported": {"a": 1}}})
    before = store.shadow(THING)
    run(store, "update", {"state": {"reported": {"a": 2}}, "version": 5})
    assert store.shadow(THING) == before


def test_client_token_of_is_lenient() -> None:
    assert client_token_of(b'{"clientToken": "abc"}') == "abc"
    assert client_token_of(b"") is None
    assert client_token_of(b"\xff") is None
    assert client_token_of(b'{"clientToken": 5}') is None
    assert client_token_of(orjson.dumps({"clientToken": "x" * 65})) is None


def test_replies_handed_out_stay_valid_after_later_updates() -> None:
    store = ShadowStore()
    first = store.update(THING, None, b'{"state": {"reported": {"n": {"a": 1}}}}', 1)
    documents = first[-1].document
    store.update(THING, None, b'{"state": {"reported": {"n": {"a": 2, "b": 3}}}}', 2)
    assert documents["current"]["state"] == {"reported": {"n": {"a": 1}}}


# --- Properties ---------------------------------------------------------------------------------

keys = st.sampled_from(["a", "b", "c", "n"])
stored_scalars = st.booleans() | st.integers(-3, 3) | st.sampled_from([1.0, 0.5, "s", "t"])
scalars = st.none() | stored_scalars
arrays = st.lists(st.integers(0, 2) | st.sampled_from(["x", "y"]), max_size=3)
values = st.recursive(
    scalars | arrays,
    lambda children: st.dictionaries(keys, children, max_size=3),
    max_leaves=6,
)
# What a stored section can hold: no nulls, no empty objects.
stored_values = st.recursive(
    stored_scalars | arrays,
    lambda children: st.dictionaries(keys, children, min_size=1, max_size=3),
    max_leaves=6,
)
sections = st.none() | st.dictionaries(keys, values, max_size=4)
updates = st.dictionaries(st.sampled_from(["desired", "reported"]), sections, max_size=2)
requests = st.lists(st.none() | updates, min_size=1, max_size=8)


def metadata_matches_shape(state: Any, metadata: Any) -> bool:
    if isinstance(state, dict):
        return (
            isinstance(metadata, dict)
            and state.keys() == metadata.keys()
            and all(metadata_matches_shape(state[k], metadata[k]) for k in state)
        )
    if isinstance(state, list):
        return isinstance(metadata, list) and len(metadata) == len(state)
    return isinstance(metadata, dict) and set(metadata) == {"timestamp"}


def has_empty_object(value: Any) -> bool:
    if isinstance(value, dict):
        return not value or any(has_empty_object(child) for child in value.values())
    return False


@settings(max_examples=150, deadline=None)
@given(requests)
def test_stored_state_keeps_its_invariants(states: list[Any]) -> None:
    store = ShadowStore(ShadowLimits(max_depth=64))
    last_version = 0
    for now, state in enumerate(states, start=1):
        replies = run(store, "update", {"state": state}, now=now)
        accepted = dict(replies)["update/accepted"]
        assert accepted["version"] == last_version + 1
        last_version = accepted["version"]
        shadow = store.shadow(THING)
        assert shadow is not None
        assert shadow.version == last_version
        assert metadata_matches_shape(shadow.state, shadow.metadata)
        assert not any(has_empty_object(section) for section in shadow.state.values())
        expected_delta = sdk.delta(
            shadow.state.get("desired", {}), shadow.state.get("reported", {})
        )
        published = dict(replies).get("update/delta")
        if expected_delta:
            assert published is not None
            assert published["state"] == expected_delta
            assert metadata_matches_shape(published["state"], published["metadata"])
        else:
            assert published is None
        [(_, got)] = run(store, "get", None, now=now)
        assert got["state"].get("delta", {}) == expected_delta
        assert metadata_matches_shape(
            {k: v for k, v in got["state"].items() if k != "delta"}, got["metadata"]
        )


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["update", "delete", "get"]), min_size=1, max_size=12))
def test_versions_only_grow_across_deletes(operations: list[str]) -> None:
    store = ShadowStore()
    seen: list[int] = []
    for operation in operations:
        for suffix, document in run(store, operation, {"state": {"reported": {"a": 1}}}):
            if suffix == "update/accepted":
                seen.append(document["version"])
    assert seen == list(range(1, len(seen) + 1))


@given(
    st.dictionaries(keys, stored_values, max_size=4),
    st.dictionaries(keys, stored_values, max_size=4),
)
@pytest.mark.parametrize("delta", [emulator.delta, sdk.delta], ids=["emulator", "sdk"])
def test_delta_is_empty_when_desired_is_already_reported(
    delta: Any, desired: dict[str, Any], reported: dict[str, Any]
) -> None:
    assert delta(desired, desired) == {}
    assert delta(desired, {**reported, **desired}) == {}
    for key, value in delta(desired, reported).items():
        assert key in desired
        assert not isinstance(value, dict) or value


# --- The emulator is an independent oracle: its own code must agree with the SDK's ----------------
#
# Compared strictly (``1`` and ``1.0`` are told apart, as are ``true`` and ``1``), on documents
# made to hit the edges: nested objects, arrays, nulls that delete, equal numbers written as int
# and as float, booleans beside numbers.

numbers = st.sampled_from([0, 1, -1, 0.0, 1.0, -1.0, 2.5, True, False])
leaves = numbers | st.sampled_from(["s", "t", ""]) | st.lists(numbers, max_size=3)
json_objects = st.recursive(
    st.dictionaries(keys, leaves, max_size=3),
    lambda children: st.dictionaries(keys, leaves | children, max_size=3),
    max_leaves=10,
)
# A patch may also hold nulls (delete) and empty objects.
patches = st.recursive(
    st.dictionaries(keys, st.none() | leaves | st.just({}), max_size=3),
    lambda children: st.dictionaries(keys, st.none() | leaves | children, max_size=3),
    max_leaves=10,
)


def twin(value: Any) -> Any:
    """The same JSON value with every number written the other way (1 <-> 1.0)."""
    if isinstance(value, bool) or not isinstance(value, int | float | list | dict):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, list):
        return [twin(item) for item in value]
    return {key: twin(item) for key, item in value.items()}


def lookalike(value: Any) -> Any:
    """A different JSON value that Python may take for the same: booleans as 1 and 0, and
    arrays in reverse order."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, list):
        return [lookalike(item) for item in reversed(value)]
    if isinstance(value, dict):
        return {key: lookalike(item) for key, item in value.items()}
    return value


@st.composite
def near(draw: st.DrawFn, value: Any) -> Any:
    """A value like ``value``: itself, its twin, a lookalike, something else, or (objects) key
    by key."""
    choice = draw(st.sampled_from(["same", "twin", "lookalike", "other", "per key"]))
    if choice == "same":
        return value
    if choice == "twin":
        return twin(value)
    if choice == "lookalike":
        return lookalike(value)
    if choice == "other" or not isinstance(value, dict):
        return draw(leaves | json_objects)
    kept = {key: draw(near(item)) for key, item in value.items() if draw(st.booleans())}
    return {**draw(st.dictionaries(keys, leaves, max_size=1)), **kept}


@st.composite
def desired_and_reported(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    desired = draw(json_objects)
    reported = draw(near(desired))
    return desired, reported if isinstance(reported, dict) else {}


def canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


@settings(max_examples=400, deadline=None)
@given(desired_and_reported())
def test_the_emulator_computes_the_same_delta_as_the_sdk(
    documents: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    desired, reported = documents
    assert canonical(emulator.delta(desired, reported)) == canonical(sdk.delta(desired, reported))


@settings(max_examples=400, deadline=None)
@given(json_objects.flatmap(lambda stored: st.tuples(st.just(stored), near(stored) | patches)))
def test_the_emulator_merges_as_the_sdk_does(documents: tuple[dict[str, Any], Any]) -> None:
    stored, patch = documents
    if not isinstance(patch, dict):
        patch = {"n": patch}
    stored = sdk.merge({}, stored)  # what a store holds: no empty objects
    state, metadata = emulator.merge(stored, emulator.stamp(stored, 1), patch, 2)
    assert canonical(state) == canonical(sdk.merge(stored, patch))
    assert metadata_matches_shape(state, metadata)


def merged_sections(sections: dict[str, Any], state: Any) -> dict[str, Any]:
    """The stored sections after an update with ``state``, by the SDK's merge (reference §3.1)."""
    if state is None:
        return {}
    result = dict(sections)
    for name, patch in state.items():
        merged = {} if patch is None else sdk.merge(result.get(name, {}), patch)
        if merged:
            result[name] = merged
        else:
            result.pop(name, None)
    return result


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.none() | st.dictionaries(st.sampled_from(SECTIONS), st.none() | patches),
        min_size=1,
        max_size=6,
    )
)
def test_the_store_holds_what_the_sdk_merge_predicts(states: list[Any]) -> None:
    store = ShadowStore(ShadowLimits(max_depth=64))
    expected: dict[str, Any] = {}
    for now, state in enumerate(states, start=1):
        [accepted, *_] = run(store, "update", {"state": state}, now=now)
        assert accepted[0] == "update/accepted"
        expected = merged_sections(expected, state)
        shadow = store.shadow(THING)
        assert shadow is not None
        assert canonical(shadow.state) == canonical(expected)
        wanted = sdk.delta(expected.get("desired", {}), expected.get("reported", {}))
        assert canonical(shadow.delta()) == canonical(wanted)
