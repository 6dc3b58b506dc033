"""DeviceShadowSync's logic without a network: the document rules, the local copy, and the state
machine against the emulator's pure shadow core behind an in-memory connection.

The integration tests (tests/integration/test_shadow_sync.py) run the same behaviour over a real
broker with real TLS; these pin the rules precisely and drive the faults a broker cannot produce
on demand (a lost reply, a throttle, a reply from the past).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import orjson
import pytest

from ancsync import AncDesiredState, BackoffPolicy, PayloadTooLarge, ShadowRejected, ShadowTimeout
from ancsync.emulator.shadow_documents import ShadowStore
from ancsync.errors import InvalidPayload
from ancsync.mqtt.outbox import Outbox, Producer
from ancsync.shadow import DeviceShadowSync
from ancsync.shadow.document import (
    LocalShadow,
    check_state_limits,
    combine,
    delta,
    depth,
    json_equal,
    merge,
)
from ancsync.shadow.reporting import ReportQueue
from ancsync.topics import ShadowTopics, matches, parse_shadow_topic

THING = "anc-device-001"
FAST = BackoffPolicy(base=0.001, cap=0.01)

# --- the document rules -------------------------------------------------------------------------


def test_delta_follows_the_reference() -> None:
    desired = {"a": 1, "b": {"x": 1, "y": 2}, "c": [1, 2], "d": True, "e": {"z": 1}}
    reported = {"a": 1.0, "b": {"x": 1, "y": 3}, "c": [1, 2], "d": 1, "e": {"z": 1}, "r": 5}
    assert delta(desired, reported) == {"b": {"y": 2}, "d": True}
    assert delta({"k": {"n": 1}}, {}) == {"k": {"n": 1}}
    assert delta({}, {"k": 1}) == {}


def test_json_equal_is_json_equality() -> None:
    assert json_equal(1, 1.0)
    assert not json_equal(True, 1)
    assert json_equal({"a": [1, {"b": 2.0}]}, {"a": [1.0, {"b": 2}]})
    assert not json_equal({"a": 1}, {"a": 1, "b": 2})
    assert not json_equal(0, False)
    assert not json_equal([1, 2], [2, 1])
    assert not json_equal({"a": 1}, {"a": 1, "b": None})
    assert not json_equal("1", 1)
    assert json_equal(None, None)


def test_merge_deletes_nulls_and_drops_empty_objects() -> None:
    stored = {"a": 1, "b": {"x": 1}, "c": 3}
    assert merge(stored, {"a": None, "b": {"x": None}, "d": [1]}) == {"c": 3, "d": [1]}
    assert stored == {"a": 1, "b": {"x": 1}, "c": 3}  # not modified


def test_combine_keeps_nulls_and_the_newest_value() -> None:
    assert combine({"a": 1, "b": {"x": 1}}, {"a": 2, "b": {"y": None}, "c": None}) == {
        "a": 2,
        "b": {"x": 1, "y": None},
        "c": None,
    }


def test_limits_name_the_size_and_the_depth() -> None:
    assert depth({"a": {"b": [1]}}) == 3
    check_state_limits({"reported": {"k": "x" * 8000}})
    with pytest.raises(PayloadTooLarge, match=r"is 8\d{3} bytes, over the AWS IoT limit of 8192"):
        check_state_limits({"reported": {"k": "x" * 8200}})
    nested: dict[str, Any] = {"v": 1}
    for _ in range(6):
        nested = {"n": nested}
    with pytest.raises(InvalidPayload, match="nests 7 levels deep, over the AWS IoT limit of 6"):
        check_state_limits({"desired": nested})


def test_local_copy_ignores_replies_older_than_itself() -> None:
    local = LocalShadow()
    assert local.apply_get({"state": {"desired": {"a": 1}}, "version": 3})
    assert not local.apply_accepted({"state": {"reported": {"a": 1}}, "version": 5})  # a gap
    assert local.apply_accepted({"state": {"reported": {"a": 1}}, "version": 4})
    assert not local.apply_get({"state": {}, "version": 2})
    old = {"current": {"state": {"desired": {"a": 0}}, "version": 4}}
    assert not local.apply_documents(old)
    state = local.snapshot()
    assert (state.desired, state.reported, state.delta, state.version) == (
        {"a": 1},
        {"a": 1},
        {},
        4,
    )
    assert local.apply_documents({"current": {"state": {"desired": {"a": 2}}, "version": 6}})
    assert local.snapshot().delta == {"a": 2}
    assert local.apply_deleted({"version": 6})
    assert (local.exists, local.version, local.desired) == (False, 6, {})


# --- the state machine against the emulator's pure core -----------------------------------------


class StoreConnection:
    """Just enough of IoTConnection: publishes go to a ShadowStore, replies come back at once.

    ``drop`` swallows the next n publishes (a lost request); ``before`` runs before each request
    reaches the store (e.g. an operator update in between); ``throttle`` answers 429 n times.
    """

    def __init__(self, store: ShadowStore | None = None) -> None:
        self.store = store or ShadowStore()
        self.thing_name = THING
        self.routes: list[tuple[str, Callable[[str, Any], None]]] = []
        self.hooks: list[Callable[[], Awaitable[None]]] = []
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.drop = 0
        self.throttle = 0
        self.before: Callable[[], None] | None = None
        self.now = 1_700_000_000
        self._changed = anyio.Event()
        self.outbox = Outbox()
        self.connected = False  # no last update at stop: these tests follow the requests

    def producing(self, name: str) -> Producer:
        return self.outbox.producing(name)

    async def until(self, done: Callable[[], bool]) -> None:
        """Wait until ``done()`` holds, checking after every request the device sends."""
        while not done():
            self._changed = anyio.Event()
            await self._changed.wait()

    def subscribe(self, topic_filter: str, handler: Callable[[str, Any], None]) -> None:
        self.routes.append((topic_filter, handler))

    def add_connect_hook(self, hook: Callable[[], Awaitable[None]]) -> Callable[[], None]:
        self.hooks.append(hook)
        return lambda: self.hooks.remove(hook)

    async def wait_connected(self) -> None:
        return

    async def publish(self, topic: str, payload: bytes, qos: int = 1, **_: Any) -> None:
        parsed = parse_shadow_topic(topic)
        assert parsed is not None
        assert parsed.suffix is None
        self.requests.append((parsed.operation, orjson.loads(payload)))
        self._changed.set()
        if self.drop:
            self.drop -= 1
            return
        if self.throttle:
            self.throttle -= 1
            token = orjson.loads(payload)["clientToken"]
            self.deliver(
                f"{topic}/rejected",
                {"code": 429, "message": "Too Many Requests", "clientToken": token},
            )
            return
        if self.before is not None:
            self.before()
        self.now += 1
        for reply in self.store.handle(
            parsed.operation, parsed.thing_name, parsed.shadow_name, payload, self.now
        ):
            prefix = ShadowTopics(parsed.thing_name, parsed.shadow_name).prefix
            self.deliver(f"{prefix}/{reply.suffix}", orjson.loads(reply.payload))

    def deliver(self, topic: str, document: dict[str, Any]) -> None:
        for topic_filter, handler in self.routes:
            if matches(topic_filter, topic):
                handler(topic, document)

    def operator_update(self, state: dict[str, Any], *, publish: bool = True) -> None:
        """An update by someone else; ``publish=False`` changes the store behind the device's
        back (no replies reach it)."""
        self.now += 1
        body = orjson.dumps({"state": state})
        replies = self.store.handle("update", THING, None, body, self.now)
        if publish:
            prefix = ShadowTopics(THING).prefix
            for reply in replies:
                self.deliver(f"{prefix}/{reply.suffix}", orjson.loads(reply.payload))

    def stored(self) -> dict[str, Any]:
        shadow = self.store.shadow(THING)
        assert shadow is not None
        return shadow.state

    def count(self, operation: str) -> int:
        return sum(1 for op, _ in self.requests if op == operation)


def make_shadow(connection: StoreConnection, **options: Any) -> DeviceShadowSync:
    options.setdefault("sync_interval", 60)
    options.setdefault("retry_backoff", FAST)
    return DeviceShadowSync(connection, **options)  # type: ignore[arg-type]


async def test_get_of_a_missing_shadow_is_empty_not_an_error() -> None:
    shadow = make_shadow(StoreConnection())
    with anyio.fail_after(5):
        state = await shadow.get()
    assert (state.exists, state.version, state.reported) == (False, 0, {})


async def test_update_reported_then_versions_follow_the_service() -> None:
    connection = StoreConnection()
    shadow = make_shadow(connection)
    with anyio.fail_after(5):
        state = await shadow.update_reported({"anc_enabled": True, "battery_level": 85})
        assert (state.version, state.reported) == (1, {"anc_enabled": True, "battery_level": 85})
        state = await shadow.update_reported({"battery_level": None, "anc_intensity": 0.5})
    assert state.version == 2
    assert connection.stored()["reported"] == {"anc_enabled": True, "anc_intensity": 0.5}
    assert connection.requests[-1][1]["version"] == 1  # updates carry the version they build on


async def test_concurrent_reports_are_coalesced_latest_value_wins() -> None:
    connection = StoreConnection()
    shadow = make_shadow(connection)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for level in range(100):
                tg.start_soon(shadow.update_reported, {"battery_level": level, "uptime": level})
    assert connection.count("update") <= 3
    assert connection.stored()["reported"] == {"battery_level": 99, "uptime": 99}
    assert shadow.get_status()["coalesced"] >= 90


async def test_a_version_conflict_rereads_and_retries() -> None:
    connection = StoreConnection()
    shadow = make_shadow(connection)
    with anyio.fail_after(5):
        await shadow.update_reported({"battery_level": 50})
        connection.operator_update({"desired": {"anc_intensity": 0.3}}, publish=False)
        state = await shadow.update_reported({"battery_level": 49})
    assert shadow.get_status()["conflicts"] == 1
    assert state.version == 3
    assert state.desired == {"anc_intensity": 0.3}
    assert connection.stored()["reported"] == {"battery_level": 49}


async def test_conflicts_that_never_end_are_raised() -> None:
    connection = StoreConnection()
    shadow = make_shadow(connection, conflict_retries=2)
    with anyio.fail_after(5):
        await shadow.update_reported({"battery_level": 50})
        connection.before = lambda: connection.operator_update({"desired": {"x": 1}}, publish=False)
        with pytest.raises(ShadowRejected) as caught:
            await shadow.update_reported({"battery_level": 49})
    assert caught.value.code == 409


async def test_a_lost_request_is_retried_and_a_dead_service_times_out() -> None:
    connection = StoreConnection()
    shadow = make_shadow(connection, request_timeout=0.05, attempts=3)
    with anyio.fail_after(5):
        connection.drop = 2
        await shadow.update_reported({"battery_level": 50})
        assert connection.count("update") == 3
        assert shadow.get_status()["requests"]["timeouts"] == 2

        connection.drop = 3
        with pytest.raises(ShadowTimeout, match="after 3 attempts"):
            await shadow.update_reported({"battery_level": 10})
        assert shadow.get_status()["pending_keys"] == ["battery_level"]  # kept, not lost
        await shadow.flush()
    assert connection.stored()["reported"] == {"battery_level": 10}


async def test_throttled_requests_back_off_and_bad_ones_are_raised() -> None:
    connection = StoreConnection()
    shadow = make_shadow(connection, model=None)
    with anyio.fail_after(5):
        connection.throttle = 2
        await shadow.update_reported({"battery_level": 50})
        assert shadow.get_status()["requests"]["rejected_429"] == 2
        with pytest.raises(ShadowRejected) as caught:
            await shadow.update_reported({"bad": [1, None]})  # arrays with null: 400
    assert caught.value.code == 400


async def test_oversize_state_is_refused_before_sending() -> None:
    connection = StoreConnection()
    shadow = make_shadow(connection, model=None)
    with pytest.raises(PayloadTooLarge, match="bytes, over the AWS IoT limit of 8192"):
        await shadow.update_reported({"blob": "x" * 9000})
    with pytest.raises(PayloadTooLarge):
        shadow.report({"blob": "x" * 9000})
    assert connection.requests == []
    assert shadow.get_status()["pending_keys"] == []


async def test_invalid_reported_values_are_refused_with_the_field() -> None:
    shadow = make_shadow(StoreConnection())
    with pytest.raises(InvalidPayload, match=r"anc_intensity: .*less than or equal to 1"):
        shadow.report({"anc_intensity": 5.0})


class Device:
    """A fake ANC device: applies valid intensities, clamps nothing, records the calls."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail = False
        self.handled = anyio.Event()

    async def apply(self, changes: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(changes)
        self.handled.set()
        if self.fail:
            raise RuntimeError("DSP not ready")
        return changes


async def sync_until(
    shadow: DeviceShadowSync, connection: StoreConnection, done: Callable[[], bool]
) -> None:
    """Run the sync task until ``done()`` holds (checked after each request it sends)."""
    async with anyio.create_task_group() as tg:
        await tg.start(shadow.start_sync)
        await connection.until(done)
        tg.cancel_scope.cancel()


async def test_desired_changes_are_applied_and_reported_exactly() -> None:
    connection = StoreConnection()
    shadow = make_shadow(connection)
    device = Device()
    shadow.on_delta(device.apply)
    connection.operator_update({"desired": {"anc_enabled": False, "anc_intensity": 0.4}})
    with anyio.fail_after(5):
        await sync_until(
            shadow, connection, lambda: connection.stored().get("reported") is not None
        )
    assert device.calls == [{"anc_enabled": False, "anc_intensity": 0.4}]
    assert connection.stored()["reported"] == {"anc_enabled": False, "anc_intensity": 0.4}
    assert shadow.get_state().delta == {}


async def test_invalid_desired_is_not_applied_and_reported_as_an_error() -> None:
    connection = StoreConnection()
    shadow = make_shadow(connection)
    device = Device()
    shadow.on_delta_callback = device.apply  # the old API's attribute
    connection.operator_update({"desired": {"anc_intensity": 5.0, "anc_enabled": True}})

    def reported() -> dict[str, Any]:
        return connection.stored().get("reported", {})

    with anyio.fail_after(5):
        await sync_until(shadow, connection, lambda: "last_error" in reported())
    assert device.calls == [{"anc_enabled": True}]  # the valid value still goes through
    assert "anc_intensity" not in reported()  # never echoed
    assert reported()["anc_enabled"] is True
    assert "anc_intensity" in reported()["last_error"]
    assert "less than or equal to 1" in reported()["last_error"]
    # The refused value is not offered again, so the device does not loop on it.
    assert shadow.get_status()["deltas"] == 1


async def test_a_raising_handler_applies_nothing_and_sync_carries_on() -> None:
    connection = StoreConnection()
    shadow = make_shadow(connection)
    device = Device()
    device.fail = True
    shadow.on_delta(device.apply)
    connection.operator_update({"desired": {"anc_intensity": 0.2}})
    with anyio.fail_after(5):
        await sync_until(
            shadow, connection, lambda: "last_error" in connection.stored().get("reported", {})
        )
        reported = connection.stored()["reported"]
        assert reported == {"last_error": reported["last_error"]}
        assert "RuntimeError: DSP not ready" in reported["last_error"]
        device.fail = False
        connection.operator_update({"desired": {"anc_intensity": 0.3}})
        await sync_until(
            shadow, connection, lambda: "anc_intensity" in connection.stored()["reported"]
        )
    # Applied cleanly: the old error is cleared.
    assert connection.stored()["reported"] == {"anc_intensity": 0.3}


async def test_a_failed_value_is_retried_at_the_next_resync_not_at_once() -> None:
    connection = StoreConnection()
    shadow = make_shadow(connection, sync_interval=0.2)
    device = Device()
    device.fail = True  # the device is busy
    shadow.on_delta(device.apply)
    connection.operator_update({"desired": {"anc_intensity": 0.2}})
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(shadow.start_sync)
            await connection.until(lambda: "last_error" in connection.stored().get("reported", {}))
            # The error report leaves the delta in place and publishes it again: that must not
            # call the handler again at once (a loop), only the next re-sync does.
            await anyio.wait_all_tasks_blocked()
            assert device.calls == [{"anc_intensity": 0.2}]
            device.fail = False
            await connection.until(lambda: "anc_intensity" in connection.stored()["reported"])
            tg.cancel_scope.cancel()
    assert device.calls == [{"anc_intensity": 0.2}, {"anc_intensity": 0.2}]
    assert connection.stored()["reported"] == {"anc_intensity": 0.2}  # the error is cleared
    assert shadow.get_status()["resyncs"] >= 2


async def test_a_desired_value_taken_back_before_the_sync_task_runs_is_not_applied() -> None:
    connection = StoreConnection()
    shadow = make_shadow(connection)
    device = Device()
    shadow.on_delta(device.apply)
    connection.operator_update(
        {"desired": {"anc_intensity": 0.5}, "reported": {"anc_intensity": 0.5}}
    )
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(shadow.start_sync)
            await connection.until(lambda: connection.count("get") == 1)
            await anyio.wait_all_tasks_blocked()
            # 0.9 leaves a delta (published); back to 0.5 leaves none, so no delta message says
            # that 0.9 is no longer wanted: only the local copy knows.
            connection.operator_update({"desired": {"anc_intensity": 0.9}})
            connection.operator_update({"desired": {"anc_intensity": 0.5}})
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
    assert device.calls == []
    assert connection.count("update") == 0
    assert connection.stored()["reported"] == {"anc_intensity": 0.5}


async def test_a_get_without_delta_drops_the_waiting_delta() -> None:
    connection = StoreConnection()
    shadow = make_shadow(connection)
    device = Device()
    shadow.on_delta(device.apply)
    connection.operator_update(
        {"desired": {"anc_intensity": 0.5}, "reported": {"anc_intensity": 0.5}}
    )
    with anyio.fail_after(5):
        await shadow.get()
        connection.operator_update({"desired": {"anc_intensity": 0.9}})  # the delta waits
        # Set back behind the device's back: only a get can tell.
        connection.operator_update({"desired": {"anc_intensity": 0.5}}, publish=False)
        assert (await shadow.get()).delta == {}
        async with anyio.create_task_group() as tg:
            await tg.start(shadow.start_sync)
            await connection.until(lambda: connection.count("get") == 3)  # the sync's re-sync
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
    assert device.calls == []
    assert connection.stored()["reported"] == {"anc_intensity": 0.5}


async def test_a_stale_delta_is_discarded() -> None:
    connection = StoreConnection()
    shadow = make_shadow(connection)
    device = Device()
    shadow.on_delta(device.apply)
    connection.operator_update({"desired": {"anc_intensity": 0.4}})
    with anyio.fail_after(5):
        await sync_until(shadow, connection, lambda: "reported" in connection.stored())
        stale = {"version": 1, "timestamp": 1, "state": {"anc_intensity": 0.9}}
        connection.deliver(ShadowTopics(THING).update_delta, stale)
        assert shadow.get_status()["stale_deltas"] == 1
        connection.operator_update({"desired": {"anc_intensity": 0.5}})
        await sync_until(
            shadow, connection, lambda: connection.stored()["reported"]["anc_intensity"] == 0.5
        )
    assert device.calls == [{"anc_intensity": 0.4}, {"anc_intensity": 0.5}]


async def test_deltas_stream_gets_the_valid_changes() -> None:
    connection = StoreConnection()
    shadow = make_shadow(connection, desired_model=AncDesiredState)
    with shadow.deltas() as deltas:
        connection.operator_update({"desired": {"anc_algorithm": "fxlms", "anc_intensity": 7}})
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                await tg.start(shadow.start_sync)
                changes = await deltas.receive()
                tg.cancel_scope.cancel()
    assert changes == {"anc_algorithm": "fxlms"}


async def test_reconnect_resyncs_and_offers_desired_again() -> None:
    connection = StoreConnection()
    shadow = make_shadow(connection)
    device = Device()
    shadow.on_delta(device.apply)
    connection.operator_update({"desired": {"anc_intensity": 0.4}})
    with anyio.fail_after(5):
        await sync_until(shadow, connection, lambda: len(device.calls) == 1)
        # Desired changes while offline arrive with no delta message: the reconnect get finds them.
        connection.operator_update({"desired": {"anc_intensity": 0.6}}, publish=False)
        async with anyio.create_task_group() as tg:
            await tg.start(shadow.start_sync)
            for hook in connection.hooks:
                await hook()
            await connection.until(lambda: connection.stored()["reported"]["anc_intensity"] == 0.6)
            tg.cancel_scope.cancel()
    assert device.calls[-1] == {"anc_intensity": 0.6}


# --- the report queue on its own ----------------------------------------------------------------


async def test_a_cancelled_sender_puts_its_batch_back_and_a_waiter_takes_over() -> None:
    sent: list[dict[str, Any]] = []
    release = anyio.Event()

    async def send(batch: dict[str, Any]) -> None:
        if not sent:  # the first batch hangs until its sender is cancelled
            sent.append(batch)
            await release.wait()
        sent.append(batch)

    queue = ReportQueue(send, lambda state: None)
    leader = anyio.CancelScope()

    async def lead(generation: int) -> None:
        with leader:
            await queue.wait_for(generation)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lead, queue.add({"a": 1}))
            await anyio.wait_all_tasks_blocked()  # the first batch is in flight
            tg.start_soon(queue.wait_for, queue.add({"a": 0, "b": 2}))
            await anyio.wait_all_tasks_blocked()
            leader.cancel()
    # The first batch went back under the newer values and travelled with the second.
    assert sent == [{"a": 1}, {"a": 0, "b": 2}]
    assert queue.pending == {}


async def test_a_refused_batch_fails_its_waiters_and_is_dropped() -> None:
    async def send(batch: dict[str, Any]) -> None:
        raise ShadowRejected(400, "Invalid JSON")

    queue = ReportQueue(send, lambda state: None)
    generation = queue.add({"a": 1})
    with pytest.raises(ShadowRejected):
        await queue.wait_for(generation)
    with pytest.raises(ShadowRejected):  # a second waiter of the same batch hears it too
        await queue.wait_for(generation)
    assert queue.pending == {}
