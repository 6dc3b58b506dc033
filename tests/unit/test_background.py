"""start_in_background: the task runs during the block, is cancelled at close, fails visibly."""

from __future__ import annotations

import anyio
import pytest
from anyio.abc import TaskStatus

from ancsync.background import start_in_background


async def test_the_task_runs_until_the_stack_is_closed() -> None:
    ended = anyio.Event()

    async def run(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            task_status.started()
            await anyio.sleep_forever()
        finally:
            ended.set()

    with anyio.fail_after(5):
        stack = await start_in_background(run)
        assert not ended.is_set()
        await stack.aclose()
        assert ended.is_set()


async def test_a_task_that_fails_before_starting_raises_and_leaves_nothing_open() -> None:
    async def run(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        raise OSError("the store cannot be opened")

    with anyio.fail_after(5), pytest.raises(OSError, match="cannot be opened"):
        await start_in_background(run)
    # the caller's cancel scopes are intact: a later wait still times out normally
    with anyio.move_on_after(0.01) as scope:
        await anyio.sleep_forever()
    assert scope.cancelled_caught
