"""A fake clock for unit tests of time-driven pieces (rate limits, backoff, batching)."""

from __future__ import annotations

import anyio


class FakeClock:
    """A clock that only moves when the code under test sleeps (or the test moves ``now``)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await anyio.lowlevel.checkpoint()
