"""What every part of the emulator is: a Component whose start() and stop() work from any task.

The emulator, its broker and its services follow :class:`ancsync.lifecycle.Component` like the
rest of ancsync: ``await task_group.start(part.run)``, ``async with part:``, cancel or
``await part.aclose()``. Tests also start and stop a broker or a whole emulator between other
blocks (to take it down under a connected device, then bring it back), which a task group held
open in between would forbid; so here :meth:`EmulatorComponent.start` runs the part in a task of
its own (:func:`ancsync.testing.start_in_task`) and :meth:`EmulatorComponent.stop` stops it
however it was started.
"""

from __future__ import annotations

import anyio

from ancsync.lifecycle import Component
from ancsync.testing import StartedPart, start_in_task

__all__ = ["EmulatorComponent"]


class EmulatorComponent(Component):
    """A :class:`~ancsync.lifecycle.Component` of the emulator (see the module docstring)."""

    def __init__(self, *, stop_timeout: float = 5.0) -> None:
        super().__init__(stop_timeout=stop_timeout)
        self._started_part: StartedPart[EmulatorComponent] | None = None

    async def start(self) -> None:
        """Run the part in a task of its own until :meth:`stop`; return once it is ready.

        Unlike ``async with``, ``start()`` and ``stop()`` may be called from different tasks and
        around other blocks.
        """
        self._started_part = await start_in_task(self)

    async def stop(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Stop the part however it was started (``start()``, a task group, ``async with``).

        Returns once it has shut down; raises the error of a part started with ``start()``
        that failed meanwhile.
        """
        started, self._started_part = self._started_part, None
        if timeout is not None:
            self._limit_stop(anyio.current_time() + timeout)
        if started is not None:
            await started.stop()
        else:
            await self.aclose()
