"""Backoff: full jitter under a doubling ceiling, capped, reset after a long-enough connection."""

from __future__ import annotations

import pytest

from ancsync.errors import ConfigError
from ancsync.mqtt.backoff import Backoff, BackoffPolicy


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_ceiling_doubles_from_base_to_cap() -> None:
    backoff = Backoff(BackoffPolicy(base=1, cap=60), random=lambda: 1.0)
    assert [backoff.next_delay() for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff.attempts == 8


def test_full_jitter_scales_the_ceiling() -> None:
    draws = iter([0.0, 0.5, 0.25])
    backoff = Backoff(BackoffPolicy(base=1, cap=60), random=lambda: next(draws))
    assert [backoff.next_delay() for _ in range(3)] == [0.0, 1.0, 1.0]


def test_a_long_outage_stays_at_the_cap() -> None:
    backoff = Backoff(BackoffPolicy(base=1, cap=60), random=lambda: 1.0)
    for _ in range(10_000):
        delay = backoff.next_delay()
    assert delay == 60


def test_permanent_errors_wait_about_the_cap_every_time() -> None:
    draws = iter([0.0, 1.0])
    backoff = Backoff(BackoffPolicy(base=1, cap=60), random=lambda: next(draws))
    assert backoff.next_delay(permanent=True) == 30
    assert backoff.next_delay(permanent=True) == 60


def test_resets_only_after_a_connection_that_lasted() -> None:
    clock = FakeClock()
    policy = BackoffPolicy(base=1, cap=60, reset_after=30)
    backoff = Backoff(policy, random=lambda: 1.0, clock=clock)
    for _ in range(4):
        backoff.next_delay()

    backoff.connected()
    clock.now += 29.9  # a flapping link keeps backing off
    backoff.disconnected()
    assert backoff.next_delay() == 16

    backoff.connected()
    clock.now += 30  # a link that held for reset_after starts over
    backoff.disconnected()
    assert backoff.next_delay() == 1


@pytest.mark.parametrize(("base", "cap", "reset_after"), [(0, 60, 30), (2, 1, 30), (1, 60, -1)])
def test_invalid_policy(base: float, cap: float, reset_after: float) -> None:
    with pytest.raises(ConfigError, match="invalid backoff policy"):
        BackoffPolicy(base=base, cap=cap, reset_after=reset_after)
