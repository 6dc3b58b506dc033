"""Per-connection publish rate limit: token buckets for messages and bytes.

AWS IoT Core throttles a connection above 100 publishes per second and 512 KiB per second. The
session task waits in :meth:`RateLimiter.ready` before it takes the next message from the outbox,
then charges it with :meth:`~RateLimiter.charge`. So it is the session, never the caller of
``publish``, that waits (shown as ``waits`` in the status), and the message taken is the most
urgent one queued at the moment it can go: an emergency never waits behind telemetry.
:meth:`RateLimiter.acquire` waits for room for a message of known size and charges it in one call.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio

from ancsync.errors import ConfigError
from ancsync.status import RateLimitStatus

__all__ = ["RateLimiter", "TokenBucket"]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# Refill arithmetic in floats can land a hair under a whole token after sleeping the exact delay.
_EPSILON = 1e-9


class TokenBucket:
    """``rate`` tokens per second, holding at most ``capacity``; starts full.

    :meth:`take` may leave the bucket in debt (negative), which later takes repay: that lets a
    request larger than the capacity through once the bucket is full while keeping the long-run
    rate exact.
    """

    def __init__(self, rate: float, capacity: float, *, clock: Clock = time.monotonic) -> None:
        if rate <= 0 or capacity <= 0:
            raise ConfigError(
                f"a token bucket needs a rate and a capacity above 0, got rate={rate!r}, "
                f"capacity={capacity!r}"
            )
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._tokens = capacity
        self._updated = clock()

    @property
    def tokens(self) -> float:
        """Tokens available now (negative while in debt)."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        return self._tokens

    def wait_time(self, amount: float) -> float:
        """Seconds until ``amount`` tokens are available (0 if they are now)."""
        missing = amount - self.tokens
        return 0.0 if missing <= _EPSILON else missing / self.rate

    def take(self, amount: float) -> None:
        """Remove ``amount`` tokens, going into debt if there are fewer."""
        self._tokens = self.tokens - amount


class RateLimiter:
    """One per connection: at most ``messages_per_second`` and ``bytes_per_second`` on average.

    Each bucket holds one second's worth, so a burst after a quiet second goes out at once.
    ``clock`` and ``sleep`` are injectable so tests run on a fake clock.
    """

    def __init__(
        self,
        messages_per_second: float = 100,
        bytes_per_second: float = 512 * 1024,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        self._messages = TokenBucket(messages_per_second, messages_per_second, clock=clock)
        self._bytes = TokenBucket(bytes_per_second, bytes_per_second, clock=clock)
        self._clock = clock
        self._sleep = sleep
        self._acquired = 0
        self._waits = 0
        self._wait_seconds = 0.0

    async def ready(self) -> float:
        """Wait until a message may go: a message token is free and the byte bucket is not in
        debt. Return the seconds waited. Follow it with :meth:`charge` for the message sent.

        The size is not needed yet, so the caller can choose the message after the wait; a
        message charged into debt delays the next one instead (the long-run rate stays exact,
        a burst may exceed the byte bucket by one message).
        """
        return await self._wait_for(0)

    def charge(self, nbytes: int) -> None:
        """Count one message of ``nbytes`` as sent (the buckets may go into debt)."""
        self._messages.take(1)
        self._bytes.take(nbytes)
        self._acquired += 1

    async def acquire(self, nbytes: int) -> float:
        """Wait until one message of ``nbytes`` may be published, charge it, and return the
        seconds waited.

        A message larger than the byte bucket (it could never fit) waits for a full bucket, goes,
        and leaves the bucket in debt.
        """
        waited = await self._wait_for(min(nbytes, self._bytes.capacity))
        self.charge(nbytes)
        return waited

    async def _wait_for(self, nbytes: float) -> float:
        """Sleep until a message token and ``nbytes`` byte tokens are available."""
        started = self._clock()
        waited = False
        while True:
            delay = max(self._messages.wait_time(1), self._bytes.wait_time(nbytes))
            if delay <= 0:
                break
            waited = True
            await self._sleep(delay)
        if not waited:
            return 0.0
        seconds = self._clock() - started
        self._waits += 1
        self._wait_seconds += seconds
        return seconds

    def stats(self) -> RateLimitStatus:
        """Limits and wait counters, JSON-serialisable (part of ``get_status()``)."""
        return {
            "messages_per_second": self._messages.rate,
            "bytes_per_second": self._bytes.rate,
            "acquired": self._acquired,
            "waits": self._waits,
            "wait_seconds": round(self._wait_seconds, 6),
        }
