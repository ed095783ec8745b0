"""Who holds a module's lease, until when, and what the lease requests mean (no I/O).

A client identity (a certificate's CN, else its address) may take an
exclusive lease on a module for a stated time.  While it holds it, calls
from anyone else are answered at once with::

    Busy: laser is leased by 10.0.1.7 until 14:03:12 (540 s left)

unless they asked to wait for it.  The holder renews or releases it, or
lets it expire; an administrator may break it.  Leases live in the server
process: worker restarts and reloads keep them, a server restart ends them.

Clients reach leases through the built-in name ``_lease``: a hello
``{"name": "_lease"}``, an ``ack``, one request, one reply, as the MATLAB
``hwserver`` class's ``com`` does::

    take    [module, seconds]            or [module, seconds, wait]
    renew   [module, seconds]
    release [module]
    show    []                           or [module]
    break   [module]                     (administrators)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from modserver.wire.errors import ReplyError, bad_request
from modserver.wire.messages import positive_seconds

LEASE = "_lease"
OPERATIONS = ("take", "renew", "release", "show", "break")

# The longest lease a module grants unless its config says (max_lease) or
# the server's --max-lease does.
DEFAULT_MAX_LEASE = 3600.0


@dataclass(frozen=True)
class Lease:
    """A module's lease: who holds it, since and until when (reactor seconds)."""

    module: str
    holder: str
    since: float
    until: float

    def left(self, now: float) -> float:
        return max(0.0, self.until - now)


@dataclass(frozen=True)
class LeaseRequest:
    """One request to ``_lease``, checked."""

    operation: str
    module: str | None = None
    seconds: float | None = None
    wait: float = 0.0


def parse_request(function, args) -> LeaseRequest:
    """The lease request ``function(*args)``; BadRequest says what is wrong."""
    usage = (
        "take [module, seconds, (wait)], renew [module, seconds], release [module], "
        "show [(module)], break [module]"
    )
    if function not in OPERATIONS:
        raise bad_request(f"_lease does not know {function!r}; it knows {usage}")
    counts = {"take": (2, 3), "renew": (2, 2), "release": (1, 1), "show": (0, 1), "break": (1, 1)}
    low, high = counts[function]
    if not low <= len(args) <= high:
        raise bad_request(f"_lease {function} takes {_argument_text(low, high)}; usage: {usage}")
    module = args[0] if args else None
    if module is not None and not isinstance(module, str):
        raise bad_request(f"_lease {function}: the module must be a name, not {module!r}")
    seconds = _seconds(args[1], "the lease") if len(args) > 1 else None
    wait = 0.0
    if len(args) > 2 and args[2] is not None and args[2] != 0:
        wait = _seconds(args[2], "the wait")
    return LeaseRequest(function, module, seconds, wait)


def _argument_text(low: int, high: int) -> str:
    if low == high:
        return f"{low} argument{'s' if low != 1 else ''}"
    return f"{low} to {high} arguments"


def _seconds(value, what: str) -> float:
    if not positive_seconds(value):
        raise bad_request(f"{what} needs a positive number of seconds, not {value!r}")
    return float(value)


def local_time(at: float, now: float, wall_now: float) -> str:
    """Reactor time ``at`` as the server's local clock time (HH:MM:SS)."""
    return time.strftime("%H:%M:%S", time.localtime(wall_now + (at - now)))


class ModuleLease:
    """One module's lease: granting, renewing, releasing, breaking, expiring.

    ``max_seconds`` bounds every lease (the module's max_lease, or the
    server's default).  ``wall`` tells the wall-clock time, to say "until
    14:03:12" while the reactor's clock decides.
    """

    def __init__(self, module: str, max_seconds: float = DEFAULT_MAX_LEASE, wall=time.time) -> None:
        self.module = module
        self.max_seconds = max_seconds
        self.wall = wall
        self.lease: Lease | None = None
        self._ended: dict[str, tuple[float, str]] = {}  # holder -> (when, how) of its last lease

    def holder(self, now: float) -> str | None:
        lease = self.current(now)
        return lease.holder if lease is not None else None

    def current(self, now: float) -> Lease | None:
        """The lease in force at ``now`` (an expired one is not)."""
        lease = self.lease
        return lease if lease is not None and now < lease.until else None

    def refusal(self, who: str, now: float) -> ReplyError | None:
        """The Busy answer for ``who`` while someone else holds the lease, or None."""
        lease = self.current(now)
        if lease is None or lease.holder == who:
            return None
        return ReplyError(
            "Busy",
            f"{self.module} is leased by {lease.holder} until {self.until_text(lease, now)} "
            f"({math.ceil(lease.left(now))} s left)",
        )

    def until_text(self, lease: Lease, now: float) -> str:
        return local_time(lease.until, now, self.wall())

    def check_seconds(self, seconds: float) -> None:
        """BadRequest for a lease longer than this module grants."""
        if seconds > self.max_seconds:
            raise bad_request(
                f"{seconds:g} s is longer than {self.module} grants: its longest lease is "
                f"{self.max_seconds:g} s (max_lease in its config entry, or --max-lease)"
            )

    def grant(self, who: str, seconds: float, now: float) -> Lease:
        """``who`` holds the lease for ``seconds`` from ``now`` (the caller checked it may)."""
        self.check_seconds(seconds)
        self.lease = Lease(self.module, who, now, now + seconds)
        self._ended.pop(who, None)
        return self.lease

    def renew(self, who: str, seconds: float, now: float) -> Lease:
        """``who`` extends its lease to ``seconds`` from ``now``."""
        self.check_seconds(seconds)
        lease = self.current(now)
        if lease is None or lease.holder != who:
            raise self._not_held(who, now, "to renew", "take a new one")
        self.lease = Lease(self.module, who, lease.since, now + seconds)
        return self.lease

    def release(self, who: str, now: float) -> Lease:
        """``who`` gives its lease back."""
        lease = self.current(now)
        if lease is not None and lease.holder != who:
            raise self._not_yours(lease, who)
        if lease is None:
            raise self._not_held(who, now, "to release", "there is nothing to give back")
        return self._end("was released", now)

    def break_(self, now: float) -> Lease:
        """An administrator ends the lease, whoever holds it."""
        if self.current(now) is None:
            raise bad_request(f"{self.module} is not leased; there is nothing to break")
        return self._end("was broken", now)

    def expire(self, now: float) -> Lease | None:
        """The lease, if it ran out by ``now`` (it is then gone)."""
        lease = self.lease
        if lease is None or now < lease.until:
            return None
        return self._end("expired", now, at=lease.until)

    def _end(self, how: str, now: float, at: float | None = None) -> Lease:
        lease, self.lease = self.lease, None
        self._ended[lease.holder] = (now if at is None else at, how)
        if len(self._ended) > 100:  # a bounded memory of who lost what
            self._ended.pop(next(iter(self._ended)))
        return lease

    def _not_yours(self, lease: Lease, who: str) -> ReplyError:
        return ReplyError(
            "Forbidden",
            f"{self.module} is leased by {lease.holder}, not by {who}: only its holder may "
            "release it (an administrator may break it)",
        )

    def _not_held(self, who: str, now: float, what: str, advice: str) -> ReplyError:
        ended = self._ended.get(who)
        if ended is not None:
            when, how = ended
            past = f" (it {how} at {local_time(when, now, self.wall())})"
        else:
            past = ""
        return bad_request(f"{who} holds no lease on {self.module} {what}{past}; {advice}")

    def describe(self, now: float) -> dict | None:
        """The lease for ``_status``, ``show`` and the status page, or None."""
        lease = self.current(now)
        if lease is None:
            return None
        return {
            "module": self.module,
            "holder": lease.holder,
            "until": self.until_text(lease, now),
            "until_epoch": round(self.wall() + lease.left(now), 3),
            "seconds_left": round(lease.left(now), 3),
            "held_for": round(now - lease.since, 3),
        }
