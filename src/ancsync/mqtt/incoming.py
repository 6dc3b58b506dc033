"""The bounded handoff of incoming messages from a backend's callbacks to ``messages()``.

A backend's network callback runs in the event loop's thread and must never wait, and by then
the broker has been (or is being) acknowledged, so a reader that falls behind cannot slow the
broker down: the handoff keeps the newest ``limit`` messages, drops the oldest and counts each
drop. Any backend can use it (see docs/transport.md).
"""

from __future__ import annotations

import asyncio
from collections import deque

from ancsync.errors import ConnectError
from ancsync.mqtt.transport import IncomingMessage

__all__ = ["IncomingQueue"]


class IncomingQueue:
    """Incoming messages, at most ``limit``, dropped oldest first; ended by :meth:`end`.

    :meth:`put` is called from the backend's callbacks (event loop thread, never blocks);
    :meth:`get` is awaited by the one reader. After :meth:`end`, the messages still queued are
    handed out first, then :meth:`get` raises the error the connection ended with.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        self._messages: deque[IncomingMessage] = deque()
        self._limit = limit
        self._ready = asyncio.Event()
        self._end: ConnectError | None = None
        self.dropped = 0
        """Messages dropped because the reader was ``limit`` messages behind."""

    def put(self, message: IncomingMessage) -> None:
        """Queue ``message``; if full, drop the oldest first. Ignored once ended."""
        if self._end is not None:
            return
        if len(self._messages) >= self._limit:
            self._messages.popleft()
            self.dropped += 1
        self._messages.append(message)
        self._ready.set()

    def end(self, error: ConnectError) -> None:
        """No more messages: once the queue is empty, :meth:`get` raises ``error``.

        Only the first call counts: the first reason a connection ended is the one reported.
        """
        if self._end is None:
            self._end = error
            self._ready.set()

    async def get(self) -> IncomingMessage:
        """The oldest queued message; waits for one, or raises the error given to :meth:`end`."""
        while not self._messages:
            if self._end is not None:
                raise self._end
            self._ready.clear()
            await self._ready.wait()
        return self._messages.popleft()

    def __len__(self) -> int:
        return len(self._messages)
