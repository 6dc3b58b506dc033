"""Supervised: restarts a failing component, records why, ends on cancel, ignores the caller's
cancellation (so a shutdown can still use the component)."""

from __future__ import annotations

import anyio

from ancsync.mqtt.backoff import BackoffPolicy
from ancsync.supervisor import Supervised

QUICK = BackoffPolicy(base=0.001, cap=0.001)


async def test_a_failing_task_is_restarted_and_its_error_recorded() -> None:
    calls = 0
    third_run = anyio.Event()

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RuntimeError(f"failure {calls}")
        third_run.set()
        await anyio.sleep_forever()

    supervised = Supervised("flaky", flaky, backoff=QUICK)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(supervised.run)
            await third_run.wait()
            status = supervised.status()
            supervised.cancel()
    assert status["running"] is True
    assert status["restarts"] == 2
    assert status["last_error"]["type"] == "RuntimeError"
    assert status["last_error"]["message"] == "failure 2"
    assert supervised.status()["running"] is False


async def test_a_task_that_returns_is_not_restarted() -> None:
    calls = 0

    async def once() -> None:
        nonlocal calls
        calls += 1

    supervised = Supervised("once", once, backoff=QUICK)
    with anyio.fail_after(5):
        await supervised.run()
    assert (calls, supervised.restarts) == (1, 0)


async def test_cancel_before_the_task_runs_means_it_never_runs() -> None:
    ran = False

    async def work() -> None:
        nonlocal ran
        ran = True

    supervised = Supervised("late", work)
    supervised.cancel()
    with anyio.fail_after(5):
        await supervised.run()
    assert ran is False


async def test_the_callers_cancellation_does_not_reach_the_task() -> None:
    running, proceed = anyio.Event(), anyio.Event()
    flushed = False

    async def component() -> None:
        nonlocal flushed
        running.set()
        await proceed.wait()
        flushed = True  # what a shutdown needs the component for

    supervised = Supervised("component", component)
    with anyio.fail_after(5), anyio.CancelScope() as caller:
        async with anyio.create_task_group() as tg:
            tg.start_soon(supervised.run)
            await running.wait()
            caller.cancel()  # Ctrl-C
            proceed.set()
    assert caller.cancelled_caught
    assert flushed is True
