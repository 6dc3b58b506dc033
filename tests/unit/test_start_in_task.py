"""ancsync.testing.start_in_task: a Component in a task of its own, stopped from any task."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from anyio.abc import TaskStatus

from ancsync.lifecycle import Component, ComponentState
from ancsync.testing import StartedPart, start_in_task

TIMEOUT = 5


class Part(Component):
    """Ready at once (or fails before, or after, being ready); records its shutdown."""

    name = "part"

    def __init__(
        self,
        *,
        fail_at_start: Exception | None = None,
        fail_later: anyio.Event | None = None,
        ready: anyio.Event | None = None,
    ) -> None:
        super().__init__(stop_timeout=1)
        self.fail_at_start = fail_at_start
        self.fail_later = fail_later
        self.ready = ready
        self.shutdowns = 0
        self.serving = anyio.Event()

    async def _serve(self, task_status: TaskStatus[None]) -> None:
        self.serving.set()
        if self.fail_at_start is not None:
            raise self.fail_at_start
        if self.ready is not None:
            await self.ready.wait()
        task_status.started()
        if self.fail_later is not None:
            await self.fail_later.wait()
            raise RuntimeError("failed while running")
        await anyio.sleep_forever()

    async def _shutdown(self) -> None:
        self.shutdowns += 1


@pytest.fixture
async def started_in_setup() -> AsyncIterator[StartedPart[Part]]:
    """The case the helper is for: pytest-asyncio sets up and tears down in different tasks."""
    started = await start_in_task(Part())
    yield started
    await started.stop()
    assert started.part.state is ComponentState.STOPPED
    assert started.part.shutdowns == 1


async def test_a_fixture_starts_a_part_in_one_task_and_stops_it_in_another(
    started_in_setup: StartedPart[Part],
) -> None:
    assert started_in_setup.part.running


async def test_stop_from_another_task_runs_the_shutdown_once() -> None:
    with anyio.fail_after(TIMEOUT):
        started = await start_in_task(Part())
        assert started.part.running
        async with anyio.create_task_group() as tg:
            tg.start_soon(started.stop)
        assert started.part.state is ComponentState.STOPPED
        assert started.part.shutdowns == 1
        await started.stop()  # a second stop does nothing
        assert started.part.shutdowns == 1


async def test_an_error_before_ready_is_raised_by_start_in_task_itself() -> None:
    part = Part(fail_at_start=ValueError("bad port"))
    with anyio.fail_after(TIMEOUT), pytest.raises(ValueError, match="bad port"):
        await start_in_task(part)
    assert part.state is ComponentState.STOPPED
    assert part.shutdowns == 1


async def test_an_error_while_running_is_raised_by_stop() -> None:
    fail = anyio.Event()
    with anyio.fail_after(TIMEOUT):
        started = await start_in_task(Part(fail_later=fail))
        fail.set()
        with pytest.raises(RuntimeError, match="failed while running"):
            await started.stop()
    assert started.part.shutdowns == 1


async def test_cancelled_while_starting_the_part_is_stopped() -> None:
    part = Part(ready=anyio.Event())  # never ready
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(start_in_task, part)
            await part.serving.wait()
            tg.cancel_scope.cancel()
        assert part.state is ComponentState.STOPPED
    assert part.shutdowns == 1
