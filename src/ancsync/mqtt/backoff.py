"""Reconnect delays: exponential backoff with full jitter.

The delay before retry ``n`` (0-based) is drawn uniformly from ``[0, min(cap, base * 2**n)]``
("full jitter"): a fleet of devices that lost the broker at the same moment spreads its
reconnects instead of arriving together. The attempt counter resets once a connection has
stayed up for ``reset_after`` seconds, so a flapping link keeps backing off while a link that
was healthy for a while starts again from short delays.

A permanent error (a refused certificate, not authorised) waits about ``cap`` every time: retrying
cannot fix it quickly, but a device in the field must recover on its own once the cloud side is
fixed (a policy attached, a certificate activated), so the session never gives up entirely.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ancsync.errors import ConfigError

__all__ = ["Backoff", "BackoffPolicy"]


@dataclass(frozen=True)
class BackoffPolicy:
    """The numbers that shape the reconnect delays, in seconds.

    The defaults: base 1 s, cap 60 s, reset after 30 s connected.
    """

    base: float = 1.0
    cap: float = 60.0
    reset_after: float = 30.0

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base or self.reset_after < 0:
            raise ConfigError(
                f"invalid backoff policy {self}: need 0 < base <= cap and reset_after >= 0"
            )


@dataclass
class Backoff:
    """Stateful delay generator for one reconnect loop.

    ``random`` and ``clock`` are injectable so tests can make delays deterministic.
    """

    policy: BackoffPolicy = field(default_factory=BackoffPolicy)
    random: Callable[[], float] = random.random
    clock: Callable[[], float] = time.monotonic
    attempts: int = 0
    _connected_at: float | None = field(default=None, init=False, repr=False)

    def next_delay(self, *, permanent: bool = False) -> float:
        """The delay before the next connect attempt; counts the attempt."""
        self.attempts += 1
        if permanent:
            # Half jitter at the cap: spread out, but never a fast loop.
            return self.policy.cap * (0.5 + 0.5 * self.random())
        # 2**n grows fast; clamp the exponent so a long outage cannot overflow a float.
        ceiling = min(self.policy.cap, self.policy.base * 2.0 ** min(self.attempts - 1, 62))
        return ceiling * self.random()

    def connected(self) -> None:
        """Record that a connection was just established."""
        self._connected_at = self.clock()

    def disconnected(self) -> None:
        """Record a lost connection; start again from short delays if it lasted long enough."""
        if self._connected_at is not None:
            if self.clock() - self._connected_at >= self.policy.reset_after:
                self.attempts = 0
            self._connected_at = None
