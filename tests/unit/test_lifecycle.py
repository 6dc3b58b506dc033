"""The one component lifecycle: run in a task group or a block, stop by cancel or aclose()."""

from __future__ import annotations

import anyio
import pytest
from anyio.abc import TaskStatus

from ancsync.lifecycle import Component, ComponentState


class Recorder(Component):
    """A part that records what happened to it; ``hang`` makes its shutdown never finish."""

    name = "recorder"

    def __init__(self, *, fail: Exception | None = None, hang: bool = False, **kw: float) -> None:
        super().__init__(**kw)
        self.fail = fail
        self.hang = hang
        self.events: list[str] = []
        self.shutdowns = 0

    async def _serve(self, task_status: TaskStatus[None]) -> None:
        self.events.append("serving")
        task_status.started()
        if self.fail is not None:
            await anyio.lowlevel.checkpoint()
            raise self.fail
        await anyio.sleep_forever()

    async def _shutdown(self) -> None:
        self.shutdowns += 1
        self.events.append(f"shutdown in state {self.state}")
        if self.hang:
            await anyio.sleep_forever()
        await anyio.lowlevel.checkpoint()  # a shutdown may await: it is shielded
        self.events.append("shut down")


async def test_task_group_start_returns_once_ready_and_cancel_runs_the_shutdown() -> None:
    part = Recorder()
    assert part.state is ComponentState.NEW
    async with anyio.create_task_group() as tg:
        await tg.start(part.run)
        assert part.running
        tg.cancel_scope.cancel()
    assert part.state is ComponentState.STOPPED
    assert part.events == ["serving", "shutdown in state stopping", "shut down"]


async def test_async_with_runs_in_the_background_and_aclose_is_the_same_shutdown() -> None:
    part = Recorder()
    async with part:
        assert part.running
        await part.aclose()
        assert part.state is ComponentState.STOPPED
    assert part.shutdowns == 1  # leaving the block after aclose() does not shut down twice


async def test_cancelling_the_owner_shuts_the_part_down_within_its_deadline() -> None:
    part = Recorder(hang=True, stop_timeout=0.2)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(part.run)
            tg.cancel_scope.cancel()
    assert part.state is ComponentState.STOPPED
    assert part.events == ["serving", "shutdown in state stopping"]  # cut short, not hung


async def test_the_block_is_cancelled_and_the_plain_error_raised_when_the_part_fails() -> None:
    part = Recorder(fail=ValueError("broken"))
    reached_end = False

    async def block() -> None:
        nonlocal reached_end
        async with part:
            await anyio.sleep_forever()  # cancelled when the part fails
            reached_end = True

    with pytest.raises(ValueError, match="broken"):
        await block()
    assert not reached_end
    assert part.shutdowns == 1


async def test_a_stopped_part_runs_again_but_never_twice_at_once() -> None:
    part = Recorder()
    async with part:
        with pytest.raises(RuntimeError, match="already running"):
            await part.run()
    async with part:
        assert part.running
    assert part.shutdowns == 2


async def test_start_and_stop_are_the_block_in_two_calls() -> None:
    part = Recorder()
    await part.start()
    assert part.running
    await part.stop()
    assert part.state is ComponentState.STOPPED
    await part.stop()  # stopping a stopped part is harmless
    assert part.shutdowns == 1


def test_stop_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="stop_timeout"):
        Recorder(stop_timeout=0)


async def test_a_shutdown_that_raises_still_leaves_the_part_stopped_and_runnable() -> None:
    class Broken(Recorder):
        async def _shutdown(self) -> None:
            await super()._shutdown()
            raise RuntimeError("shutdown broke")

    part = Broken()
    with anyio.fail_after(5):
        with pytest.raises(RuntimeError, match="shutdown broke"):
            async with part:
                pass
        assert part.state is ComponentState.STOPPED
        with pytest.raises(RuntimeError, match="shutdown broke"):
            async with part:  # runs again (and breaks again on the way out)
                assert part.running
