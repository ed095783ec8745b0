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
class Backoff:
    """Delays before restarting a worker that died unexpectedly.

    The first restart is immediate; each further death in a row doubles the
    delay from ``initial`` up to ``cap``.  A worker that stayed up for
    ``stable`` seconds starts the sequence over.  It never gives up: a lab
    module whose instrument was unplugged comes back when it is plugged in.
    """

    initial: float = 1.0
    cap: float = 30.0
    stable: float = 10.0
    deaths: int = 0

    def next_delay(self, uptime: float) -> float:
        """Record a death after ``uptime`` seconds; return the delay to wait."""
        if uptime >= self.stable:
            self.deaths = 0
        self.deaths += 1
        if self.deaths == 1:
            return 0.0
        return min(self.cap, self.initial * 2 ** (self.deaths - 2))
