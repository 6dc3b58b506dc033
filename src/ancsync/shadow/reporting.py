"""Coalesced reported updates: many reports, few requests, the latest value per key.

Reports merge into one pending patch. One batch is in flight at a time: when it is accepted the
next batch takes everything that arrived meanwhile, so a burst of reports costs two requests.

Each report belongs to a *generation*, the number of the batch it will travel in; a caller waits
until its generation is accepted or has failed. There is no background task: whichever waiting
caller finds no batch in flight sends the next one, and the others wait for it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

from ancsync.errors import AncSyncError, ShadowRejected
from ancsync.shadow.document import JsonObject, combine

__all__ = ["ReportQueue"]

_KEEP_FAILURES = 16  # failed generations remembered for their waiters


class ReportQueue:
    """Pending reported values and the batch in flight.

    ``send(batch)`` sends one batch and returns once it is accepted (or raises). ``check(state)``
    is called with what would be pending plus in flight after each :meth:`add`, and raises to
    refuse the report (the size limits).
    """

    def __init__(
        self,
        send: Callable[[JsonObject], Awaitable[object]],
        check: Callable[[JsonObject], None],
    ) -> None:
        self._send = send
        self._check = check
        self._pending: JsonObject = {}
        self._in_flight: JsonObject = {}
        self._generation = 1  # the batch the pending values will travel in
        self._done = 0  # the last generation accepted
        self._failures: dict[int, AncSyncError] = {}
        self._sending: anyio.Event | None = None
        self.coalesced = 0
        """Reports merged into a batch that already had values waiting."""

    @property
    def pending(self) -> JsonObject:
        """Values waiting for the next batch (not a copy: do not modify)."""
        return self._pending

    def take_pending(self) -> JsonObject:
        """Remove and return the values waiting for the next batch (sent some other way)."""
        pending, self._pending = self._pending, {}
        return pending

    def add(self, patch: JsonObject) -> int:
        """Merge ``patch`` into the pending values; return the generation to wait for.

        Raises whatever ``check`` raises, and then nothing is added.
        """
        pending = combine(self._pending, patch)
        self._check(combine(self._in_flight, pending))
        if self._pending:
            self.coalesced += 1
        self._pending = pending
        return self._generation

    async def flush(self) -> None:
        """Wait until everything added so far was accepted (or raise why it was not)."""
        if self._pending:
            await self.wait_for(self._generation)
        elif self._sending is not None:
            await self.wait_for(self._generation - 1)

    async def wait_for(self, generation: int) -> None:
        """Send batches until ``generation`` is accepted.

        Raises:
            ShadowRejected: the batch was refused; its values are dropped.
            AncSyncError: the batch failed otherwise (a timeout); its values wait again,
                under any newer ones.
        """
        while True:
            failure = self._failures.get(generation)
            if failure is not None:
                raise failure
            if self._done >= generation:
                return
            if self._sending is not None:
                await self._sending.wait()
            else:
                await self._send_next()

    async def _send_next(self) -> None:
        batch, generation = self._pending, self._generation
        self._pending, self._in_flight = {}, batch
        self._generation += 1
        sending = self._sending = anyio.Event()
        try:
            if batch:
                await self._send(batch)
            self._done = generation
        except ShadowRejected as exc:
            self._remember(generation, exc)  # a bad batch: sending it again cannot help
            raise
        except BaseException as exc:
            self._pending = combine(batch, self._pending)  # newer values win
            if isinstance(exc, AncSyncError):
                self._remember(generation, exc)
            raise
        finally:
            self._in_flight = {}
            self._sending = None
            sending.set()

    def _remember(self, generation: int, error: AncSyncError) -> None:
        self._failures[generation] = error
        for old in sorted(self._failures)[:-_KEEP_FAILURES]:
            del self._failures[old]
