"""Unit tests of the token buckets and the per-connection rate limiter, on a fake clock."""

from __future__ import annotations

import json

import pytest
from fake_time import FakeClock

from ancsync.errors import ConfigError
from ancsync.mqtt.ratelimit import RateLimiter, TokenBucket


def test_bucket_starts_full_and_refills_at_its_rate_up_to_capacity() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10, capacity=5, clock=clock)
    assert bucket.tokens == 5

    bucket.take(4)
    assert bucket.tokens == pytest.approx(1)
    clock.now += 0.25
    assert bucket.tokens == pytest.approx(3.5)
    clock.now += 10
    assert bucket.tokens == 5


def test_bucket_wait_time_and_debt() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=100, capacity=100, clock=clock)
    assert bucket.wait_time(100) == 0

    bucket.take(150)  # 50 in debt
    assert bucket.tokens == pytest.approx(-50)
    assert bucket.wait_time(1) == pytest.approx(0.51)
    clock.now += 0.51
    assert bucket.wait_time(1) == 0


@pytest.mark.parametrize(("rate", "capacity"), [(0, 1), (1, 0), (-5, 10)])
def test_bucket_refuses_a_rate_or_capacity_that_is_not_positive(
    rate: float, capacity: float
) -> None:
    with pytest.raises(ConfigError, match="above 0"):
        TokenBucket(rate, capacity)


async def test_limiter_lets_a_burst_through_then_paces_messages() -> None:
    clock = FakeClock()
    limiter = RateLimiter(messages_per_second=10, clock=clock, sleep=clock.sleep)

    waits = [await limiter.acquire(10) for _ in range(12)]

    assert waits[:10] == [0.0] * 10
    assert waits[10:] == [pytest.approx(0.1), pytest.approx(0.1)]
    assert clock.now == pytest.approx(1000.2)
    stats = limiter.stats()
    assert stats["acquired"] == 12
    assert stats["waits"] == 2
    assert stats["wait_seconds"] == pytest.approx(0.2)


async def test_limiter_paces_bytes() -> None:
    clock = FakeClock()
    limiter = RateLimiter(
        messages_per_second=1000, bytes_per_second=1000, clock=clock, sleep=clock.sleep
    )

    assert await limiter.acquire(600) == 0
    assert await limiter.acquire(600) == pytest.approx(0.2)
    assert limiter.stats()["waits"] == 1


async def test_a_message_larger_than_the_byte_bucket_goes_from_a_full_bucket() -> None:
    clock = FakeClock()
    limiter = RateLimiter(
        messages_per_second=1000, bytes_per_second=1000, clock=clock, sleep=clock.sleep
    )
    await limiter.acquire(500)

    # 5000 bytes never fit a 1000-byte bucket: wait until it is full (0.5 s), then go into debt.
    assert await limiter.acquire(5000) == pytest.approx(0.5)
    # The debt (4000 bytes) is repaid before the next message: 4.001 s for the next byte.
    assert await limiter.acquire(1) == pytest.approx(4.001)


async def test_limiter_stats_are_json_serialisable() -> None:
    limiter = RateLimiter()
    await limiter.acquire(100)

    stats = json.loads(json.dumps(limiter.stats()))

    assert stats == {
        "messages_per_second": 100,
        "bytes_per_second": 512 * 1024,
        "acquired": 1,
        "waits": 0,
        "wait_seconds": 0.0,
    }
