"""Lifecycle decisions for a module's worker, free of I/O.

The supervisor (supervisor.py) is the Twisted glue around these: it feeds
them what happened and carries out what they decide.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class State(enum.Enum):
    """Where a module's worker is in its life."""

    STOPPED = "stopped"  # no process and none wanted
    STARTING = "starting"  # spawned, importing the module and making the instance
    READY = "ready"  # idle, waiting for a call
    BUSY = "busy"  # a call is in flight
    STOPPING = "stopping"  # told to stop (or killed), waiting for it to exit
    BACKOFF = "backoff"  # died unexpectedly, waiting to be restarted
    FAILED = "failed"  # could not load; waits for a change or a reload


TRANSITIONS = {
    State.STOPPED: {State.STARTING},
    State.STARTING: {State.READY, State.FAILED, State.BACKOFF, State.STOPPING},
    State.READY: {State.BUSY, State.STOPPING, State.BACKOFF},
    State.BUSY: {State.READY, State.STOPPING, State.BACKOFF},
    State.STOPPING: {State.STOPPED, State.STARTING},
    State.BACKOFF: {State.STARTING, State.STOPPED},
    State.FAILED: {State.STARTING, State.STOPPED},
}


def check_transition(old: State, new: State) -> None:
    """Raise AssertionError for a transition the lifecycle does not have."""
    if new not in TRANSITIONS[old]:
        raise AssertionError(f"illegal lifecycle transition {old.value} -> {new.value}")


@dataclass
class RestartPolicy:
    """How long to wait before restarting a worker that died unexpectedly.

    It tells two kinds of death apart:

    - a **crash loop**: the worker died while loading, or within ``settle``
      seconds of becoming ready, or before it answered any call.  These
      restarts back off: at once, then 1, 2, 4 ... s up to ``cap``.
    - a worker that **served and then died** (it answered calls for at least
      ``settle`` seconds; a driver crashed on one call, someone killed it):
      restarted at once, up to ``burst`` times in ``window`` seconds.  Past
      that it backs off like a crash loop (at least ``initial``), so a module
      that dies on every call still slows down.

    A worker that stayed up ``stable`` seconds, or served and was restarted
    at once, starts the crash-loop sequence over.
    It never gives up: a module whose instrument was unplugged comes back
    once it is plugged in again.
    """

    initial: float = 1.0
    cap: float = 30.0
    stable: float = 10.0
    settle: float = 1.0
    burst: int = 10
    window: float = 60.0
    crashes: int = 0  # deaths in a row since the worker last stayed up ``stable`` s

    def __post_init__(self) -> None:
        self._ladder = 0  # crash-loop deaths in a row: the backoff step
        self._quick: list[float] = []  # when served workers were restarted at once

    def next_delay(self, now: float, uptime: float | None, served: bool) -> float:
        """Record a death at ``now``; return the seconds to wait before restarting.

        ``uptime``: seconds since the worker became ready (None: it died
        loading); ``served``: it answered at least one call.
        """
        if uptime is not None and uptime >= self.stable:
            self.crashes = self._ladder = 0
        self.crashes += 1
        self._quick = [t for t in self._quick if now - t < self.window]
        settled = served and uptime is not None and uptime >= self.settle
        if settled and len(self._quick) < self.burst:
            self._quick.append(now)
            self._ladder = 0  # it worked: a later crash loop starts from the bottom
            return 0.0
        self._ladder += 1
        delay = 0.0 if self._ladder == 1 else self.initial * 2 ** (self._ladder - 2)
        return min(self.cap, max(delay, self.initial) if settled else delay)
