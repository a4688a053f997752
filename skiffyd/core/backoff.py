"""Exponential backoff with full jitter, as plain arithmetic.

The caller owns the clock and the randomness: :meth:`Backoff.next_delay`
takes a number in [0, 1) so tests are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Backoff:
    base: float = 0.5
    cap: float = 30.0
    failures: int = 0

    def next_delay(self, unit_random: float, *, at_least: float = 0.0) -> float:
        """Record one failure and return how long to wait before the next try.

        ``at_least`` is a floor the server asked for (``retry_after_ms``).
        """
        ceiling = min(self.cap, self.base * (2.0 ** min(self.failures, 30)))
        self.failures += 1
        # Half fixed, half jitter: never zero, never a thundering herd.
        delay = ceiling / 2 + unit_random * ceiling / 2
        return max(delay, at_least)

    def reset(self) -> None:
        self.failures = 0
