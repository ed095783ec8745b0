"""The flow of one module's calls: who waits, whose turn it is, dispatch, deadlines, replies.

``CallFlow`` takes the calls clients submit.  It asks the admission rules
(admission.WaitingLine) whether a call may wait and the turn rules
(turns) which one runs next and how long a keep-alive session keeps the
module; while a client holds the module's lease (lease_keeper), only its
calls run.  It sends one call at a time to the worker that
worker_life.WorkerLife keeps, watches the call's deadlines, and relays
the reply to the client (calls.ReplyRelay).  The reactor is injected.
"""

from __future__ import annotations

import json

from twisted.logger import LogLevel

from modserver.server import logs
from modserver.server.config import ModuleSpec
from modserver.supervision.admission import QueueRules, WaitingLine
from modserver.supervision.calls import Call, CallSink, ReplyRelay, call_deadlines
from modserver.supervision.lease_keeper import LeaseKeeper
from modserver.supervision.leases import ModuleLease
from modserver.supervision.lifecycle import State
from modserver.supervision.stats import ModuleStats
from modserver.supervision.turns import SessionHold, owner
from modserver.wire import channel
from modserver.wire.errors import ReplyError

# A call's access line waits for the next call to go to the worker, and is
# logged then, while the worker works: on a keep-alive loop, formatting and
# writing it (a third of the server's time a call) is off the client's path.
# With no next call it is logged this many seconds after the reply.
ACCESS_DELAY = 0.05


def queue_rules(spec: ModuleSpec) -> QueueRules:
    return QueueRules(
        limit=spec.queue_limit, share=spec.queue_share, wait=spec.queue_wait, order=spec.order
    )


class CallFlow:
    """One module's calls, from submission to reply.

    ``life`` (worker_life.WorkerLife) holds the worker: its state, whether
    a restart or stop is pending, and the channel calls are sent on.
    """

    def __init__(self, spec: ModuleSpec, settings, reactor, stats: ModuleStats, life) -> None:
        self.name = spec.name  # a config change never renames a module
        self.reactor = reactor
        self.settings = settings
        self.stats = stats
        self.life = life
        self.log = logs.for_module(spec.name)
        self.access = logs.for_module(spec.name, "access") if settings.access_log else None
        self.line = WaitingLine(spec.name, queue_rules(spec))
        self.hold = SessionHold(spec.keep_alive_hold)
        self.leases = ModuleLease(spec.name, spec.max_lease or settings.max_lease)
        self.lease_keeper = LeaseKeeper(self.leases, self, reactor, self.log)
        self.spec = spec
        self.current: Call | None = None
        self.holder: CallSink | None = None  # the keep-alive session holding the module
        self.holder_owner = ""  # its identity
        self.calls_served = 0
        self._request_ids = 0
        self._timers: dict[str, object] = {}
        self._access_pending: list[dict] = []  # access lines not yet logged (see ACCESS_DELAY)
        self._access_timer = None
        self._relay = ReplyRelay(spec.name, self.log, peek_errors=self.access is not None)

    @property
    def spec(self) -> ModuleSpec:
        return self._spec

    @spec.setter
    def spec(self, spec: ModuleSpec) -> None:
        """A new config entry: its queue rules, hold limit and lease limit apply at once."""
        self._spec = spec
        self.line.rules = queue_rules(spec)
        self.hold.limit = spec.keep_alive_hold
        self.leases.max_seconds = spec.max_lease or self.settings.max_lease

    @property
    def stop_reason(self) -> ReplyError | None:
        return self.life.stop_reason

    @property
    def busy(self) -> bool:
        """A call runs or a session holds the module."""
        return self.current is not None or self.holder is not None

    # Calls in -----------------------------------------------------------

    def submit(self, call: Call) -> None:
        """Queue a call; it is answered now if the module cannot take it."""
        call.received = self.reactor.seconds()
        if self._runs_at_once(call):
            # The common case (an idle module nobody else waits for, no lease):
            # straight to the worker, leaving the line as queuing it would have.
            self.line.served_at_once(call, first=call.sink is self.holder)
            self._dispatch(call, call.received)  # it waited for nothing
            return
        if self.stop_reason is not None:  # stopped for good (one not yet started: calls wait)
            self._fail_call(call, self.stop_reason)
            return
        refusal = self.life.hello_error()
        if refusal is not None:
            self._fail_call(call, refusal)
            return
        refusal = None  # (without a lease, the common case, nothing more is asked)
        if self.leases.lease is not None:
            refusal = self.leases.refusal(owner(call), call.received)
        if refusal is not None and not call.lease_wait:
            self._fail_call(call, refusal)
            return
        if call.sink is self.holder:
            self.line.add(call, first=True)
        elif refusal is None and self._can_run_now(call):
            self.line.add(call)
        else:
            refusal = self.line.refusal(owner(call))
            if refusal is not None:
                self._fail_call(call, refusal)
                return
            self.line.add(call)
            self._watch_queue()
            self._watch_hold()
        self.advance()

    def _can_run_now(self, call: Call) -> bool:
        """True when ``call`` would go to the worker at once (it never waits): the
        module is ready and idle, no restart is pending, nothing waits, and no
        other client's session holds the module."""
        return (
            self.life.state is State.READY
            and self.life.pending is None
            and self.line.empty()
            and self.holder in (None, call.sink)
        )

    def _runs_at_once(self, call: Call) -> bool:
        """Would ``submit`` queue ``call`` and ``advance`` dispatch it at once, with
        nothing else to do on the way?  It can run now, the module is not being
        stopped, and no lease is held or being granted."""
        return (
            self._can_run_now(call)
            and self.stop_reason is None
            and self.leases.lease is None
            and not self.lease_keeper.granting
        )

    def release(self, sink: CallSink) -> None:
        """The client ``sink`` is gone: drop its waiting calls and its hold."""
        for call in self.line.remove(lambda c: c.sink is sink):
            call.sent()
            self._log_access(call, "dropped (the client left)")
        if self.holder is sink:
            self._drop_holder()
            self.advance()

    def advance(self) -> None:
        """Start the next piece of work if the module is idle."""
        if self.lease_keeper.granting and self.current is None:
            self.lease_keeper.answer_granted()
        if self.life.state is not State.READY:
            return
        if self.life.pending is not None and self.holder is None:
            self.life.begin_stop()
            return
        if self.line.empty():
            return  # (_next_call would find nothing, whoever holds the module or its lease)
        call = self._next_call()
        if call is not None:
            self._dispatch(call)

    def _next_call(self) -> Call | None:
        if self.holder is not None:
            return self.line.next_call(lambda call: call.sink is self.holder)
        if self.leases.lease is None:
            return self.line.next_call()
        holder = self.leases.holder(self.reactor.seconds())
        if holder is None:
            return self.line.next_call()
        return self.line.next_call(eligible=lambda who: who == holder)

    def _dispatch(self, call: Call, now: float | None = None) -> None:
        self._request_ids = (self._request_ids + 1) & 0xFFFFFFFF
        call.request_id = self._request_ids
        call.started = self.reactor.seconds() if now is None else now
        self.current = call
        self.life.busy()
        meta = call.meta or json.dumps({"client": call.client_ip}).encode("utf-8") + b"\n"
        flags = channel.PLAIN if call.plain else 0
        if call.binary:
            flags |= channel.BINARY
        if call.segments:  # the worker finds where the request ends, and the segments start
            described = {"client": call.client_ip, "request_bytes": len(call.request)}
            meta = json.dumps(described).encode("utf-8") + b"\n"
        length = len(meta) + len(call.request)
        if call.segments:
            length += sum(map(len, call.segments))
        head = channel.header(channel.CALL, length, flags, call.request_id)
        self.life.send(head, meta, call.request, *call.segments)
        if self._access_pending:  # the last call's line, logged while the worker works
            self._flush_access()
        call.segments = ()  # the transport holds them until written; the call need not
        call.sent()
        module_timeout = self._spec.timeout
        if call.timeout is None and module_timeout is None:
            return  # no deadline (call_deadlines would say (None, None))
        kill_after, give_up_after = call_deadlines(call, module_timeout)
        if kill_after is not None:
            self._timers["call"] = self.reactor.callLater(
                kill_after, self._call_timed_out, call, kill_after
            )
        if give_up_after is not None:
            self._timers["give_up"] = self.reactor.callLater(
                give_up_after, self._client_gave_up, call, give_up_after
            )

    # Deadlines ------------------------------------------------------------

    def _client_gave_up(self, call: Call, timeout: float) -> None:
        """A client's own timeout ran out: answer it; the worker goes on with the call."""
        del self._timers["give_up"]
        if call is not self.current or call.answered:
            return
        self._fail_call(
            call,
            ReplyError(
                "Timeout",
                f"{self.name}.{call.function}() did not answer within {timeout:g} s "
                "(the request's timeout); it goes on running in the worker, because only "
                "an administrator's timeout (--admin-allow) may restart a worker",
            ),
        )
        call.abandoned = True

    def _call_timed_out(self, call: Call, timeout: float) -> None:
        del self._timers["call"]
        self._cancel_timer("give_up")
        if call is not self.current or (call.answered and not call.abandoned):
            return
        self.current = None
        self._drop_holder()
        self._fail_call(
            call,
            ReplyError(
                "Timeout",
                f"{self.name}.{call.function} did not answer within {timeout:g} s; "
                "its worker was killed and is being restarted",
            ),
        )
        self.life.kill_for_timeout(call.function, timeout)

    def _watch_queue(self) -> None:
        """Have a timer answer calls that wait longer than they may."""
        timer = self._timers.get("queue")
        deadline = self.line.next_deadline()
        if deadline is None or (timer is not None and timer.getTime() <= deadline):
            return
        delay = max(0.0, deadline - self.reactor.seconds())
        if timer is not None:
            timer.reset(delay)
        else:
            self._timers["queue"] = self.reactor.callLater(delay, self._queue_overdue)

    def _queue_overdue(self) -> None:
        del self._timers["queue"]
        now = self.reactor.seconds()
        for call in self.line.overdue(now):
            leased = self.leases.refusal(owner(call), now)
            self._fail_call(call, leased or self.line.overdue_error(call, now))
        self._watch_queue()

    # Keep-alive sessions ------------------------------------------------

    def _others_waiting(self) -> bool:
        """Does anyone but the session holding the module wait for it?"""
        return self.line.waiting_in_turn() > 0

    def _watch_hold(self) -> None:
        """While others wait, the holding session keeps the module for a bounded time."""
        if self.holder is None or "hold" in self._timers or not self._others_waiting():
            return
        now = self.reactor.seconds()
        self.hold.keeps(now, True)  # the clock starts when others begin to wait
        deadline = self.hold.deadline()
        if deadline is not None:
            self._timers["hold"] = self.reactor.callLater(max(0.0, deadline - now), self._hold_over)

    def _hold_over(self) -> None:
        del self._timers["hold"]
        if self.holder is None or self.current is not None:
            return  # the session's call in flight decides when it ends
        if self.hold.keeps(self.reactor.seconds(), self._others_waiting()):
            self._watch_hold()
            return
        self._log_giving_way(self.holder_owner)
        self._drop_holder()
        self.advance()

    def _log_giving_way(self, who: str) -> None:
        self.log.info(
            "{client}'s keep-alive session gives way to others after {limit:g} s",
            module=self.name,
            client=who,
            limit=self.hold.limit,
        )

    def _drop_holder(self) -> None:
        """No session holds the module now: its waiting calls take their turns."""
        self.holder, self.holder_owner = None, ""
        self.hold.reset()
        self.line.give_way()
        self._cancel_timer("hold")

    # Leases ---------------------------------------------------------------

    def lease_granted(self, who: str, now: float) -> bool:
        """``who`` now holds the lease: the others' waiting calls get Busy (unless they
        asked to wait) and another's session lets go.  True while another's call runs."""
        if self.holder is not None and self.holder_owner != who:
            self._drop_holder()
        for call in self.line.remove(lambda c: owner(c) != who and not c.lease_wait):
            self._fail_call(call, self.leases.refusal(owner(call), now))
        current = self.current
        return current is not None and owner(current) != who and not current.answered

    # Replies ----------------------------------------------------------------

    def reply_started(self, proc, flags: int, request_id: int, length: int) -> None:
        call = self.current
        if proc is not self.life.process or call is None or call.request_id != request_id:
            self.log.warn("dropping an unexpected reply from {module}'s worker", module=self.name)
            self._relay.drop()
            return
        if self._timers:
            self._cancel_timer("call")
            self._cancel_timer("give_up")
        self._relay.start(call, bool(flags & channel.ERROR), length, proc)

    def reply_data(self, data: bytes) -> None:
        self._relay.data(data)

    def reply_ended(self) -> None:
        call = self._relay.finish()
        if call is None:
            return
        error = self._relay.error
        self.current = None
        self.calls_served += 1
        now = self.reactor.seconds()
        self.stats.call_answered(error, call.abandoned, call.received, now)
        outcome = self._relay.error_type(call) if error else "ok"
        if call.abandoned:
            outcome += ", after its client's timeout"
        held = call.keep_alive and not call.abandoned and not error
        held = held and self.life.state is State.BUSY
        others = not self.line.empty() and self._others_waiting()
        if held and not self.hold.keeps(now, others):
            held = False
            self._log_giving_way(owner(call))
        if held:
            self.holder, self.holder_owner = call.sink, owner(call)
            if others:
                self._watch_hold()
        else:
            self._drop_holder()
        self.life.answered()
        self._relay.deliver(call, "reply_finished", True)
        # After the reply has left, and on a keep-alive loop not before the
        # next call has gone to the worker: not on the client's time.
        self._log_access(call, outcome, later=self.life.pending is None)
        self.advance()

    # The worker gone, the module stopped ----------------------------------

    def worker_gone(self, description: str, tail: str) -> None:
        """The worker ended: the call it was running fails, and no session holds on."""
        self._cancel_timer("call")
        self._cancel_timer("give_up")
        self._flush_access()
        call, self.current = self.current, None
        self._relay.drop()
        self.lease_keeper.answer_granted()
        self._drop_holder()
        if call is None:
            return
        if call.answered:
            self._relay.deliver(call, "reply_finished", False)  # cut short: just close
            return
        self._fail_call(
            call,
            ReplyError(
                "WorkerDied",
                f"the worker of {self.name} died during {call.function}() ({description})",
                tail,
            ),
        )

    def stop(self, reason: ReplyError) -> None:
        """The module stops for good: everything waiting is answered with ``reason``."""
        self._flush_access()
        self._drop_holder()
        self.lease_keeper.stop(reason)
        self.fail_waiting(reason)

    def fail_waiting(self, err: ReplyError) -> None:
        """Answer every waiting call with ``err``."""
        for call in self.line.take_all():
            self._fail_call(call, err)

    def _fail_call(self, call: Call, err: ReplyError) -> None:
        """Answer ``call`` with ``err`` and log it."""
        if not call.answered:
            self._log_access(call, err.kind)
            self.stats.call_failed(err.kind, call.received, self.reactor.seconds())
        call.fail(err)

    def _log_access(self, call: Call, outcome: str, later: bool = False) -> None:
        """Log ``call``'s access line; ``later``: when the next call has gone to the
        worker, or within ACCESS_DELAY, whichever is first (lines keep their order)."""
        if self.access is None or not logs.enabled(LogLevel.info):
            return
        now = self.reactor.seconds()
        received = call.received if call.received is not None else now
        started = call.started if call.started is not None else now
        client = call.client or call.client_ip  # with its certificate's CN, if it has one
        ms = (now - received) * 1000
        # One field to format, made here: a log observer formatting five
        # fields with format specs took a sixth of the server's time on a
        # keep-alive loop (benchmarks/versions.py). The parts stay in the event.
        self._access_pending.append(
            {
                "access": f"{client} {call.function}() {outcome} in {ms:.1f} ms",
                "module": self.name,
                "client": client,
                "function": call.function,
                "outcome": outcome,
                "ms": ms,
                "waited_ms": (started - received) * 1000,
            }
        )
        if not later:
            self._flush_access()
        elif self._access_timer is None:
            self._access_timer = self.reactor.callLater(ACCESS_DELAY, self._access_due)

    def _access_due(self) -> None:
        self._access_timer = None
        self._flush_access()

    def _flush_access(self) -> None:
        """Log the access lines waiting, in the order of their calls."""
        pending, self._access_pending = self._access_pending, []
        for fields in pending:
            # (what .info() does, one call less: one of these a call)
            self.access.emit(LogLevel.info, "{access}", **fields)

    def _cancel_timer(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None and timer.active():
            timer.cancel()

    def snapshot(self) -> dict:
        """The calls' part of the module's state for ``_status``."""
        now = self.reactor.seconds()
        current = None
        if self.current is not None and self.current.started is not None:
            current = {
                "function": self.current.function,
                "client": self.current.client_ip,
                "seconds": round(now - self.current.started, 3),
            }
        rules = self.line.rules
        return {
            "queue": len(self.line),
            "queue_limit": rules.limit,
            "queue_share": rules.client_share,
            "queue_wait": rules.wait,
            "calls_served": self.calls_served,
            "current_call": current,
            "held_by_session": self.holder is not None,
            "keep_alive_hold": self.hold.limit,
            "order": rules.order,
            "waiting_by_client": self.line.by_identity(),
            "lease": self.leases.describe(now),
            "lease_waiting": self.lease_keeper.waiting(),
            "max_lease": self.leases.max_seconds,
        }
