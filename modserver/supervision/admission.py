"""Whether a request may wait for its module, and for how long (no I/O).

Every request gets exactly one reply in bounded time.  The rules here
decide which requests may wait and answer the rest at once:

- a module's queue holds at most ``queue_limit`` waiting requests, and each
  client (its address, or its certificate's CN) at most ``queue_share`` of
  them, so one client flooding an instrument never locks out the others;
  they are served in turns across clients (modserver.turns);
- a request waits at most ``queue_wait`` seconds for its turn;
- a module restarting after crashes holds requests only for a start due
  within ``HOLD`` seconds, and answers the rest at once;
- the server holds at most a budget of request bytes in memory (lines being
  received and requests waiting), so floods of large requests cannot
  exhaust it;
- connections are limited in total and per address.

The supervisor, the protocol and the factory ask these; times are passed in.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from modserver.supervision.turns import TURNS, Turns, owner
from modserver.wire.errors import ReplyError

# A module in backoff holds requests for a start due within this many seconds.
HOLD = 1.0

DEFAULT_QUEUE_WAIT = 60.0
MIB = 1024 * 1024


class Waiting(Protocol):
    """What the line needs of a call: who sent it and when it arrived."""

    client: str
    received: float | None


@dataclass(frozen=True)
class QueueRules:
    """A module's queue limits, from its config entry."""

    limit: int = 100  # requests waiting behind the one running
    share: int | None = None  # per client; None: all but a quarter of the limit
    wait: float = DEFAULT_QUEUE_WAIT  # seconds a request may wait for its turn
    order: str = TURNS  # turns across identities, or arrival order (turns.ORDERS)

    @property
    def client_share(self) -> int:
        """How many waiting requests one client may have.

        By default a client may fill the queue but for a quarter of it (at
        least one place), which stays free for the others.
        """
        if self.share is not None:
            return self.share
        if self.limit <= 1:
            return self.limit
        return self.limit - max(1, self.limit // 4)


class WaitingLine:
    """A module's waiting requests, served in turns (turns.Turns), with its admission rules.

    The calls of the keep-alive session holding the module wait apart
    (``first``): they go before everyone else's until the session gives way.
    """

    def __init__(self, module: str, rules: QueueRules) -> None:
        self.module = module
        self._turns = Turns(rules.order)
        self.rules = rules
        self._first: collections.deque = collections.deque()
        self._per_client: collections.Counter[str] = collections.Counter()

    @property
    def rules(self) -> QueueRules:
        return self._rules

    @rules.setter
    def rules(self, rules: QueueRules) -> None:
        self._rules = rules
        self._turns.order = rules.order

    def __len__(self) -> int:
        return len(self._first) + len(self._turns)

    def empty(self) -> bool:
        """True when no call waits (every waiting call counts in its client's share)."""
        return not self._per_client

    def __iter__(self) -> Iterator:
        yield from self._first
        yield from self._turns

    def refusal(self, client: str) -> ReplyError | None:
        """Why a new request from ``client`` may not wait, or None if it may."""
        rules = self.rules
        if len(self) >= rules.limit:
            return ReplyError(
                "Busy",
                f"{self.module} already has {len(self)} requests waiting "
                f"(queue_limit {rules.limit}); try again later",
            )
        share = rules.client_share
        if self._per_client[client] >= share:
            return ReplyError(
                "Busy",
                f"{client} already has {self._per_client[client]} requests waiting for "
                f"{self.module}, its share of the queue (queue_share {share}); "
                "wait for their replies",
            )
        return None

    def add(self, call: Waiting, first: bool = False) -> None:
        """Queue ``call`` (``first``: ahead of the rest, for the session holding the module)."""
        if first:
            self._first.append(call)
        else:
            self._turns.add(call)
        self._per_client[owner(call)] += 1

    def next_call(
        self,
        holder: Callable[[Waiting], bool] | None = None,
        eligible: Callable[[str], bool] | None = None,
    ):
        """The next call: the holding session's if ``holder`` (when given) accepts
        it, else None; without a holder, the next in turn among the identities
        ``eligible`` accepts (all when not given)."""
        if holder is not None:
            if not self._first or not holder(self._first[0]):
                return None
            return self._taken(self._first.popleft())
        call = self._turns.take(eligible)
        return self._taken(call) if call is not None else None

    def served_at_once(self, call: Waiting, first: bool = False) -> None:
        """``call`` runs without waiting while nothing else waits: the line (its
        turns, its shares) ends as ``add`` then ``next_call`` would leave it, without
        queuing it (the keep-alive call's fast path; ``first``: the holding session's)."""
        if not first:
            self._turns.served_at_once(owner(call))

    def waiting_in_turn(self) -> int:
        """How many calls wait for their turns (those of a holding session aside)."""
        return len(self._turns)

    def give_way(self) -> None:
        """The holding session gave way: its waiting calls take their turns."""
        while self._first:
            self._turns.add(self._first.popleft())

    def remove(self, which: Callable[[Waiting], bool]) -> list:
        """Take out the calls ``which`` picks, keeping the others' order."""
        taken = [call for call in self._first if which(call)]
        if taken:
            self._first = collections.deque(c for c in self._first if not which(c))
        taken.extend(self._turns.remove(which))
        for call in taken:
            self._taken(call)
        return taken

    def take_all(self) -> list:
        return self.remove(lambda call: True)

    def overdue(self, now: float) -> list:
        """Take out the calls that have waited longer than they may."""
        return self.remove(lambda call: _waited(call, now) >= self.wait_limit(call))

    def wait_limit(self, call: Waiting) -> float:
        """How long ``call`` may wait: the queue wait limit, or less if it asked."""
        own = getattr(call, "wait_limit", None)
        return self.rules.wait if own is None else min(own, self.rules.wait)

    def next_deadline(self) -> float | None:
        """When the first waiting call runs out of time, or None if none waits."""
        times = [
            call.received + self.wait_limit(call) for call in self if call.received is not None
        ]
        return min(times) if times else None

    def by_identity(self) -> dict[str, int]:
        """How many calls each identity has waiting."""
        return dict(self._per_client)

    def overdue_error(self, call: Waiting, now: float) -> ReplyError:
        waited = _waited(call, now)
        return ReplyError(
            "Unavailable",
            f"{self.module} did not get to this request within {waited:.3g} s "
            f"(its queue_wait limit is {self.rules.wait:g} s); try again later",
        )

    def _taken(self, call):
        who = owner(call)
        self._per_client[who] -= 1
        if not self._per_client[who]:
            del self._per_client[who]
        return call


def _waited(call: Waiting, now: float) -> float:
    return now - call.received if call.received is not None else 0.0


def backoff_refusal(
    module: str, crashes: int, next_try_in: float, detail: str = "", hold: float = HOLD
) -> ReplyError | None:
    """The answer for a request to a module restarting after crashes, or None to hold it."""
    if next_try_in <= hold:
        return None
    crashed = "1 crash" if crashes == 1 else f"{crashes} crashes"
    return ReplyError(
        "Unavailable",
        f"{module} is restarting after {crashed}; next try in {next_try_in:.1f} s",
        detail,
    )


class ByteBudget:
    """Request bytes the server holds: lines being received and requests waiting."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> bool:
        """Hold ``size`` more bytes if the budget allows; False (nothing held) if not."""
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give_back(self, size: int) -> None:
        held = self.held - size
        self.held = held if held > 0 else 0

    def refusal(self) -> ReplyError:
        return ReplyError(
            "Busy",
            f"the server already holds {_size(self.held)} of requests in memory "
            f"(its budget is {_size(self.limit)}, --max-held-requests); try again later",
        )


def _size(count: int) -> str:
    return f"{count / MIB:.0f} MiB" if count >= MIB else f"{count / 1024:.0f} KiB"


class ConnectionLimits:
    """How many connections the server takes, in total and from one address."""

    def __init__(self, total: int, per_address: int) -> None:
        self.total = total
        self.per_address = per_address
        self.open = 0
        self.accepted = 0  # since the server started
        self.refusing = 0  # refused connections being answered (not counted in ``open``)
        self._by_address: collections.Counter[str] = collections.Counter()

    def refusal(self, address: str) -> ReplyError | None:
        """Why a new connection from ``address`` is refused, or None to take it."""
        if self.open >= self.total:
            return ReplyError(
                "Busy",
                f"the server has {self.open} connections open, its limit "
                "(--max-connections); try again later",
            )
        if self._by_address[address] >= self.per_address:
            return ReplyError(
                "Busy",
                f"{address} has {self._by_address[address]} connections open, the limit "
                "for one address (--max-connections-per-address); close some first",
            )
        return None

    def opened(self, address: str) -> None:
        self.open += 1
        self.accepted += 1
        self._by_address[address] += 1

    def closed(self, address: str) -> None:
        self.open = max(0, self.open - 1)
        self._by_address[address] -= 1
        if self._by_address[address] <= 0:
            del self._by_address[address]

    def from_address(self, address: str) -> int:
        return self._by_address[address]


# Descriptors kept free for what is not a client connection: the server's
# own (standard streams, the reactor, listening sockets, log files, the
# config and module files being read), connections being refused (each
# answered, then closed), and each worker's pipes (three kept, six more
# while one starts).
FD_RESERVE_BASE = 32
REFUSING_AT_ONCE = 32
FD_RESERVE_PER_MODULE = 8
MAX_CONNECTIONS_CEILING = 10000


def connection_limit(fd_limit: int | None, modules: int) -> int:
    """The default --max-connections for a file limit and a number of modules."""
    if fd_limit is None:  # Windows: no per-process descriptor limit to respect
        return MAX_CONNECTIONS_CEILING
    reserve = FD_RESERVE_BASE + REFUSING_AT_ONCE + FD_RESERVE_PER_MODULE * modules
    return max(8, min(MAX_CONNECTIONS_CEILING, fd_limit - reserve))
