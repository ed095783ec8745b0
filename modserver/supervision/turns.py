"""Whose request a module serves next, and how long a session may keep it (no I/O).

Each module serves its waiting requests in turns: round-robin across
client identities (a certificate's CN where there is one, else the
address), in arrival order within one identity.  The identity served
least recently goes next, and one with nothing waiting counts as never
served, so a request from a client with nothing queued runs right after
the current call however much another client has queued.

A keep-alive session keeps its module between its own requests, but
while other clients wait it keeps it for at most ``SessionHold.limit``
seconds; then its requests take their turns like everyone else's.

``order="arrival"`` serves in arrival order across identities (as
ModuleServer did); it is kept to measure what turns cost and change.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator

TURNS = "turns"
ARRIVAL = "arrival"
ORDERS = (TURNS, ARRIVAL)

# Seconds a keep-alive session keeps its module while others wait.
DEFAULT_KEEP_ALIVE_HOLD = 5.0


def owner(call) -> str:
    """The identity whose turn ``call`` waits for."""
    return getattr(call, "owner", "") or call.client


class Turns:
    """Waiting calls by identity; ``take`` gives the next one in turn."""

    def __init__(self, order: str = TURNS) -> None:
        self.order = order
        self._queues: dict[str, collections.deque] = {}
        self._last_turn: dict[str, int] = {}  # identities with calls still waiting
        self._latest = ""  # whose call was taken last (it may be running now)
        self._arrivals = 0
        self._turns = 0
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator:
        """The waiting calls in arrival order."""
        entries = sorted(entry for queue in self._queues.values() for entry in queue)
        return (call for _, call in entries)

    def add(self, call) -> None:
        self._arrivals += 1
        self._queues.setdefault(owner(call), collections.deque()).append((self._arrivals, call))
        self._count += 1

    def served_at_once(self, who: str) -> None:
        """A call of ``who`` ran without waiting (nothing waited): the turns move on
        exactly as if it had been added and taken at once."""
        self._arrivals += 1
        self._turns += 1
        self._latest = who
        self._last_turn.pop(who, None)

    def take(self, eligible: Callable[[str], bool] | None = None):
        """The next call in turn among identities ``eligible`` accepts; None if none waits."""
        best, best_key = None, None
        for who, queue in self._queues.items():
            if eligible is not None and not eligible(who):
                continue
            key = (self._turn_of(who), queue[0][0])
            if best_key is None or key < best_key:
                best, best_key = who, key
        if best is None:
            return None
        return self._pop(best)

    def _turn_of(self, who: str) -> int:
        if self.order == ARRIVAL:
            return 0
        if who == self._latest:
            return self._turns
        return self._last_turn.get(who, 0)

    def _pop(self, who: str):
        queue = self._queues[who]
        _, call = queue.popleft()
        self._count -= 1
        self._turns += 1
        self._latest = who
        if queue:
            self._last_turn[who] = self._turns
        else:
            del self._queues[who]
            self._last_turn.pop(who, None)
        return call

    def remove(self, which: Callable) -> list:
        """Take out the calls ``which`` picks (in arrival order), keeping the others' turns."""
        taken = []
        for who in list(self._queues):
            queue = self._queues[who]
            kept = collections.deque(entry for entry in queue if not which(entry[1]))
            if len(kept) == len(queue):
                continue
            taken.extend(entry for entry in queue if which(entry[1]))
            self._count -= len(queue) - len(kept)
            if kept:
                self._queues[who] = kept
            else:
                del self._queues[who]
                self._last_turn.pop(who, None)
        return [call for _, call in sorted(taken)]

    def by_identity(self) -> dict[str, int]:
        """How many calls each identity has waiting."""
        return {who: len(queue) for who, queue in self._queues.items()}


class SessionHold:
    """How long a keep-alive session may keep its module while others wait.

    ``limit`` 0 keeps it as long as the session calls (ModuleServer's way).
    The clock starts when another client begins to wait, and stops when no
    one else waits.
    """

    def __init__(self, limit: float = DEFAULT_KEEP_ALIVE_HOLD) -> None:
        self.limit = limit
        self._since: float | None = None

    def keeps(self, now: float, others_waiting: bool) -> bool:
        """May the session keep the module now?"""
        if not others_waiting:
            self._since = None
            return True
        if self.limit <= 0:
            return True
        if self._since is None:
            self._since = now
        return now - self._since < self.limit

    def deadline(self) -> float | None:
        """When the session must give way, if others wait and there is a limit."""
        if self._since is None or self.limit <= 0:
            return None
        return self._since + self.limit

    def reset(self) -> None:
        """The session ended or gave way."""
        self._since = None
