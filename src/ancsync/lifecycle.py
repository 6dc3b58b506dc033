"""The one lifecycle of every long-lived part of ancsync.

The MQTT session, the shadow sync, telemetry, emergencies, the durable outbox, the orchestrator,
the emulator and its services are each a :class:`Component`, and are all run the same way:

- in your task group: ``await task_group.start(part.run)`` returns once the part is ready;
- for the length of a block: ``async with part: ...`` runs it in the background of the block;
- to stop it, cancel it (Ctrl-C cancels ``asyncio.run``'s task, a task group cancels its
  children) or call ``await part.aclose()``.

However it is stopped, a part shuts down the same way: its work is cancelled, then its
shutdown (flush what it can, persist the rest, say goodbye, disconnect) runs once, shielded
from the cancellation but bounded by :attr:`Component.stop_timeout` seconds. Only that
shutdown is ever shielded, and only for that long.

Parts of one owner stop at the same time, so a shutdown never waits for another part to stop
first; where one part's shutdown needs another's (telemetry's last batches must reach the
session before it disconnects), they agree on it through the object they share (the outbox's
producers, :meth:`ancsync.mqtt.outbox.Outbox.producing`), each bounded by its own deadline.

Writing a part means subclassing :class:`Component` and implementing ``_serve`` (start, call
``task_status.started()`` once ready, work until cancelled) and, if there is anything to do on
the way out, ``_shutdown``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from enum import StrEnum
from types import TracebackType
from typing import Self

import anyio
from anyio.abc import TaskStatus

__all__ = ["Component", "ComponentState"]

log = logging.getLogger("ancsync.lifecycle")


@asynccontextmanager
async def unwrapping() -> AsyncIterator[None]:
    """Raise a task group's group of one error as that error itself, its cause chain kept."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            error = group.exceptions[0]
            raise error from error.__cause__
        raise


class ComponentState(StrEnum):
    """Where a :class:`Component` is in its life. A stopped part may be run again."""

    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class _Started:
    """The ``task_status`` a part's ``_serve`` gets: marks the part running, then tells the
    owner's ``task_group.start``."""

    def __init__(self, component: Component, owner: TaskStatus[None]) -> None:
        self._component = component
        self._owner = owner

    def started(self, value: None = None) -> None:
        self._component._state = ComponentState.RUNNING
        self._owner.started()


class Component:
    """A long-lived part: runs in its owner's task group, stops within a deadline.

    Subclasses implement :meth:`_serve` and, when stopping has work to do, :meth:`_shutdown`.
    ``stop_timeout`` bounds the shutdown, in seconds; an owner may set it on its parts.
    """

    #: A short name for logs and status (``"session"``, ``"telemetry"``...).
    name: str = "component"

    def __init__(self, *, stop_timeout: float = 5.0) -> None:
        if stop_timeout <= 0:
            raise ValueError(f"stop_timeout must be above 0 seconds, got {stop_timeout!r}")
        self.stop_timeout = stop_timeout
        self._state = ComponentState.NEW
        self._run_scope: anyio.CancelScope | None = None
        self._run_done: anyio.Event | None = None
        self._block: AsyncExitStack | None = None
        # The end of the current shutdown: now + stop_timeout, or sooner if the owner asks.
        self._shutdown_deadline = float("inf")
        self._asked_deadline = float("inf")

    # --- what subclasses implement ---------------------------------------------------------

    async def _serve(self, task_status: TaskStatus[None]) -> None:
        """Start, call ``task_status.started()`` once ready, then work until cancelled.

        Returning ends the part (its shutdown still runs); raising fails it.
        """
        raise NotImplementedError

    async def _shutdown(self) -> None:
        """Stop cleanly: runs once after :meth:`_serve` ends, however it ended.

        Shielded from cancellation, within :attr:`stop_timeout` seconds (or the shorter time an
        owner's ``aclose(timeout=...)`` gives): when the time is up it is cancelled, so do the
        most important work first. :meth:`_time_left` says how long remains.
        """

    def _limit_stop(self, deadline: float) -> None:
        """Finish the next (or current) shutdown by ``deadline`` (anyio's clock) at the latest.

        Owners override it to pass the deadline on to their parts.
        """
        self._asked_deadline = min(self._asked_deadline, deadline)
        self._shutdown_deadline = min(self._shutdown_deadline, deadline)

    def _time_left(self) -> float:
        """Seconds left of the current shutdown (0 when it is over or not running)."""
        return max(0.0, self._shutdown_deadline - anyio.current_time())

    # --- the protocol ------------------------------------------------------------------------

    @property
    def state(self) -> ComponentState:
        """Where the part is in its life: new, starting, running, stopping or stopped."""
        return self._state

    @property
    def running(self) -> bool:
        """Whether the part is ready and working (not new, starting, stopping or stopped)."""
        return self._state is ComponentState.RUNNING

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the part until it is cancelled or :meth:`aclose` is called, then shut it down.

        Use ``await task_group.start(part.run)``: it returns once the part is ready, and raises
        what the part raised if it failed before that. A part runs once at a time; once stopped
        it may be run again (the orchestrator's supervisor restarts a failed part this way).
        """
        if self._state in (ComponentState.STARTING, ComponentState.RUNNING):
            raise RuntimeError(f"the {self.name} component is already running")
        if self._state is ComponentState.STOPPING:
            raise RuntimeError(f"the {self.name} component is still stopping")
        self._state = ComponentState.STARTING
        self._asked_deadline = float("inf")
        self._run_done = done = anyio.Event()
        try:
            # A part's own task group would wrap its error in a group of one: raise the error.
            with anyio.CancelScope() as self._run_scope:
                async with unwrapping():
                    await self._serve(_Started(self, task_status))
        finally:
            self._state = ComponentState.STOPPING
            began = anyio.current_time()
            self._shutdown_deadline = min(began + self.stop_timeout, self._asked_deadline)
            try:
                with anyio.CancelScope(shield=True, deadline=self._shutdown_deadline) as shutdown:
                    await self._shutdown()
                if shutdown.cancelled_caught:
                    log.warning(
                        "the %s component did not finish stopping within %.3g s; it was cut short",
                        self.name,
                        max(0.0, self._shutdown_deadline - began),
                    )
            finally:
                # Even when the shutdown raised: the part is stopped, and may be run again.
                self._run_scope = None
                self._shutdown_deadline = float("inf")
                self._state = ComponentState.STOPPED
                done.set()

    # A timeout argument, not the caller's cancel scope: the shutdown itself is shielded.
    async def aclose(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Stop the part and return once it has shut down.

        The same shutdown as on cancellation, within :attr:`stop_timeout` seconds, or within
        ``timeout`` seconds when that is shorter. Safe to call when the part is not running.
        """
        if timeout is not None:
            self._limit_stop(anyio.current_time() + timeout)
        if self._block is not None:
            block, self._block = self._block, None
            await block.aclose()
            return
        if self._run_scope is not None:
            self._run_scope.cancel()
        if self._run_done is not None:
            await self._run_done.wait()

    async def __aenter__(self) -> Self:
        """Run the part in the background of the ``async with`` block; return once ready."""
        if self._block is not None:
            raise RuntimeError(f"the {self.name} component is already running in a block")
        stack = AsyncExitStack()
        tasks = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tasks.cancel_scope.cancel)  # runs before the task group is exited
        try:
            await tasks.start(self.run)
        except BaseException:
            await stack.aclose()
            raise
        self._block = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the part (see :meth:`aclose`). If it failed meanwhile, raise its error."""
        async with unwrapping():  # the block's task group wraps the part's error
            await self.aclose()

    # The names the original SDK's users know.

    async def start(self) -> None:
        """Run the part in the background until :meth:`stop`; call both from the same task.

        ``async with part:`` does both and is the better choice where it fits.
        """
        await self.__aenter__()

    async def stop(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Stop the part (the same as :meth:`aclose`); raise its error if it failed meanwhile."""
        if timeout is not None:
            self._limit_stop(anyio.current_time() + timeout)
        await self.__aexit__(None, None, None)
