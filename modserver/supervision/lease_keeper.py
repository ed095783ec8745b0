"""A module's lease in time: expiry on the clock, takers waiting, grants after a call.

``leases.ModuleLease`` decides who holds the lease; ``LeaseKeeper`` is its
thin Twisted glue: a timer ends the lease when it runs out, takers who
said they would wait get it in turn when it ends, and a grant made while
another client's call runs is answered once that call ends.  The call
flow (call_flow.CallFlow) stops serving the others while a lease is held.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.python.failure import Failure

from modserver.supervision.leases import Lease, ModuleLease
from modserver.wire.errors import ReplyError


class LeaseKeeper:
    """Takes, renews, releases, breaks and expires one module's lease.

    ``flow`` answers ``lease_granted(who, now)`` (True while another
    client's call still runs), ``advance()`` and ``stop_reason``.
    """

    def __init__(self, leases: ModuleLease, flow, reactor, log) -> None:
        self.leases = leases
        self.flow = flow
        self.reactor = reactor
        self.log = log
        self._timer = None
        # Takers waiting for another's lease to end: [who, seconds, Deferred, timer].
        self._waiters: list[list] = []
        # Takers granted the lease while another's call runs: answered once it ends.
        self._granted: list[tuple[defer.Deferred, str]] = []

    @property
    def module(self) -> str:
        return self.leases.module

    def waiting(self) -> list[str]:
        """Who waits to take the lease, in order."""
        return [entry[0] for entry in self._waiters]

    def take(self, who: str, seconds: float, wait: float = 0.0) -> defer.Deferred:
        """``who`` takes the lease for ``seconds``.

        Fires with the lease (ModuleLease.describe) once it is granted: at
        once, or when another client's call in flight ends, or, waiting up
        to ``wait`` seconds, when another's lease ends.  Fails with a
        ReplyError (Busy while another holds it and ``wait`` is 0).
        """
        now = self.reactor.seconds()
        try:
            self.leases.check_seconds(seconds)
        except ReplyError as err:
            return defer.fail(err)
        self._expired_by(now)
        holder = self.leases.holder(now)
        stopped = self.flow.stop_reason
        if holder == who:
            return defer.succeed(self.renew(who, seconds))
        if holder is None and stopped is None:
            return self._grant(who, seconds)
        if wait <= 0 or stopped is not None:
            return defer.fail(stopped or self.leases.refusal(who, now))
        entry = [who, seconds, None, None]
        entry[2] = defer.Deferred(lambda _: self._withdraw(entry))
        entry[3] = self.reactor.callLater(wait, self._wait_over, entry, wait)
        self._waiters.append(entry)
        return entry[2]

    def renew(self, who: str, seconds: float) -> dict:
        """``who`` extends its lease to ``seconds`` from now; ReplyError if it cannot."""
        now = self.reactor.seconds()
        self._expired_by(now)
        self.leases.renew(who, seconds, now)
        self._set_timer()
        self.log.info(
            "lease renewed by {who} for {seconds:g} s",
            module=self.module,
            who=who,
            seconds=seconds,
        )
        return self.leases.describe(now)

    def release(self, who: str) -> None:
        """``who`` gives its lease back; ReplyError if it holds none."""
        now = self.reactor.seconds()
        self._expired_by(now)
        self._ended(self.leases.release(who, now), f"released by {who}")

    def break_(self, by: str) -> str:
        """An administrator ends the lease; returns who held it (ReplyError if none)."""
        now = self.reactor.seconds()
        self._expired_by(now)
        lease = self.leases.break_(now)
        self._ended(lease, f"broken by {by}")
        return lease.holder

    def stop(self, reason: ReplyError) -> None:
        """The module stops for good: takers waiting get ``reason``."""
        self._cancel_timer()
        waiters, self._waiters = self._waiters, []
        for _, _, waiter, timer in waiters:
            if timer.active():
                timer.cancel()
            _settle(waiter, reason)

    def answer_granted(self) -> None:
        """The call that ran when leases were granted has ended: say they are."""
        granted, self._granted = self._granted, []
        now = self.reactor.seconds()
        for waiter, who in granted:
            lease = self.leases.describe(now)
            if lease is not None and lease["holder"] == who:
                _settle(waiter, lease)
            else:
                _settle(waiter, self.leases.refusal(who, now) or _lost(self.module, who))

    @property
    def granting(self) -> bool:
        """Are grants waiting for the current call to end?"""
        return bool(self._granted)

    def _grant(self, who: str, seconds: float) -> defer.Deferred:
        now = self.reactor.seconds()
        self.leases.grant(who, seconds, now)
        self._set_timer()
        self.log.info(
            "lease taken by {who} for {seconds:g} s",
            module=self.module,
            who=who,
            seconds=seconds,
        )
        granted = defer.Deferred()
        if self.flow.lease_granted(who, now):
            self._granted.append((granted, who))
        else:
            granted.callback(self.leases.describe(now))
        self.flow.advance()
        return granted

    def _set_timer(self) -> None:
        self._cancel_timer()
        lease = self.leases.lease
        if lease is not None:
            delay = max(0.0, lease.until - self.reactor.seconds())
            self._timer = self.reactor.callLater(delay, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self._expired_by(self.reactor.seconds())

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _expired_by(self, now: float) -> None:
        lease = self.leases.expire(now)
        if lease is not None:
            self._ended(lease, "expired (lost)")

    def _ended(self, lease: Lease, how: str) -> None:
        """The lease is gone: the first taker waiting gets it, or the line moves."""
        self._cancel_timer()
        self.log.info("lease of {holder} {how}", module=self.module, holder=lease.holder, how=how)
        if self._waiters:
            who, seconds, waiter, timer = self._waiters.pop(0)
            if timer.active():
                timer.cancel()
            self._grant(who, seconds).addBoth(lambda result: _settle(waiter, result))
            return
        self.flow.advance()

    def _wait_over(self, entry: list, wait: float) -> None:
        if entry in self._waiters:
            self._waiters.remove(entry)
        who, _, waiter, _ = entry
        refusal = self.leases.refusal(who, self.reactor.seconds())
        reason = refusal.message if refusal is not None else f"{self.module} is leased"
        _settle(waiter, ReplyError("Busy", f"{reason}; waited {wait:g} s for the lease"))

    def _withdraw(self, entry: list) -> None:
        """A waiting taker left (its Deferred was cancelled)."""
        if entry in self._waiters:
            self._waiters.remove(entry)
            if entry[3].active():
                entry[3].cancel()


def _settle(waiter: defer.Deferred, result) -> None:
    """Fire ``waiter`` with ``result`` (an error fails it) unless its taker left."""
    if waiter.called:
        return
    if isinstance(result, (Exception, Failure)):
        waiter.errback(result)
    else:
        waiter.callback(result)


def _lost(module: str, who: str) -> ReplyError:
    return ReplyError(
        "Busy", f"the lease on {module} that {who} was granted ended before it could be used"
    )
