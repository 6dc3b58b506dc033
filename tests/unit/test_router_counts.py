"""The topic router's counters, its routing past routes that do not take a message, what it logs
for a user to see, and what removing a route or stopping the router leaves behind."""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from ancsync.mqtt.router import TopicRouter


class Level(BaseModel):
    level: int


def ignore(topic: str, payload: Any) -> None:
    """A handler for routes whose messages a test only counts."""


def test_a_route_queue_holds_100_messages_by_default() -> None:
    router = TopicRouter()
    route = router.add_route("dev/#", ignore)
    for n in range(101):
        router.dispatch("dev/1", json.dumps(n).encode())

    stats = route.stats()
    assert (stats["queue_size"], stats["depth"], stats["dropped"]) == (100, 100, 1)


def test_every_unmatched_message_is_counted() -> None:
    router = TopicRouter()
    router.add_route("dev/#", ignore)
    for _ in range(3):
        assert router.dispatch("other/1", b"{}") == 0

    assert router.stats()["unmatched"] == 3
    assert router.stats()["received"] == 3


def test_a_route_that_does_not_match_does_not_hide_the_routes_after_it() -> None:
    router = TopicRouter()
    router.add_route("other/#", ignore)
    later = router.add_route("dev/#", ignore)

    assert router.dispatch("dev/1", b"{}") == 1
    assert later.stats()["queued"] == 1


def test_a_payload_one_route_rejects_still_reaches_the_routes_after_it() -> None:
    router = TopicRouter()
    typed = router.add_route("dev/#", ignore, Level)
    untyped = router.add_route("dev/#", ignore)

    assert router.dispatch("dev/1", b'{"level": "loud"}') == 1
    assert (typed.stats()["invalid"], untyped.stats()["queued"]) == (1, 1)


def test_an_invalid_payload_is_logged_with_the_topic_the_route_and_the_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = TopicRouter()
    router.add_route("dev/+/level", ignore, Level)

    with caplog.at_level(logging.WARNING, logger="ancsync.mqtt.router"):
        router.dispatch("dev/7/level", b'{"level": "loud"}')

    [warning] = caplog.records
    message = warning.getMessage()
    assert "dev/7/level" in message
    assert "dev/+/level" in message
    assert "level" in message.split("dev/+/level", 1)[1]  # the reason names the bad field


async def test_a_failing_handler_is_logged_with_its_route_and_the_topic(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = TopicRouter()
    after = anyio.Event()

    async def broken(topic: str, payload: Any) -> None:
        raise RuntimeError("boom")

    router.add_route("dev/+/cmd", broken)
    router.add_route("dev/+/cmd", lambda topic, payload: after.set())
    with caplog.at_level(logging.ERROR, logger="ancsync.mqtt.router"), anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(router.run)
            router.dispatch("dev/3/cmd", b"{}")
            await after.wait()
            while router.stats()["handler_errors"] < 1:  # the other worker may not have run yet
                await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()

    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "dev/+/cmd" in error.getMessage()
    assert "dev/3/cmd" in error.getMessage()
    assert error.exc_info is not None
    assert isinstance(error.exc_info[1], RuntimeError)


async def test_running_twice_at_once_is_refused_with_a_clear_error() -> None:
    router = TopicRouter()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(router.run)
            await anyio.lowlevel.checkpoint()
            refused = r"^the router component is already running$"
            with pytest.raises(RuntimeError, match=refused):
                await router.run()
            tg.cancel_scope.cancel()


async def test_a_router_runs_again_after_it_was_stopped() -> None:
    router = TopicRouter()
    first, late = anyio.Event(), anyio.Event()
    router.add_route("dev/#", lambda topic, payload: first.set())
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(router.run)
            await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(router.run)
            await anyio.lowlevel.checkpoint()
            router.add_route("dev/#", lambda topic, payload: late.set())  # a worker at once
            router.dispatch("dev/1", b"1")
            await first.wait()
            await late.wait()
            tg.cancel_scope.cancel()


async def test_removing_routes_while_running_ends_their_workers() -> None:
    router = TopicRouter()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(router.run)
            await anyio.lowlevel.checkpoint()
            before = len(anyio.get_running_tasks())
            routes = [router.add_route(f"dev/{n}", ignore) for n in range(20)]
            for _ in range(3):
                await anyio.lowlevel.checkpoint()  # every worker is waiting for a message
            assert len(anyio.get_running_tasks()) == before + 20

            for route in routes:
                router.remove_route(route)
            while len(anyio.get_running_tasks()) > before:
                await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()


def test_a_route_shows_its_filter_and_model() -> None:
    router = TopicRouter()

    assert repr(router.add_route("dev/#", ignore)) == "Route('dev/#', model=None)"
    assert repr(router.add_route("dev/+", ignore, Level)) == "Route('dev/+', model=Level)"
