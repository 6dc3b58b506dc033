"""When the reconnect backoff starts again from short delays, and which policies it accepts."""

from __future__ import annotations

from fake_time import FakeClock

from ancsync.mqtt.backoff import Backoff, BackoffPolicy


def test_a_short_connection_late_in_the_clock_keeps_backing_off() -> None:
    clock = FakeClock(now=10_000.0)  # a monotonic clock is far from 0 on a running device
    backoff = Backoff(BackoffPolicy(reset_after=30), random=lambda: 1.0, clock=clock)
    backoff.next_delay()
    backoff.next_delay()

    backoff.connected()
    clock.now += 5
    backoff.disconnected()

    assert backoff.attempts == 2
    assert backoff.next_delay() == 4.0


def test_a_second_disconnect_without_a_new_connection_changes_nothing() -> None:
    clock = FakeClock(now=0.0)
    backoff = Backoff(BackoffPolicy(reset_after=30), random=lambda: 1.0, clock=clock)
    backoff.connected()
    clock.now += 60
    backoff.disconnected()  # long enough: starts again
    assert backoff.attempts == 0
    backoff.next_delay()
    backoff.next_delay()

    clock.now += 60
    backoff.disconnected()

    assert backoff.attempts == 2


def test_reset_after_zero_starts_again_after_every_connection() -> None:
    clock = FakeClock(now=0.0)
    backoff = Backoff(BackoffPolicy(reset_after=0), random=lambda: 1.0, clock=clock)
    backoff.next_delay()
    backoff.next_delay()

    backoff.connected()
    backoff.disconnected()

    assert backoff.attempts == 0


def test_a_fractional_reset_after_is_accepted() -> None:
    assert BackoffPolicy(reset_after=0.5).reset_after == 0.5
