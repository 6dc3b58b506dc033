"""Unit tests of the outbox lanes: priority, FIFO, requeue, overflow policies, handles."""

from __future__ import annotations

import json

import anyio
import pytest

from ancsync.errors import BufferFull, ConfigError, PublishTimeout
from ancsync.mqtt.outbox import (
    DEFAULT_LIMITS,
    Lane,
    LaneLimits,
    Outbox,
    OutgoingMessage,
    PublishHandle,
)


def message(
    msg_id: str,
    lane: Lane = Lane.TELEMETRY,
    payload: bytes = b"{}",
    *,
    key: str | None = None,
    topic: str = "t",
) -> OutgoingMessage:
    return OutgoingMessage(
        topic=topic,
        payload=payload,
        qos=1,
        retain=False,
        lane=lane,
        msg_id=msg_id,
        coalesce_key=key,
        handle=PublishHandle(msg_id),
    )


def limits(lane: Lane, max_messages: int, max_bytes: int = 1 << 20) -> dict[Lane, LaneLimits]:
    return {**DEFAULT_LIMITS, lane: LaneLimits(max_messages, max_bytes)}


async def drain(outbox: Outbox) -> list[str]:
    """Everything queued right now, in the order the session would publish it."""
    ids = []
    while any(d["messages"] for d in outbox.depth().values()):
        with anyio.fail_after(1):
            ids.append((await outbox.get()).msg_id)
    return ids


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_emergency_overtakes_500_queued_telemetry_then_fifo() -> None:
    outbox = Outbox()
    for i in range(500):
        outbox.put(message(f"t{i}"))
    outbox.put(message("s0", Lane.SHADOW))
    outbox.put(message("e0", Lane.EMERGENCY))

    assert await drain(outbox) == ["e0", "s0", *[f"t{i}" for i in range(500)]]


async def test_get_waits_for_a_put() -> None:
    outbox = Outbox()
    got: list[str] = []

    async def take() -> None:
        got.append((await outbox.get()).msg_id)

    with anyio.fail_after(1):
        async with anyio.create_task_group() as tg:
            tg.start_soon(take)
            await anyio.wait_all_tasks_blocked()
            assert got == []
            outbox.put(message("a"))
    assert got == ["a"]


async def test_requeue_goes_to_the_front_with_the_same_msg_id() -> None:
    outbox = Outbox()
    for name in ("a", "b", "c"):
        outbox.put(message(name))
    first = await outbox.get()
    outbox.put(message("d"))

    outbox.requeue(first)

    again = await outbox.get()
    assert again is first
    assert (again.msg_id, again.attempts) == ("a", 1)
    assert await drain(outbox) == ["b", "c", "d"]
    assert outbox.stats()["telemetry"]["requeued"] == 1


async def test_messages_requeued_together_keep_their_order() -> None:
    # A session with several publishes in flight may put them back in any order.
    outbox = Outbox()
    for name in ("a", "b", "c", "d"):
        outbox.put(message(name))
    in_flight = [await outbox.get() for _ in range(3)]

    for m in reversed(in_flight):
        outbox.requeue(m)

    assert await drain(outbox) == ["a", "b", "c", "d"]


async def test_telemetry_full_by_count_drops_oldest_and_fails_their_handles() -> None:
    outbox = Outbox(limits(Lane.TELEMETRY, max_messages=3))
    messages = [message(f"t{i}") for i in range(5)]
    for m in messages:
        outbox.put(m)

    assert outbox.stats()["telemetry"]["dropped"] == 2
    assert outbox.stats()["telemetry"]["enqueued"] == 5
    for dropped in messages[:2]:
        assert dropped.handle.done
        with pytest.raises(BufferFull, match="dropped"):
            await dropped.handle.delivered()
    assert not messages[2].handle.done
    assert await drain(outbox) == ["t2", "t3", "t4"]


async def test_telemetry_full_by_bytes_drops_as_many_oldest_as_needed() -> None:
    # size = payload + topic ("t", 1 byte): 10 + 10 + 10 = 33 bytes, limit 40.
    outbox = Outbox(limits(Lane.TELEMETRY, max_messages=100, max_bytes=40))
    for name in ("a", "b", "c"):
        outbox.put(message(name, payload=b"x" * 10))
    assert outbox.depth()["telemetry"] == {"messages": 3, "bytes": 33}

    outbox.put(message("big", payload=b"y" * 25))  # needs 26: two of the oldest must go

    assert outbox.depth()["telemetry"] == {"messages": 2, "bytes": 37}
    assert outbox.stats()["telemetry"]["dropped"] == 2
    assert await drain(outbox) == ["c", "big"]


async def test_a_message_larger_than_its_lane_is_refused() -> None:
    outbox = Outbox(limits(Lane.TELEMETRY, max_messages=100, max_bytes=40))
    outbox.put(message("a", payload=b"x" * 10))
    too_big = message("huge", payload=b"x" * 100)

    with pytest.raises(BufferFull, match="more than the whole telemetry lane"):
        outbox.put(too_big)

    assert outbox.stats()["telemetry"]["rejected"] == 1
    assert outbox.stats()["telemetry"]["dropped"] == 0
    with pytest.raises(BufferFull):
        await too_big.handle.delivered()
    assert await drain(outbox) == ["a"]


async def test_shadow_coalesces_by_key_in_place() -> None:
    outbox = Outbox()
    first = message("s1", Lane.SHADOW, b'{"v":1}', key="reported")
    outbox.put(first)
    outbox.put(message("other", Lane.SHADOW, key="get"))
    latest = message("s2", Lane.SHADOW, b'{"v":22}', key="reported")
    outbox.put(latest)

    assert outbox.stats()["shadow"]["coalesced"] == 1
    assert outbox.depth()["shadow"] == {"messages": 2, "bytes": 1 + 8 + 1 + 2}
    taken = await outbox.get()
    assert taken is latest  # in the place of the one it replaced
    assert not first.handle.done

    taken.handle.resolve()

    with anyio.fail_after(1):
        await first.handle.delivered()
    assert await drain(outbox) == ["other"]


async def test_shadow_coalesce_chain_fails_every_replaced_handle() -> None:
    outbox = Outbox()
    handles = []
    for i in range(3):
        m = message(f"s{i}", Lane.SHADOW, key="k")
        handles.append(m.handle)
        outbox.put(m)
    taken = await outbox.get()

    taken.handle.fail(ValueError("rejected for good"))

    for handle in handles:
        with pytest.raises(ValueError, match="rejected for good"):
            await handle.delivered()


async def test_shadow_without_key_drops_oldest_when_full() -> None:
    outbox = Outbox(limits(Lane.SHADOW, max_messages=2))
    for name in ("a", "b", "c"):
        outbox.put(message(name, Lane.SHADOW))

    assert outbox.stats()["shadow"]["dropped"] == 1
    assert await drain(outbox) == ["b", "c"]


async def test_coalescing_never_drops_the_message_it_just_stored() -> None:
    # The replacement is bigger; the lane must shed bytes, but not the newest state.
    outbox = Outbox(limits(Lane.SHADOW, max_messages=10, max_bytes=30))
    outbox.put(message("old", Lane.SHADOW, b"x" * 5, key="k"))
    outbox.put(message("b", Lane.SHADOW, b"x" * 5))
    outbox.put(message("new", Lane.SHADOW, b"x" * 25, key="k"))

    assert outbox.stats()["shadow"]["dropped"] == 1
    assert await drain(outbox) == ["new"]


async def test_requeued_shadow_message_older_than_a_waiting_one_yields_to_it() -> None:
    outbox = Outbox()
    old = message("old", Lane.SHADOW, b'{"v":1}', key="k")
    outbox.put(old)
    in_flight = await outbox.get()
    outbox.put(message("new", Lane.SHADOW, b'{"v":2}', key="k"))

    outbox.requeue(in_flight)

    assert await drain(outbox) == ["new"]
    assert outbox.stats()["shadow"]["coalesced"] == 1


async def test_requeued_shadow_message_newer_than_a_requeued_one_wins() -> None:
    outbox = Outbox()
    outbox.put(message("old", Lane.SHADOW, b'{"v":1}', key="k"))
    old = await outbox.get()
    outbox.put(message("new", Lane.SHADOW, b'{"v":2}', key="k"))
    new = await outbox.get()

    outbox.requeue(old)
    outbox.requeue(new)

    assert await drain(outbox) == ["new"]
    new.handle.resolve()
    with anyio.fail_after(1):
        await old.handle.delivered()


async def test_emergency_lane_raises_at_its_hard_limit_and_keeps_everything() -> None:
    outbox = Outbox(limits(Lane.EMERGENCY, max_messages=3))
    for i in range(3):
        outbox.put(message(f"e{i}", Lane.EMERGENCY))
    refused = message("e3", Lane.EMERGENCY)

    with pytest.raises(BufferFull, match="emergency lane is full"):
        outbox.put(refused)

    assert outbox.stats()["emergency"]["dropped"] == 0
    assert outbox.stats()["emergency"]["rejected"] == 1
    with pytest.raises(BufferFull):
        await refused.handle.delivered()
    assert await drain(outbox) == ["e0", "e1", "e2"]


async def test_emergency_lane_byte_limit_raises() -> None:
    outbox = Outbox(limits(Lane.EMERGENCY, max_messages=100, max_bytes=25))
    outbox.put(message("e0", Lane.EMERGENCY, b"x" * 10))
    outbox.put(message("e1", Lane.EMERGENCY, b"x" * 10))

    with pytest.raises(BufferFull, match="emergency lane is full"):
        outbox.put(message("e2", Lane.EMERGENCY, b"x" * 10))

    assert outbox.depth()["emergency"] == {"messages": 2, "bytes": 22}


async def test_requeue_into_a_full_emergency_lane_never_raises() -> None:
    outbox = Outbox(limits(Lane.EMERGENCY, max_messages=2))
    outbox.put(message("e0", Lane.EMERGENCY))
    in_flight = await outbox.get()
    outbox.put(message("e1", Lane.EMERGENCY))
    outbox.put(message("e2", Lane.EMERGENCY))

    outbox.requeue(in_flight)

    assert await drain(outbox) == ["e0", "e1", "e2"]


async def test_handle_timeout_then_delivery() -> None:
    handle = PublishHandle("m1")

    with pytest.raises(PublishTimeout, match="m1"):
        await handle.delivered(timeout=0)
    handle.resolve()
    handle.fail(RuntimeError("too late"))  # the first outcome wins

    assert handle.done
    await handle.delivered(timeout=0)


async def test_handle_wakes_a_waiting_caller() -> None:
    handle = PublishHandle("m1")
    with anyio.fail_after(1):
        async with anyio.create_task_group() as tg:
            tg.start_soon(handle.delivered)
            await anyio.wait_all_tasks_blocked()
            handle.resolve()


async def test_handle_without_timeout_follows_the_callers_cancel_scope_and_failure() -> None:
    """delivered() without a timeout takes no deadline of its own (no cancel scope, measured
    ~14 µs a message less) but still ends with the caller's scope, or with the failure."""
    handle = PublishHandle("m1")
    with anyio.move_on_after(0.01) as scope:
        await handle.delivered()
    assert scope.cancelled_caught
    assert not handle.done

    with anyio.fail_after(1):
        async with anyio.create_task_group() as tg:

            async def wait_for_failure() -> None:
                with pytest.raises(BufferFull, match="dropped"):
                    await handle.delivered()

            tg.start_soon(wait_for_failure)
            await anyio.wait_all_tasks_blocked()
            handle.fail(BufferFull("m1 was dropped"))


async def test_oldest_age_follows_the_clock_and_survives_requeue() -> None:
    clock = FakeClock()
    outbox = Outbox(clock=clock)
    assert outbox.oldest_age(Lane.EMERGENCY) is None
    outbox.put(message("e0", Lane.EMERGENCY))
    clock.now += 2.5
    outbox.put(message("e1", Lane.EMERGENCY))
    clock.now += 1.0

    assert outbox.oldest_age(Lane.EMERGENCY) == pytest.approx(3.5)
    outbox.requeue(await outbox.get())
    assert outbox.oldest_age(Lane.EMERGENCY) == pytest.approx(3.5)
    await outbox.get()
    assert outbox.oldest_age(Lane.EMERGENCY) == pytest.approx(1.0)


async def test_stats_are_json_serialisable() -> None:
    outbox = Outbox()
    outbox.put(message("t0"))
    stats = json.loads(json.dumps(outbox.stats()))

    assert set(stats) == {"emergency", "shadow", "telemetry"}
    assert stats["telemetry"]["messages"] == 1
    assert stats["telemetry"]["bytes"] == 3
    assert stats["telemetry"]["enqueued"] == 1
    assert stats["telemetry"]["oldest_age_s"] >= 0


@pytest.mark.parametrize(("max_messages", "max_bytes"), [(0, 100), (10, 0)])
def test_lane_limits_below_one_are_refused(max_messages: int, max_bytes: int) -> None:
    with pytest.raises(ConfigError, match="at least 1 message and 1 byte"):
        LaneLimits(max_messages, max_bytes)


async def test_lane_limits_of_one_message_are_allowed_and_hold_one() -> None:
    outbox = Outbox(limits(Lane.TELEMETRY, max_messages=1))
    outbox.put(message("a"))
    outbox.put(message("b"))  # the lane holds one: the oldest goes
    assert outbox.stats()["telemetry"]["dropped"] == 1
    assert await drain(outbox) == ["b"]


async def test_a_message_exactly_the_size_of_its_lane_fits_and_each_refusal_counts() -> None:
    outbox = Outbox(limits(Lane.TELEMETRY, max_messages=100, max_bytes=40))
    outbox.put(message("exact", payload=b"x" * 39))  # 40 bytes with its topic: it fits
    for n in range(2):
        with pytest.raises(BufferFull):
            outbox.put(message(f"huge{n}", payload=b"x" * 40))
    assert outbox.stats()["telemetry"]["rejected"] == 2
    assert await drain(outbox) == ["exact"]


async def test_the_emergency_lane_counts_every_refusal_at_its_limit() -> None:
    outbox = Outbox(limits(Lane.EMERGENCY, max_messages=1, max_bytes=100))
    outbox.put(message("e1", Lane.EMERGENCY))
    for n in range(3):
        with pytest.raises(BufferFull):
            outbox.put(message(f"more{n}", Lane.EMERGENCY))
    assert outbox.stats()["emergency"]["rejected"] == 3
    assert outbox.is_empty() is False
    assert await drain(outbox) == ["e1"]
    assert outbox.is_empty() is True


async def test_a_done_callback_added_after_the_outcome_gets_it_at_once() -> None:
    handle = PublishHandle("m1")
    handle.fail(BufferFull("dropped"))
    seen: list[BaseException | None] = []
    handle.add_done_callback(seen.append)
    assert len(seen) == 1
    assert isinstance(seen[0], BufferFull)
    ok = PublishHandle("m2")
    outcomes: list[BaseException | None] = []
    ok.add_done_callback(outcomes.append)
    ok.resolve()
    assert outcomes == [None]


async def test_each_requeue_counts_an_attempt() -> None:
    outbox = Outbox()
    queued = message("a")
    outbox.put(queued)
    for expected in (1, 2, 3):
        taken = await outbox.get()
        outbox.requeue(taken)
        assert taken.attempts == expected
    assert await drain(outbox) == ["a"]
