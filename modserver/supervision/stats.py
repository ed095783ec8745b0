"""Numbers about a module's calls and restarts (no I/O).

The supervisor tells a ``ModuleStats`` how each call ended and when its
worker was replaced, and why; ``_status``, the status page and ``/metrics``
read the numbers back.  Times are passed in (the reactor's clock), so the
numbers can be tested with any clock.
"""

from __future__ import annotations

import bisect
import collections
import math
from dataclasses import dataclass

# How a call ended.  A bounded set: they label Prometheus series.
OK = "ok"  # the module returned a value
ERROR = "error"  # the module raised (or the call was malformed for it)
TIMEOUT = "timeout"  # the call ran past a deadline
DIED = "died"  # the worker died during the call
REFUSED = "refused"  # never ran: queue full, module failed or restarting, server stopping
OUTCOMES = (OK, ERROR, TIMEOUT, DIED, REFUSED)

# Why a worker was replaced; also a bounded set of labels.
RESTART_CAUSES = ("died", "spawn", "timeout", "reload", "files", "config")

# Upper bounds (seconds) of the latency histogram's buckets: lab calls range
# from reading a register (a millisecond) to moving a stage (a minute).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# The percentiles on the status page are over the calls that ended in the
# last LATENCY_WINDOW seconds, at most the newest LATENCY_SAMPLES of them:
# recent enough to show today's problem, bounded in memory and sorting time.
LATENCY_WINDOW = 300.0
LATENCY_SAMPLES = 1000

# Restarts remembered with their time and cause (the count goes on beyond).
RESTART_HISTORY = 20


def outcome_of(kind: str) -> str:
    """The outcome of a call the server answered with a ``kind`` error (``"Timeout"``)."""
    if kind == "Timeout":
        return TIMEOUT
    if kind == "WorkerDied":
        return DIED
    return REFUSED


def percentile(ordered: list[float], fraction: float) -> float | None:
    """The nearest-rank percentile of sorted values; None for no values."""
    if not ordered:
        return None
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Restart:
    """One replacement of a module's worker."""

    time: float
    cause: str  # one of RESTART_CAUSES
    detail: str  # for people: "signal 9 (SIGKILL)", "laser.py changed"

    def as_dict(self) -> dict:
        return {"time": self.time, "cause": self.cause, "detail": self.detail}


class ModuleStats:
    """Counters, a latency window and a histogram, and the restart history of one module."""

    def __init__(self) -> None:
        self.outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        # Calls per histogram bucket (the last one: slower than every bound).
        self.bucket_counts: list[int] = [0] * (len(BUCKETS) + 1)
        self.latency_sum = 0.0
        self._recent: collections.deque[tuple[float, float]] = collections.deque(
            maxlen=LATENCY_SAMPLES
        )
        self.restarts_by_cause: dict[str, int] = dict.fromkeys(RESTART_CAUSES, 0)
        self.history: collections.deque[Restart] = collections.deque(maxlen=RESTART_HISTORY)
        self._requested: tuple[str, str] | None = None

    # What the supervisor reports --------------------------------------------

    def call_answered(
        self, error: bool, abandoned: bool, received: float | None, now: float
    ) -> None:
        """The worker replied to a call received at ``received``.

        A call ``abandoned`` at its client's timeout was counted then.
        """
        if not abandoned:
            self.call_ended(ERROR if error else OK, received, now)

    def call_failed(self, kind: str, received: float | None, now: float) -> None:
        """The server answered a call with a ``kind`` error (``"Busy"``, ``"Timeout"``)."""
        self.call_ended(outcome_of(kind), received, now)

    def call_ended(self, outcome: str, received: float | None, now: float) -> None:
        """Count a call; one that ran also counts towards the latencies."""
        self.outcomes[outcome] += 1
        if outcome == REFUSED or received is None:
            return
        seconds = max(0.0, now - received)
        self.bucket_counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        self._recent.append((now, seconds))

    def restart_requested(self, cause: str, detail: str) -> None:
        """A restart was asked for; it is counted when it happens (``restarted``)."""
        self._requested = (cause, detail)

    def restarted(self, now: float, cause: str | None = None, detail: str = "") -> None:
        """The worker is being replaced, for ``cause`` or the one last requested."""
        if cause is None:
            cause, detail = self._requested or ("reload", "restart requested")
        self._requested = None
        self.restarts_by_cause[cause] += 1
        self.history.append(Restart(now, cause, detail))

    # What readers ask ------------------------------------------------------------

    @property
    def calls(self) -> int:
        return sum(self.outcomes.values())

    @property
    def timed_calls(self) -> int:
        """Calls that ran, whose latency was recorded."""
        return sum(self.bucket_counts)

    def cumulative_buckets(self) -> list[tuple[float, int]]:
        """``(upper bound, calls at most that slow)``, ending with ``(inf, all)``."""
        total, found = 0, []
        for bound, count in zip((*BUCKETS, math.inf), self.bucket_counts, strict=True):
            total += count
            found.append((bound, total))
        return found

    def recent_latencies(self, now: float) -> list[float]:
        """The latencies of calls that ended within the window, sorted."""
        while self._recent and self._recent[0][0] < now - LATENCY_WINDOW:
            self._recent.popleft()
        return sorted(seconds for _, seconds in self._recent)

    def snapshot(self, now: float) -> dict:
        """The numbers for ``_status`` (a part of the module's snapshot)."""
        recent = self.recent_latencies(now)
        return {
            "calls": self.calls,
            "errors": self.calls - self.outcomes[OK],
            "timeouts": self.outcomes[TIMEOUT],
            "outcomes": dict(self.outcomes),
            "latency": {
                "window": LATENCY_WINDOW,
                "calls": len(recent),
                "p50": percentile(recent, 0.50),
                "p99": percentile(recent, 0.99),
            },
            "restart_history": [restart.as_dict() for restart in self.history],
        }
