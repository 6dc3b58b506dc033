"""The supervisor: runs parts, restarts one that fails, and stops them all together.

The orchestrator runs its parts (shadow sync, telemetry, emergencies, jobs) under one
:class:`Supervisor`, itself a :class:`~ancsync.lifecycle.Component`. A part that raises is
logged with its traceback, its error is kept for ``get_status()``, and it is run again through
the same protocol (``part.run``) after a backoff (1 s, 2 s, 4 s... up to 30 s, with jitter),
while the others carry on. A part that returns has stopped on purpose and is not restarted.

Stopping the supervisor (cancellation, ``aclose()``) stops every part at once, each through its
own shutdown, within the deadline the supervisor was given.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio
from anyio.abc import TaskStatus

from ancsync.lifecycle import Component
from ancsync.models import utc_now
from ancsync.mqtt.backoff import Backoff, BackoffPolicy
from ancsync.status import ComponentStatus, ErrorInfo

__all__ = ["RESTART_BACKOFF", "Supervisor"]

log = logging.getLogger("ancsync.supervisor")

RESTART_BACKOFF = BackoffPolicy(base=1.0, cap=30.0)
"""The pause before a failed part is run again."""


class _FirstStart:
    """The ``task_status`` a part gets: its first start (or failure) tells the supervisor."""

    def __init__(self, owner: TaskStatus[None]) -> None:
        self._owner: TaskStatus[None] | None = owner

    def started(self, value: None = None) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner.started()


class Supervisor(Component):
    """Run ``parts`` in one task group, restarting a part that fails.

    Ready once every part is ready, or has failed its first start (it is then restarted in
    the background, so one broken part never keeps the others from starting).
    """

    name = "supervisor"

    def __init__(
        self,
        parts: Sequence[Component],
        *,
        backoff: BackoffPolicy = RESTART_BACKOFF,
        stop_timeout: float = 5.0,
    ) -> None:
        super().__init__(stop_timeout=stop_timeout)
        self.parts = list(parts)
        self._backoff = backoff
        self._restarts = dict.fromkeys((part.name for part in self.parts), 0)
        self._errors: dict[str, ErrorInfo | None] = dict.fromkeys(self._restarts)

    def add(self, part: Component) -> None:
        """Supervise one more part; only before the supervisor runs."""
        if self.running:
            raise RuntimeError(f"add the {part.name} part before the supervisor starts")
        self.parts.append(part)
        self._restarts[part.name] = 0
        self._errors[part.name] = None

    async def _serve(self, task_status: TaskStatus[None]) -> None:
        async with anyio.create_task_group() as tg:
            for part in self.parts:
                await tg.start(self._keep_running, part, name=f"ancsync-{part.name}")
            task_status.started()

    def _limit_stop(self, deadline: float) -> None:
        super()._limit_stop(deadline)
        for part in self.parts:
            part._limit_stop(deadline)

    async def _keep_running(
        self, part: Component, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        first = _FirstStart(task_status)
        backoff = Backoff(self._backoff)
        while True:
            try:
                await part.run(task_status=first)
                first.started()
                return  # stopped on purpose
            except Exception as exc:
                self._errors[part.name] = {
                    "type": type(exc).__name__,
                    "message": str(exc),
                    "at": utc_now(),
                }
                log.exception("the %s component failed; restarting it", part.name)
                first.started()
            await anyio.sleep(backoff.next_delay())
            self._restarts[part.name] += 1

    def status(self) -> dict[str, ComponentStatus]:
        """Per part: ``running``, ``restarts`` and ``last_error`` (type, message, time)."""
        return {
            part.name: {
                "running": part.running,
                "restarts": self._restarts[part.name],
                "last_error": self._errors[part.name],
            }
            for part in self.parts
        }
