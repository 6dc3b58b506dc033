"""Unit tests of the topic router: typed dispatch, bounded route queues, invalid payloads."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from ancsync.errors import ConfigError, InvalidPayload, InvalidTopic
from ancsync.mqtt.router import TopicRouter


class Command(BaseModel):
    command: str
    level: int


class Collector:
    """A handler that records what it gets and signals once it has ``expected`` messages."""

    def __init__(self, expected: int = 1) -> None:
        self.items: list[tuple[str, Any]] = []
        self.expected = expected
        self.done = anyio.Event()

    async def __call__(self, topic: str, payload: Any) -> None:
        self.items.append((topic, payload))
        if len(self.items) >= self.expected:
            self.done.set()

    @property
    def payloads(self) -> list[Any]:
        return [payload for _, payload in self.items]


@asynccontextmanager
async def running(router: TopicRouter) -> AsyncIterator[None]:
    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(router.run)
            yield
            tg.cancel_scope.cancel()


def cmd(level: int, command: str = "set") -> bytes:
    return json.dumps({"command": command, "level": level}).encode()


async def test_typed_and_untyped_routes_get_the_same_message() -> None:
    router = TopicRouter()
    typed, untyped = Collector(), Collector()
    router.add_route("dev/+/cmd", typed, Command)
    router.add_route("dev/#", untyped)

    async with running(router):
        assert router.dispatch("dev/a/cmd", cmd(3)) == 2
        await typed.done.wait()
        await untyped.done.wait()

    assert typed.items == [("dev/a/cmd", Command(command="set", level=3))]
    assert untyped.items == [("dev/a/cmd", {"command": "set", "level": 3})]


async def test_plain_function_handlers_work_and_order_is_kept() -> None:
    router = TopicRouter()
    seen: list[int] = []
    finished = anyio.Event()

    def handler(topic: str, payload: Command) -> None:
        seen.append(payload.level)
        if len(seen) == 5:
            finished.set()

    router.add_route("c", handler, Command)
    async with running(router):
        for level in range(5):
            router.dispatch("c", cmd(level))
        await finished.wait()

    assert seen == [0, 1, 2, 3, 4]


async def test_slow_handler_drops_oldest_on_its_route_only() -> None:
    router = TopicRouter()
    gate = anyio.Event()
    slow_seen: list[int] = []
    slow_done = anyio.Event()

    async def slow(topic: str, payload: Command) -> None:
        await gate.wait()
        slow_seen.append(payload.level)
        if len(slow_seen) == 3:
            slow_done.set()

    fast = Collector(expected=6)
    slow_route = router.add_route("x", slow, Command, queue_size=2)
    fast_route = router.add_route("x", fast, Command)

    async with running(router):
        router.dispatch("x", cmd(0))
        await anyio.wait_all_tasks_blocked()  # the slow worker now holds message 0
        for level in range(1, 6):
            assert router.dispatch("x", cmd(level)) == 2  # never blocks, always queued
        await fast.done.wait()
        assert slow_route.stats()["depth"] == 2
        gate.set()
        await slow_done.wait()

    assert slow_seen == [0, 4, 5]  # 1, 2 and 3 were the oldest waiting when it was full
    assert [p.level for p in fast.payloads] == [0, 1, 2, 3, 4, 5]
    assert slow_route.stats()["dropped"] == 3
    assert fast_route.stats()["dropped"] == 0
    assert router.stats()["dropped"] == 3


async def test_invalid_payloads_are_counted_logged_hooked_and_later_ones_delivered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rejected: list[tuple[str, bytes, Exception]] = []
    router = TopicRouter(on_invalid=lambda t, raw, exc: rejected.append((t, raw, exc)))
    good = Collector()
    route = router.add_route("dev/cmd", good, Command)

    with caplog.at_level(logging.WARNING, logger="ancsync.mqtt.router"):
        async with running(router):
            assert router.dispatch("dev/cmd", b"{not json") == 0
            assert router.dispatch("dev/cmd", b'{"command": "set", "level": "high"}') == 0
            assert router.dispatch("dev/cmd", cmd(7)) == 1
            await good.done.wait()

    assert good.payloads == [Command(command="set", level=7)]
    assert route.stats()["invalid"] == 2
    assert router.stats()["invalid"] == 2
    assert [(t, raw) for t, raw, _ in rejected] == [
        ("dev/cmd", b"{not json"),
        ("dev/cmd", b'{"command": "set", "level": "high"}'),
    ]
    assert all(isinstance(exc, InvalidPayload) for _, _, exc in rejected)
    assert "not valid JSON" in str(rejected[0][2])
    assert "level" in str(rejected[1][2])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert all("dev/cmd" in w for w in warnings)
    assert "not valid JSON" in warnings[0]
    assert "level" in warnings[1]


async def test_a_raising_hook_does_not_break_dispatch() -> None:
    def broken_hook(topic: str, raw: bytes, exc: Exception) -> None:
        raise RuntimeError("hook bug")

    router = TopicRouter(on_invalid=broken_hook)
    good = Collector()
    router.add_route("t", good)

    async with running(router):
        assert router.dispatch("t", b"") == 0
        assert router.dispatch("t", b"[1]") == 1
        await good.done.wait()

    assert good.payloads == [[1]]


async def test_a_raising_handler_is_counted_and_its_route_keeps_working(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = TopicRouter()
    seen: list[int] = []
    finished = anyio.Event()

    async def flaky(topic: str, payload: Command) -> None:
        if payload.level == 0:
            raise ValueError("boom")
        seen.append(payload.level)
        finished.set()

    route = router.add_route("t", flaky, Command)
    with caplog.at_level(logging.ERROR, logger="ancsync.mqtt.router"):
        async with running(router):
            router.dispatch("t", cmd(0))
            router.dispatch("t", cmd(1))
            await finished.wait()

    assert seen == [1]
    assert route.stats()["handler_errors"] == 1
    assert route.stats()["handled"] == 1
    assert any("boom" in (r.exc_text or "") for r in caplog.records)


async def test_route_added_while_running_gets_a_worker() -> None:
    router = TopicRouter()
    late = Collector()
    async with running(router):
        await anyio.wait_all_tasks_blocked()
        router.add_route("late/topic", late)
        router.dispatch("late/topic", b'"hi"')
        await late.done.wait()

    assert late.payloads == ["hi"]


async def test_removed_route_stops_getting_messages() -> None:
    router = TopicRouter()
    kept, removed = Collector(), Collector()
    router.add_route("a", kept)
    route = router.add_route("b", removed)
    async with running(router):
        router.remove_route(route)
        assert router.dispatch("b", b"1") == 0
        router.dispatch("a", b"1")
        await kept.done.wait()

    assert removed.items == []
    assert router.filters() == ["a"]
    assert router.stats()["unmatched"] == 1


def test_filters_are_distinct_in_order() -> None:
    router = TopicRouter()
    for topic_filter in ("b/#", "a/+", "b/#"):
        router.add_route(topic_filter, Collector())

    assert router.filters() == ["b/#", "a/+"]


def test_bad_filter_and_bad_queue_size_are_refused() -> None:
    router = TopicRouter()
    with pytest.raises(InvalidTopic):
        router.add_route("a/#/b", Collector())
    with pytest.raises(ConfigError, match="queue_size"):
        router.add_route("a", Collector(), queue_size=0)
    with pytest.raises(ConfigError, match="queue_size"):
        TopicRouter(queue_size=-1)
    assert router.filters() == []


async def test_run_twice_is_refused() -> None:
    router = TopicRouter()
    async with running(router):
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(RuntimeError, match="already running"):
            await router.run()


def test_stats_are_json_serialisable() -> None:
    router = TopicRouter(queue_size=1)
    router.add_route("t", Collector(), Command)
    router.dispatch("t", cmd(1))
    router.dispatch("t", cmd(2))
    router.dispatch("t", b"nope")
    router.dispatch("other", b"1")

    stats = json.loads(json.dumps(router.stats()))

    assert stats == {
        "received": 4,
        "unmatched": 1,
        "queued": 2,
        "handled": 0,
        "dropped": 1,
        "invalid": 1,
        "handler_errors": 0,
        "routes": [
            {
                "filter": "t",
                "model": "Command",
                "queue_size": 1,
                "depth": 1,
                "queued": 2,
                "handled": 0,
                "dropped": 1,
                "invalid": 1,
                "handler_errors": 0,
            }
        ],
    }
