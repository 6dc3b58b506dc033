"""The edges of the publish rate limit: fractional rates, an empty (not indebted) byte bucket,
no sleeping when there is room, and the wait time as the status shows it."""

from __future__ import annotations

import anyio
import pytest
from fake_time import FakeClock

from ancsync.mqtt.ratelimit import RateLimiter, TokenBucket


def test_a_rate_below_one_token_per_second_is_allowed() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=0.5, capacity=0.5, clock=clock)

    assert bucket.tokens == 0.5
    bucket.take(0.5)
    assert bucket.wait_time(0.5) == pytest.approx(1.0)


async def test_a_limiter_with_room_publishes_without_sleeping() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10, 1000, clock=clock, sleep=clock.sleep)

    with anyio.fail_after(5):
        assert await limiter.acquire(100) == 0.0
        assert await limiter.ready() == 0.0

    assert clock.sleeps == []
    assert limiter.stats()["waits"] == 0


async def test_ready_does_not_wait_for_an_empty_byte_bucket_that_is_not_in_debt() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10, 1000, clock=clock, sleep=clock.sleep)
    limiter.charge(1000)  # exactly the whole byte bucket: empty, not in debt

    with anyio.fail_after(5):
        assert await limiter.ready() == 0.0
    assert clock.sleeps == []


async def test_the_status_shows_the_wait_to_the_microsecond() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1, 1000, clock=clock, sleep=clock.sleep)
    limiter.charge(1)
    clock.now += 1 - 0.1234567  # the next message token is 0.1234567 s away

    with anyio.fail_after(5):
        waited = await limiter.ready()

    assert waited == pytest.approx(0.1234567)
    assert limiter.stats()["wait_seconds"] == 0.123457
