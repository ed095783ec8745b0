"""A token bucket with a tally of what it refused (no I/O).

Bounds how much a flooding worker can make the server log: the server uses
it for raw output lines, the worker for log records.  What is refused is
counted, so the flood is reported rather than dropped without a trace.

Standard-library only and Python 3.7 syntax: worker children load it too.
"""

from __future__ import annotations


class Budget:
    """Allow ``rate`` items per second on average, ``burst`` at once."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last = None
        self.refused = 0
        self.refused_bytes = 0

    def take(self, now: float, size: int = 0) -> bool:
        """Spend one token at time ``now``; False (and counted) if there is none."""
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self.refused += 1
        self.refused_bytes += size
        return False

    def tally(self):
        """``(items, bytes)`` refused since the last tally, and start a new one."""
        counts = (self.refused, self.refused_bytes)
        self.refused = self.refused_bytes = 0
        return counts
