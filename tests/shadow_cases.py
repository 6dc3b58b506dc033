"""The Device Shadow conformance table: one case per rule of shared/reference/aws-iot-shadow.md.

Each case is an async function of a :class:`ShadowClient` (send a request, get the replies it
caused) and a :class:`Clock`. The same table runs twice: against the pure core
(tests/unit/test_shadow_documents.py) and over MQTT against the running emulator
(tests/integration/test_shadow_service.py), so the wire layer cannot drift from the core.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

Document = dict[str, Any]


@dataclass
class Replies:
    """The replies one request caused, in the order they arrived: ``(suffix, document)``."""

    items: list[tuple[str, Document]]

    @property
    def suffixes(self) -> list[str]:
        return [suffix for suffix, _ in self.items]

    def one(self, suffix: str) -> Document:
        found = [document for got, document in self.items if got == suffix]
        assert len(found) == 1, f"expected one {suffix!r} reply, got {self.suffixes}"
        return found[0]

    def error(self, operation: str) -> tuple[int, str]:
        assert self.suffixes == [f"{operation}/rejected"], self.suffixes
        document = self.items[0][1]
        return document["code"], document["message"]


class ShadowClient(Protocol):
    thing: str

    async def request(
        self, operation: str, payload: Document | bytes | None = None, *, shadow: str | None = None
    ) -> Replies:
        """Send one request; return the replies it caused, in order."""
        ...


class Clock:
    """A settable clock in epoch seconds, passed to the service so metadata times are known."""

    def __init__(self, now: float = 1_700_000_000) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> int:
        self.now += seconds
        return int(self.now)


def encode(payload: Document | bytes | None) -> bytes:
    if payload is None:
        return b""
    if isinstance(payload, bytes):
        return payload
    return orjson.dumps(payload)


Case = Callable[[ShadowClient, Clock], Awaitable[None]]
CASES: dict[str, Case] = {}


def case(function: Case) -> Case:
    CASES[function.__name__] = function
    return function


async def update(client: ShadowClient, state: Any, **extra: Any) -> Replies:
    return await client.request("update", {"state": state, **extra})


async def get_state(client: ShadowClient, shadow: str | None = None) -> Document:
    return (await client.request("get", shadow=shadow)).one("get/accepted")


# --- 1. Topics and clientToken ------------------------------------------------------------------


@case
async def classic_and_named_shadows_are_separate(client: ShadowClient, clock: Clock) -> None:
    await update(client, {"reported": {"a": 1}})
    await update(client, {"reported": {"a": 2}})
    named = await client.request("update", {"state": {"reported": {"b": 1}}}, shadow="cfg")
    assert named.one("update/accepted")["version"] == 1
    assert (await get_state(client, "cfg"))["state"] == {"reported": {"b": 1}}
    classic = await get_state(client)
    assert classic["state"] == {"reported": {"a": 2}}
    assert classic["version"] == 2


@case
async def client_token_is_echoed_on_every_reply(client: ShadowClient, clock: Clock) -> None:
    replies = await update(client, {"desired": {"x": 1}}, clientToken="t-1")
    assert replies.suffixes == ["update/accepted", "update/delta", "update/documents"]
    assert all(document["clientToken"] == "t-1" for _, document in replies.items)
    got = await client.request("get", {"clientToken": "t-2"})
    assert got.one("get/accepted")["clientToken"] == "t-2"
    conflict = await update(client, {"desired": {"x": 2}}, clientToken="t-3", version=99)
    assert conflict.one("update/rejected")["clientToken"] == "t-3"
    deleted = await client.request("delete", {"clientToken": "t-4"})
    assert deleted.one("delete/accepted")["clientToken"] == "t-4"
    missing = await client.request("get", {"clientToken": "t-5"})
    assert missing.one("get/rejected")["clientToken"] == "t-5"


@case
async def no_client_token_means_none_echoed(client: ShadowClient, clock: Clock) -> None:
    replies = await update(client, {"desired": {"x": 1}})
    assert all("clientToken" not in document for _, document in replies.items)


# --- 2.1 Update requests ------------------------------------------------------------------------


@case
async def state_is_required(client: ShadowClient, clock: Clock) -> None:
    replies = await client.request("update", {"clientToken": "t"})
    assert replies.error("update") == (400, "Missing required node: state")
    assert replies.one("update/rejected")["timestamp"] == int(clock.now)


@case
async def state_must_be_an_object(client: ShadowClient, clock: Clock) -> None:
    for bad in (1, "x", [1], True):
        replies = await update(client, bad)
        assert replies.error("update") == (400, "State node must be an object")


@case
async def sections_must_be_objects(client: ShadowClient, clock: Clock) -> None:
    desired = await update(client, {"desired": [1]})
    assert desired.error("update") == (400, "Desired node must be an object")
    reported = await update(client, {"reported": 5})
    assert reported.error("update") == (400, "Reported node must be an object")


@case
async def state_rejects_other_children(client: ShadowClient, clock: Clock) -> None:
    replies = await update(client, {"desired": {"a": 1}, "delta": {"a": 1}})
    assert replies.error("update") == (400, "State contains an invalid node: 'delta'")
    assert (await client.request("get")).error("get")[0] == 404  # nothing was stored


@case
async def section_null_removes_the_section(client: ShadowClient, clock: Clock) -> None:
    await update(client, {"desired": {"a": 1}, "reported": {"a": 2}})
    replies = await update(client, {"desired": None})
    assert replies.one("update/accepted")["state"] == {"desired": None}
    got = await get_state(client)
    assert got["state"] == {"reported": {"a": 2}}
    assert set(got["metadata"]) == {"reported"}


@case
async def state_null_clears_both_and_keeps_the_shadow(client: ShadowClient, clock: Clock) -> None:
    await update(client, {"desired": {"a": 1}, "reported": {"b": 2}})
    replies = await update(client, None, clientToken="c")
    accepted = replies.one("update/accepted")
    now = int(clock.now)
    assert accepted == {
        "state": None,
        "metadata": {"timestamp": now},
        "version": 2,
        "timestamp": now,
        "clientToken": "c",
    }
    got = await get_state(client)
    assert (got["state"], got["metadata"], got["version"]) == ({}, {}, 2)


@case
async def empty_state_changes_nothing_but_the_version(client: ShadowClient, clock: Clock) -> None:
    await update(client, {"reported": {"a": 1}})
    before = await get_state(client)
    replies = await update(client, {})
    assert replies.one("update/accepted")["version"] == 2
    after = await get_state(client)
    assert (after["state"], after["metadata"]) == (before["state"], before["metadata"])


@case
async def client_token_must_be_a_short_string(client: ShadowClient, clock: Clock) -> None:
    ok = await update(client, {"reported": {"a": 1}}, clientToken="x" * 64)
    assert ok.one("update/accepted")["clientToken"] == "x" * 64
    for bad in ("x" * 65, "é" * 33, 7):
        replies = await update(client, {"reported": {"a": 1}}, clientToken=bad)
        assert replies.error("update") == (400, "Invalid clientToken")
        assert "clientToken" not in replies.one("update/rejected")


@case
async def version_must_be_an_integer(client: ShadowClient, clock: Clock) -> None:
    await update(client, {"reported": {"a": 1}})
    for bad in ("1", 1.5, True, None):
        replies = await update(client, {"reported": {"a": 2}}, version=bad)
        assert replies.error("update") == (400, "Invalid version")


@case
async def version_must_match_the_current_one(client: ShadowClient, clock: Clock) -> None:
    await update(client, {"reported": {"a": 1}})
    stale = await update(client, {"reported": {"a": 2}}, version=0, clientToken="v")
    assert stale.error("update") == (409, "Version conflict")
    assert stale.one("update/rejected") == {
        "code": 409,
        "message": "Version conflict",
        "timestamp": int(clock.now),
        "clientToken": "v",
    }
    fresh = await update(client, {"reported": {"a": 2}}, version=1)
    assert fresh.one("update/accepted")["version"] == 2


@case
async def version_for_a_missing_shadow_is_a_conflict(client: ShadowClient, clock: Clock) -> None:
    replies = await update(client, {"reported": {"a": 1}}, version=1)
    assert replies.error("update") == (409, "Version conflict")


@case
async def only_desired_and_reported_are_stored(client: ShadowClient, clock: Clock) -> None:
    payload = {"state": {"reported": {"a": 1}}, "metadata": {"x": 1}, "extra": [1, 2]}
    await client.request("update", payload)
    got = await get_state(client)
    assert got["state"] == {"reported": {"a": 1}}
    assert got["metadata"] == {"reported": {"a": {"timestamp": int(clock.now)}}}


# --- 2.2 update/accepted ------------------------------------------------------------------------


@case
async def accepted_echoes_the_sent_state_and_its_metadata(
    client: ShadowClient, clock: Clock
) -> None:
    await update(client, {"desired": {"keep": 1}})
    now = clock.advance(5)
    state = {"desired": {"a": {"b": 1, "gone": None}, "list": [1, {"c": 2}]}, "reported": None}
    replies = await update(client, state, clientToken="e")
    leaf = {"timestamp": now}
    assert replies.one("update/accepted") == {
        "state": state,
        "metadata": {
            "desired": {"a": {"b": leaf, "gone": leaf}, "list": [leaf, leaf]},
            "reported": leaf,
        },
        "version": 2,
        "timestamp": now,
        "clientToken": "e",
    }


# --- 2.3 get/accepted ---------------------------------------------------------------------------


@case
async def get_returns_the_full_document(client: ShadowClient, clock: Clock) -> None:
    t1 = int(clock.now)
    await update(client, {"desired": {"a": 1, "b": 2}, "reported": {"a": 1, "c": 3}})
    t2 = clock.advance(10)
    got = await client.request("get", {"clientToken": "g"})
    leaf = {"timestamp": t1}
    assert got.one("get/accepted") == {
        "state": {
            "desired": {"a": 1, "b": 2},
            "reported": {"a": 1, "c": 3},
            "delta": {"b": 2},
        },
        "metadata": {"desired": {"a": leaf, "b": leaf}, "reported": {"a": leaf, "c": leaf}},
        "version": 1,
        "timestamp": t2,
        "clientToken": "g",
    }


@case
async def get_omits_empty_sections_and_delta(client: ShadowClient, clock: Clock) -> None:
    await update(client, {"desired": {"a": 1}, "reported": {"a": 1.0}})
    got = await get_state(client)
    assert set(got["state"]) == {"desired", "reported"}
    await update(client, {"desired": None})
    assert set((await get_state(client))["state"]) == {"reported"}


@case
async def get_of_a_missing_shadow_is_404(client: ShadowClient, clock: Clock) -> None:
    replies = await client.request("get", {"clientToken": "m"})
    assert replies.one("get/rejected") == {
        "code": 404,
        "message": f"No shadow exists with name: '{client.thing}'",
        "clientToken": "m",
    }
    named = await client.request("get", shadow="cfg")
    assert named.error("get") == (404, f"No shadow exists with name: '{client.thing}~cfg'")


# --- 2.4 update/delta ---------------------------------------------------------------------------


@case
async def delta_carries_the_whole_delta(client: ShadowClient, clock: Clock) -> None:
    t1 = int(clock.now)
    await update(client, {"desired": {"a": 1}})
    t2 = clock.advance(3)
    replies = await update(client, {"desired": {"n": {"x": 1, "y": [1, 2]}}}, clientToken="d")
    accepted = replies.one("update/accepted")
    assert replies.one("update/delta") == {
        "version": accepted["version"],
        "timestamp": accepted["timestamp"],
        "state": {"a": 1, "n": {"x": 1, "y": [1, 2]}},
        "metadata": {
            "a": {"timestamp": t1},
            "n": {"x": {"timestamp": t2}, "y": [{"timestamp": t2}, {"timestamp": t2}]},
        },
        "clientToken": "d",
    }


@case
async def delta_follows_a_reported_only_update(client: ShadowClient, clock: Clock) -> None:
    await update(client, {"desired": {"a": 1, "b": 1}, "reported": {"a": 1, "b": 1}})
    replies = await update(client, {"reported": {"b": 2}})
    assert replies.suffixes == ["update/accepted", "update/delta", "update/documents"]
    assert replies.one("update/delta")["state"] == {"b": 1}


@case
async def no_delta_when_reported_matches(client: ShadowClient, clock: Clock) -> None:
    await update(client, {"desired": {"a": 1}})
    replies = await update(client, {"reported": {"a": 1}})
    assert replies.suffixes == ["update/accepted", "update/documents"]


# --- 2.5 update/documents -----------------------------------------------------------------------


@case
async def documents_show_previous_and_current(client: ShadowClient, clock: Clock) -> None:
    t1 = int(clock.now)
    first = await update(client, {"desired": {"a": 1}}, clientToken="p")
    assert first.one("update/documents") == {
        "previous": None,
        "current": {
            "state": {"desired": {"a": 1}},
            "metadata": {"desired": {"a": {"timestamp": t1}}},
            "version": 1,
        },
        "timestamp": t1,
        "clientToken": "p",
    }
    t2 = clock.advance(1)
    second = (await update(client, {"reported": {"a": 2}})).one("update/documents")
    assert second["previous"] == first.one("update/documents")["current"]
    assert second["current"] == {
        "state": {"desired": {"a": 1}, "reported": {"a": 2}},
        "metadata": {"desired": {"a": {"timestamp": t1}}, "reported": {"a": {"timestamp": t2}}},
        "version": 2,
    }
    assert second["timestamp"] == t2


# --- 3.1 Merge ----------------------------------------------------------------------------------


@case
async def objects_merge_deeply(client: ShadowClient, clock: Clock) -> None:
    await update(client, {"reported": {"n": {"a": 1, "b": {"c": 1}}, "top": 1}})
    await update(client, {"reported": {"n": {"b": {"d": 2}, "e": 3}}})
    got = await get_state(client)
    assert got["state"]["reported"] == {"n": {"a": 1, "b": {"c": 1, "d": 2}, "e": 3}, "top": 1}


@case
async def null_deletes_a_key_and_its_metadata(client: ShadowClient, clock: Clock) -> None:
    await update(client, {"reported": {"a": 1, "n": {"b": 1, "c": 2}}})
    await update(client, {"reported": {"a": None, "n": {"b": None}, "never": None}})
    got = await get_state(client)
    assert got["state"]["reported"] == {"n": {"c": 2}}
    assert got["metadata"]["reported"] == {"n": {"c": {"timestamp": int(clock.now)}}}


@case
async def other_values_replace_including_type_changes(client: ShadowClient, clock: Clock) -> None:
    await update(client, {"reported": {"a": {"x": 1}, "b": 1, "c": "s"}})
    await update(client, {"reported": {"a": 5, "b": {"y": 2}, "c": False}})
    got = await get_state(client)
    assert got["state"]["reported"] == {"a": 5, "b": {"y": 2}, "c": False}


@case
async def arrays_are_replaced_whole(client: ShadowClient, clock: Clock) -> None:
    await update(client, {"reported": {"list": [1, 2, 3]}})
    t2 = clock.advance(2)
    await update(client, {"reported": {"list": [9]}})
    got = await get_state(client)
    assert got["state"]["reported"] == {"list": [9]}
    assert got["metadata"]["reported"] == {"list": [{"timestamp": t2}]}


@case
async def arrays_containing_null_are_rejected(client: ShadowClient, clock: Clock) -> None:
    replies = await update(client, {"reported": {"list": [1, None]}})
    assert replies.error("update") == (400, "Invalid JSON")


@case
async def objects_that_become_empty_disappear(client: ShadowClient, clock: Clock) -> None:
    await update(client, {"desired": {"n": {"a": 1}}, "reported": {"r": 1}})
    await update(client, {"desired": {"n": {"a": None}}, "reported": {"e": {}}})
    got = await get_state(client)
    assert got["state"] == {"reported": {"r": 1}}
    assert got["metadata"] == {"reported": {"r": {"timestamp": int(clock.now)}}}


@case
async def desired_is_kept_when_reported_catches_up(client: ShadowClient, clock: Clock) -> None:
    await update(client, {"desired": {"a": 1}})
    await update(client, {"reported": {"a": 1}})
    got = await get_state(client)
    assert got["state"] == {"desired": {"a": 1}, "reported": {"a": 1}}


@case
async def any_update_creates_the_shadow(client: ShadowClient, clock: Clock) -> None:
    replies = await update(client, {"reported": {"a": 1}})
    assert replies.one("update/accepted")["version"] == 1
    assert (await get_state(client))["version"] == 1


# --- 3.2 Metadata -------------------------------------------------------------------------------


@case
async def metadata_restamps_only_touched_leaves(client: ShadowClient, clock: Clock) -> None:
    t1 = int(clock.now)
    await update(client, {"reported": {"a": 1, "n": {"b": 1, "c": 1}}})
    t2 = clock.advance(60)
    await update(client, {"reported": {"n": {"c": 2}}})
    got = await get_state(client)
    assert got["metadata"]["reported"] == {
        "a": {"timestamp": t1},
        "n": {"b": {"timestamp": t1}, "c": {"timestamp": t2}},
    }


@case
async def metadata_does_not_count_toward_the_size(client: ShadowClient, clock: Clock) -> None:
    # 8192 bytes of state with 800 leaves: their metadata alone would be far over the limit.
    filler = "x" * (8192 - len(b'{"reported":{"s":""}}') - 800 * len(b',"k000":0'))
    leaves = {f"k{i:03}": 0 for i in range(800)}
    replies = await update(client, {"reported": {"s": filler, **leaves}})
    assert replies.suffixes[0] == "update/accepted"


# --- 3.3 Delta ----------------------------------------------------------------------------------


@case
async def delta_follows_the_reference_algorithm(client: ShadowClient, clock: Clock) -> None:
    desired = {
        "same": 1,
        "int": 1,
        "diff": "a",
        "missing": 1,
        "list": [1, 2],
        "n": {"x": 1, "y": 2},
    }
    reported = {"same": 1, "int": 1.0, "diff": "b", "list": [2, 1], "n": {"x": 1, "y": 3}, "r": 1}
    replies = await update(client, {"desired": desired, "reported": reported})
    assert replies.one("update/delta")["state"] == {
        "diff": "a",
        "missing": 1,
        "list": [1, 2],
        "n": {"y": 2},
    }


@case
async def equal_nested_objects_give_no_delta_key(client: ShadowClient, clock: Clock) -> None:
    both = {"n": {"x": [1, {"y": 1}]}, "b": True}
    replies = await update(client, {"desired": both, "reported": both})
    assert "update/delta" not in replies.suffixes
    assert "delta" not in (await get_state(client))["state"]


@case
async def true_is_not_one(client: ShadowClient, clock: Clock) -> None:
    replies = await update(client, {"desired": {"a": True}, "reported": {"a": 1}})
    assert replies.one("update/delta")["state"] == {"a": True}


# --- 3.5 Versions -------------------------------------------------------------------------------


@case
async def versions_start_at_one_and_add_one(client: ShadowClient, clock: Clock) -> None:
    versions = []
    for value in range(4):
        replies = await update(client, {"reported": {"a": value}})
        versions.append(replies.one("update/accepted")["version"])
    assert versions == [1, 2, 3, 4]


@case
async def delete_keeps_the_version_and_recreate_continues(
    client: ShadowClient, clock: Clock
) -> None:
    await update(client, {"reported": {"a": 1}})
    await update(client, {"reported": {"a": 2}})
    deleted = await client.request("delete")
    assert deleted.one("delete/accepted") == {"version": 2, "timestamp": int(clock.now)}
    assert (await client.request("get")).error("get")[0] == 404
    recreated = await update(client, {"reported": {"b": 1}})
    assert recreated.one("update/accepted")["version"] == 3
    assert recreated.one("update/documents")["previous"] is None
    assert (await get_state(client))["state"] == {"reported": {"b": 1}}


@case
async def deleting_twice_is_404(client: ShadowClient, clock: Clock) -> None:
    await update(client, {"reported": {"a": 1}})
    await client.request("delete")
    again = await client.request("delete", {"clientToken": "z"})
    assert again.one("delete/rejected") == {
        "code": 404,
        "message": f"No shadow exists with name: '{client.thing}'",
        "clientToken": "z",
    }
    never = await client.request("delete", shadow="never")
    assert never.error("delete") == (404, f"No shadow exists with name: '{client.thing}~never'")


@case
async def delete_ignores_its_payload(client: ShadowClient, clock: Clock) -> None:
    await update(client, {"reported": {"a": 1}})
    replies = await client.request("delete", b"not json at all")
    assert replies.suffixes == ["delete/accepted"]


# --- 4. Errors ----------------------------------------------------------------------------------


@case
async def invalid_json_is_400(client: ShadowClient, clock: Clock) -> None:
    for bad in (b"{not json", b"", b"[1, 2]", b'"state"'):
        replies = await client.request("update", bad)
        assert replies.error("update") == (400, "Invalid JSON")
    assert (await client.request("get", b"{x")).error("get") == (400, "Invalid JSON")


@case
async def non_utf8_is_415(client: ShadowClient, clock: Clock) -> None:
    message = "Unsupported documented encoding; supported encoding is UTF-8"
    replies = await client.request("update", b'{"state": {"reported": {"a": "\xff"}}}')
    assert replies.error("update") == (415, message)
    assert (await client.request("get", b"\xfe\xff")).error("get") == (415, message)


@case
async def nesting_deeper_than_six_is_400(client: ShadowClient, clock: Clock) -> None:
    def nest(levels: int) -> Any:  # `levels` objects/arrays, the section included
        value: Any = 1
        for level in range(levels):
            value = [value] if level == 0 else {"k": value}
        return value

    ok = await update(client, {"reported": nest(6)})
    assert ok.suffixes[0] == "update/accepted"
    deep = await update(client, {"reported": nest(7)})
    assert deep.error("update") == (400, "JSON contains too many levels of nesting; maximum is 6")


@case
async def state_over_8192_bytes_is_413(client: ShadowClient, clock: Clock) -> None:
    overhead = len(b'{"reported":{"a":""}}')
    exact = await update(client, {"reported": {"a": "x" * (8192 - overhead)}})
    assert exact.suffixes[0] == "update/accepted"
    over = await update(client, {"reported": {"a": "x" * (8193 - overhead)}})
    assert over.error("update") == (413, "The payload exceeds the maximum size allowed")


@case
async def size_is_measured_after_the_merge(client: ShadowClient, clock: Clock) -> None:
    await update(client, {"desired": {"a": "x" * 5000}})
    replies = await update(client, {"reported": {"b": "y" * 5000}})
    assert replies.error("update") == (413, "The payload exceeds the maximum size allowed")
    assert (await get_state(client))["version"] == 1  # the rejected update changed nothing
