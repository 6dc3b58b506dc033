"""Supervised tasks: a component that fails is logged, recorded and restarted; the others go on.

The orchestrator runs each component (shadow sync, telemetry, emergencies) as a
:class:`Supervised` task in its task group. A task that raises is logged with its traceback, its
error is kept for ``get_status()``, and it is started again after a backoff (1 s, 2 s, 4 s... up
to 30 s, with jitter). A task that returns has stopped on purpose and is not restarted.

The task runs in a shielded cancel scope: cancelling the caller (Ctrl-C) does not reach it, so a
shutdown can still use it to flush; :meth:`Supervised.cancel` ends it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio

from ancsync.models import utc_now
from ancsync.mqtt.backoff import Backoff, BackoffPolicy
from ancsync.status import ComponentStatus, ErrorInfo

__all__ = ["RESTART_BACKOFF", "Supervised"]

log = logging.getLogger("ancsync.supervisor")

RESTART_BACKOFF = BackoffPolicy(base=1.0, cap=30.0)
"""The pause before a failed task is started again."""


class Supervised:
    """Runs ``run()`` until it returns or :meth:`cancel` is called, restarting it on errors."""

    def __init__(
        self,
        name: str,
        run: Callable[[], Awaitable[None]],
        *,
        backoff: BackoffPolicy = RESTART_BACKOFF,
    ) -> None:
        self.name = name
        self._run = run
        self._backoff = backoff
        self._scope: anyio.CancelScope | None = None
        self._cancelled = False  # a cancel() before the task runs still counts
        self.running = False
        self.restarts = 0
        self.last_error: ErrorInfo | None = None

    async def run(self) -> None:
        """Run the task under supervision; start it in a task group."""
        if self._cancelled:
            return
        backoff = Backoff(self._backoff)
        with anyio.CancelScope(shield=True) as self._scope:
            while True:
                self.running = True
                try:
                    await self._run()
                    return  # stopped on purpose
                except Exception as exc:
                    self.last_error = {
                        "type": type(exc).__name__,
                        "message": str(exc),
                        "at": utc_now(),
                    }
                    log.exception("the %s component failed; restarting it", self.name)
                finally:
                    self.running = False
                await anyio.sleep(backoff.next_delay())
                self.restarts += 1

    def cancel(self) -> None:
        """End the task (and any pause before a restart)."""
        self._cancelled = True
        if self._scope is not None:
            self._scope.cancel()

    def status(self) -> ComponentStatus:
        """``running``, ``restarts`` and ``last_error`` (type, message, time), for get_status()."""
        return {"running": self.running, "restarts": self.restarts, "last_error": self.last_error}
