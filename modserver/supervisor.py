"""One module's worker: its life, its queue and its calls.

``ModuleSupervisor`` owns the module's lifecycle (lifecycle.State), its FIFO
queue of calls, the keep-alive session holding it, and the worker child
(through process.WorkerProcess).  The reactor is injected, so tests drive
it with a fake.
"""

from __future__ import annotations

import collections
import errno
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.logger import LogLevel

from modserver import channel, logs, platforms
from modserver.admission import QueueRules, WaitingLine, backoff_refusal
from modserver.calls import Call, CallSink, ReplyRelay, call_deadlines
from modserver.config import ModuleSpec
from modserver.errors import ReplyError
from modserver.leases import DEFAULT_MAX_LEASE, Lease, ModuleLease
from modserver.lifecycle import RestartPolicy, State, check_transition
from modserver.process import WorkerProcess
from modserver.stats import ModuleStats
from modserver.turns import SessionHold, owner

WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")

# Lines of a worker's raw output kept to explain its death to clients (a
# crash dump lists every thread's stack, so keep enough), each cut to a length.
OUTPUT_TAIL = 60
OUTPUT_TAIL_LINE = 500

# Spawn errors that pass (no descriptors, memory or processes to spare just
# now): the worker is retried with backoff instead of being marked failed.
TRANSIENT_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN}


@dataclass
class WorkerSettings:
    """What every worker of one server shares."""

    import_paths: tuple[str, ...] = ()  # the config's directory, the server's cwd
    max_reply: int = 1024**3
    log_level: int = 20  # stdlib logging level for module code
    stop_grace: float = 5.0  # STOP -> SIGTERM (or, without SIGTERM, the kill)
    kill_grace: float = 2.0  # SIGTERM -> SIGKILL
    restart_policy: Callable[[], RestartPolicy] = RestartPolicy
    script: str = WORKER_SCRIPT
    platform: platforms.Platform = field(default_factory=platforms.current)
    # Signals a worker with what it started; None: the platform's own.
    signal_group: Callable[[int, str], bool] | None = None
    access_log: bool = True  # one log line per call
    max_lease: float = DEFAULT_MAX_LEASE  # the longest lease a module grants by default

    def __post_init__(self) -> None:
        if self.signal_group is None:
            self.signal_group = self.platform.signal_group


def _queue_rules(spec: ModuleSpec) -> QueueRules:
    return QueueRules(
        limit=spec.queue_limit, share=spec.queue_share, wait=spec.queue_wait, order=spec.order
    )


def _lease_lost(module: str, who: str) -> ReplyError:
    return ReplyError(
        "Busy", f"the lease on {module} that {who} was granted ended before it could be used"
    )


class LoadFailed(Exception):
    """A module could not be loaded; carries the reply error to give clients."""

    def __init__(self, err: ReplyError) -> None:
        super().__init__(err.reason)
        self.error = err


class ModuleSupervisor:
    """Runs one module: its worker child, its queue, its lifecycle.

    Calls run one at a time in arrival order; a keep-alive session holds
    the module between its calls.  Unexpected deaths are answered, logged
    and respawned with backoff; load failures wait for a change or a reload.
    """

    def __init__(self, spec: ModuleSpec, settings: WorkerSettings, reactor) -> None:
        self._line = WaitingLine(spec.name, _queue_rules(spec))
        self._hold = SessionHold(spec.keep_alive_hold)
        self.settings = settings
        self.leases = ModuleLease(spec.name, spec.max_lease or settings.max_lease)
        self.spec = spec
        self.reactor = reactor
        self.log = logs.for_module(spec.name)
        self.module_log = logs.for_module(spec.name, "module")
        self.access = logs.for_module(spec.name, "access") if settings.access_log else None
        self.output = logs.ModuleOutput(spec.name, reactor)
        self.state = State.STOPPED
        self.load_error: ReplyError | None = None
        # The module's own source files, each with the digest of what was imported.
        self.files: dict[str, bytes] = {}
        self.restarts = 0
        self.calls_served = 0
        self.stats = ModuleStats()
        self.last_exit: str | None = None
        self.output_tail: collections.deque[bytes] = collections.deque(maxlen=OUTPUT_TAIL)
        self._process: WorkerProcess | None = None
        self._current: Call | None = None
        self._holder: CallSink | None = None
        self._holder_owner = ""  # the identity of the session holding the module
        self._pending: str | None = None  # "restart" or "stop", once idle / gone
        self._stop_reason: ReplyError | None = None
        self._ready_waiters: list[defer.Deferred] = []
        self._stopped_waiters: list[defer.Deferred] = []
        self._timers: dict[str, object] = {}
        self._policy = settings.restart_policy()
        self._ready_at: float | None = None
        self._served = 0  # calls the current worker answered
        self._death: str = ""  # how the last worker died, and its last output
        self._request_ids = 0
        self._relay = ReplyRelay(spec.name, self.log, peek_errors=self.access is not None)
        # Lease takers waiting for another's lease to end: (who, seconds, Deferred, timer).
        self._lease_waiters: list[tuple[str, float, defer.Deferred, object]] = []
        # Takers granted a lease while another's call runs: answered once it ends.
        self._granted: list[tuple[defer.Deferred, str]] = []

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def spec(self) -> ModuleSpec:
        return self._spec

    @spec.setter
    def spec(self, spec: ModuleSpec) -> None:
        """A new config entry; its queue rules, hold limit and lease limit apply at once."""
        self._spec = spec
        self._line.rules = _queue_rules(spec)
        self._hold.limit = spec.keep_alive_hold
        self.leases.max_seconds = spec.max_lease or self.settings.max_lease

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # Commands ---------------------------------------------------------

    def start(self) -> None:
        """Start the worker unless one runs or is on its way."""
        if self.state in (State.STOPPED, State.FAILED, State.BACKOFF):
            self._pending = None
            self._spawn_when_gone()

    def restart(self, when_idle: bool = False) -> defer.Deferred:
        """Replace the worker with a fresh one; fires once it is ready.

        ``when_idle``: wait until no call runs and no keep-alive session
        holds the module (code and config changes).  Otherwise stop at once:
        the worker finishes its call in flight first, and is killed if that
        call outlives the stop grace period (an explicit ``_reload_``).
        The Deferred fails with LoadFailed if the new worker cannot load.
        """
        waiter = defer.Deferred()
        if self._stop_reason is not None:  # stopped for good
            waiter.errback(LoadFailed(self._stop_reason))
            return waiter
        self._ready_waiters.append(waiter)
        self._pending = "restart"
        if self.state in (State.STOPPED, State.FAILED, State.BACKOFF):
            self._pending = None
            self._spawn_when_gone()
        elif self.state is State.STARTING or (self.state is not State.STOPPING and not when_idle):
            self._begin_stop()
        else:
            self._advance()
        return waiter

    def files_changed(self, paths: list[str]) -> None:
        """Some of the module's files changed: restart with the new code once idle.

        A module that failed to load is retried: the change may be the fix.
        """
        self.log.info(
            "{files} changed; reloading {when}",
            module=self.name,
            files=", ".join(paths),
            when="now" if self.state is not State.BUSY and self._holder is None else "once idle",
        )
        self.stats.restart_requested("files", ", ".join(paths) + " changed")
        self.restart(when_idle=True).addErrback(lambda _: None)

    def update(self, spec: ModuleSpec) -> None:
        """Take a changed config entry: restart with it once idle."""
        self.spec = spec
        self.stats.restart_requested("config", "config entry changed")
        self.restart(when_idle=True).addErrback(lambda _: None)

    def stop(self, reason: ReplyError) -> defer.Deferred:
        """Stop for good; fires once the worker is gone.

        Waiting calls get ``reason``; the call in flight may finish within
        the stop grace period.
        """
        self._pending = "stop"
        self._stop_reason = reason
        self._drop_holder()
        self._cancel_timer("backoff")
        self._cancel_timer("lease")
        self._fail_lease_waiters(reason)
        self._fail_waiting(reason)
        self._fail_ready_waiters(reason)
        waiter = defer.Deferred()
        if self._process is None:
            self._pending = None
            self._set_state(State.STOPPED)
            waiter.callback(None)
            return waiter
        self._stopped_waiters.append(waiter)
        if self.state is not State.STOPPING:
            self._begin_stop()
        return waiter

    def submit(self, call: Call) -> None:
        """Queue a call; it is answered now if the module cannot take it."""
        call.received = self.reactor.seconds()
        if self._stop_reason is not None:  # stopped for good (one not yet started: calls wait)
            self._fail_call(call, self._stop_reason)
            return
        refusal = self.hello_error()
        if refusal is not None:
            self._fail_call(call, refusal)
            return
        refusal = self.leases.refusal(owner(call), call.received)
        if refusal is not None and not call.lease_wait:
            self._fail_call(call, refusal)
            return
        if call.sink is self._holder:
            self._line.add(call, first=True)
        elif refusal is None and self._can_run_now(call):
            self._line.add(call)
        else:
            refusal = self._line.refusal(call.client)
            if refusal is not None:
                self._fail_call(call, refusal)
                return
            self._line.add(call)
            self._watch_queue()
            self._watch_hold()
        self._advance()

    def _can_run_now(self, call: Call) -> bool:
        """True when ``call`` would go to the worker at once (it never waits)."""
        return (
            self.state is State.READY
            and self._pending is None
            and not self._line
            and self._holder in (None, call.sink)
        )

    def hello_error(self) -> ReplyError | None:
        """Why a client cannot use the module now, or None to acknowledge it.

        A module that cannot load says why; one restarting after crashes
        answers at once unless its next start is due within the hold time.
        """
        if self._pending is not None:
            return None
        if self.state is State.FAILED:
            return self.load_error
        if self.state is State.BACKOFF and self.load_error is not None:
            return self.load_error  # it dies while loading: say so, with its output
        if self.state is State.BACKOFF:
            return backoff_refusal(
                self.name, self._policy.crashes, self._next_start_in(), self._death
            )
        return None

    def _next_start_in(self) -> float:
        timer = self._timers.get("backoff")
        return max(0.0, timer.getTime() - self.reactor.seconds()) if timer is not None else 0.0

    def release(self, sink: CallSink) -> None:
        """The client ``sink`` is gone: drop its waiting calls and its hold."""
        for call in self._line.remove(lambda c: c.sink is sink):
            call.sent()
            self._log_access(call, "dropped (the client left)")
        if self._holder is sink:
            self._drop_holder()
            self._advance()

    def snapshot(self) -> dict:
        """The module's state for ``_status`` and the status page."""
        now = self.reactor.seconds()
        current = None
        if self._current is not None and self._current.started is not None:
            current = {
                "function": self._current.function,
                "client": self._current.client_ip,
                "seconds": round(now - self._current.started, 3),
            }
        backoff = self._timers.get("backoff")
        return {
            "state": self.state.value,
            "pid": self.pid,
            "uptime": round(now - self._ready_at, 3) if self._ready_at is not None else None,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "last_error": (
                {"reason": self.load_error.reason, "traceback": self.load_error.traceback}
                if self.load_error is not None
                else None
            ),
            "queue": len(self._line),
            "queue_limit": self._line.rules.limit,
            "queue_share": self._line.rules.client_share,
            "queue_wait": self._line.rules.wait,
            "calls_served": self.calls_served,
            "current_call": current,
            "held_by_session": self._holder is not None,
            "keep_alive_hold": self._hold.limit,
            "order": self._line.rules.order,
            "waiting_by_client": self._line.by_identity(),
            "lease": self.leases.describe(now),
            "lease_waiting": [entry[0] for entry in self._lease_waiters],
            "max_lease": self.leases.max_seconds,
            "restart_in": round(backoff.getTime() - now, 3) if backoff is not None else None,
            "module": self.spec.module,
            "entry": self.spec.entry,
            "dispatch": self.spec.dispatch,
            "python": self.spec.python,
            "files": sorted(self.files),
            "timeout": self.spec.timeout,
            **self.stats.snapshot(now),
        }

    # Events from the worker ---------------------------------------------

    def worker_message(self, proc: WorkerProcess, kind: int, info: dict) -> None:
        if proc is not self._process:
            return
        if kind == channel.READY:
            self._worker_ready(info)
        elif kind == channel.LOAD_FAILED:
            self._worker_load_failed(info)
        elif kind == channel.LOG:
            self._module_log(info)

    def worker_reply_started(
        self, proc: WorkerProcess, flags: int, request_id: int, length: int = 0
    ) -> None:
        call = self._current
        if proc is not self._process or call is None or call.request_id != request_id:
            self.log.warn("dropping an unexpected reply from {module}'s worker", module=self.name)
            self._relay.drop()
            return
        self._cancel_timer("call")
        self._cancel_timer("give_up")
        self._relay.start(call, bool(flags & channel.ERROR), length, proc)

    def worker_reply_data(self, proc: WorkerProcess, data: bytes) -> None:
        if proc is self._process:
            self._relay.data(data)

    def worker_reply_ended(self, proc: WorkerProcess) -> None:
        if proc is not self._process:
            return
        call = self._relay.finish()
        if call is None:
            return
        error = self._relay.error
        self._current = None
        self.calls_served += 1
        self._served += 1
        self.stats.call_answered(error, call.abandoned, call.received, self.reactor.seconds())
        outcome = self._relay.error_type(call) if error else "ok"
        if call.abandoned:
            outcome += ", after its client's timeout"
        self._log_access(call, outcome)
        held = call.keep_alive and not call.abandoned and not error and self.state is State.BUSY
        if held and not self._hold.keeps(self.reactor.seconds(), self._others_waiting()):
            held = False
            self.log.info(
                "{client}'s keep-alive session gives way to others after {limit:g} s",
                module=self.name,
                client=call.client,
                limit=self._hold.limit,
            )
        if held:
            self._holder, self._holder_owner = call.sink, owner(call)
            self._watch_hold()
        else:
            self._drop_holder()
        if self.state is State.BUSY:
            self._set_state(State.READY)
        self._relay.deliver(call, "reply_finished", True)
        self._advance()

    def _fail_call(self, call: Call, err: ReplyError) -> None:
        """Answer ``call`` with ``err`` and log it."""
        if not call.answered:
            self._log_access(call, err.kind)
            self.stats.call_failed(err.kind, call.received, self.reactor.seconds())
        call.fail(err)

    def _log_access(self, call: Call, outcome: str) -> None:
        if self.access is None or not logs.enabled(LogLevel.info):
            return
        now = self.reactor.seconds()
        received = call.received if call.received is not None else now
        started = call.started if call.started is not None else now
        self.access.info(
            "{client} {function}() {outcome} in {ms:.1f} ms",
            module=self.name,
            client=call.client or call.client_ip,  # with its certificate's CN, if it has one
            function=call.function,
            outcome=outcome,
            ms=(now - received) * 1000,
            waited_ms=(started - received) * 1000,
        )

    def worker_output(self, proc: WorkerProcess, line: bytes) -> None:
        self.output_tail.append(line[:OUTPUT_TAIL_LINE])
        self.output.line(line)

    def worker_broken(self, proc: WorkerProcess, what: str) -> None:
        if proc is self._process:
            self.log.error("{module}'s worker {what}; killing it", module=self.name, what=what)
            proc.signal("KILL")

    def worker_gone(self, proc: WorkerProcess, description: str) -> None:
        """The worker exited and its channel closed: decide what comes next."""
        if proc is not self._process:
            return
        self._process = None
        self.last_exit = description
        self._cancel_timer("terminate")
        self._cancel_timer("kill")
        self._cancel_timer("call")
        self._cancel_timer("give_up")
        uptime = self.reactor.seconds() - self._ready_at if self._ready_at is not None else None
        self._ready_at = None
        self._kill_leftovers(proc)
        self._fail_current(description)
        self._drop_holder()
        if self.state is State.STOPPING:
            self._after_stop()
        elif self.state is State.FAILED:
            if self._pending == "restart":
                self._pending = None
                self._spawn()
        else:
            self._died(description, uptime)

    # Waiting calls --------------------------------------------------------

    def _watch_queue(self) -> None:
        """Have a timer answer calls that wait longer than the queue wait limit."""
        timer = self._timers.get("queue")
        deadline = self._line.next_deadline()
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
        for call in self._line.overdue(now):
            leased = self.leases.refusal(owner(call), now)
            self._fail_call(call, leased or self._line.overdue_error(call, now))
        self._watch_queue()

    def _fail_waiting(self, err: ReplyError) -> None:
        """Answer every waiting call with ``err``."""
        for call in self._line.take_all():
            self._fail_call(call, err)

    # Keep-alive sessions ------------------------------------------------

    def _others_waiting(self) -> bool:
        """Does anyone but the session holding the module wait for it?"""
        return self._line.waiting_in_turn() > 0

    def _watch_hold(self) -> None:
        """While others wait, the holding session keeps the module for a bounded time."""
        if self._holder is None or "hold" in self._timers or not self._others_waiting():
            return
        now = self.reactor.seconds()
        self._hold.keeps(now, True)  # the clock starts when others begin to wait
        deadline = self._hold.deadline()
        if deadline is not None:
            self._timers["hold"] = self.reactor.callLater(max(0.0, deadline - now), self._hold_over)

    def _hold_over(self) -> None:
        del self._timers["hold"]
        if self._holder is None or self._current is not None:
            return  # the session's call in flight decides when it ends
        if self._hold.keeps(self.reactor.seconds(), self._others_waiting()):
            self._watch_hold()
            return
        self.log.info(
            "{client}'s keep-alive session gives way to others after {limit:g} s",
            module=self.name,
            client=self._holder_owner,
            limit=self._hold.limit,
        )
        self._drop_holder()
        self._advance()

    def _drop_holder(self) -> None:
        """No session holds the module now: its waiting calls take their turns."""
        self._holder, self._holder_owner = None, ""
        self._hold.reset()
        self._line.give_way()
        self._cancel_timer("hold")

    # Leases ---------------------------------------------------------------

    def take_lease(self, who: str, seconds: float, wait: float = 0.0) -> defer.Deferred:
        """``who`` takes the module's lease for ``seconds``.

        Fires with the lease (leases.ModuleLease.describe) once it is
        granted: at once, or when another client's call in flight ends, or,
        waiting up to ``wait`` seconds, when another's lease ends.  Fails
        with a ReplyError (Busy while another holds it and ``wait`` is 0).
        """
        now = self.reactor.seconds()
        try:
            self.leases.check_seconds(seconds)
        except ReplyError as err:
            return defer.fail(err)
        self._lease_expired_by(now)
        holder = self.leases.holder(now)
        if holder == who:
            return defer.succeed(self.renew_lease(who, seconds))
        if holder is None and self._stop_reason is None:
            return self._grant(who, seconds)
        refusal = self._stop_reason or self.leases.refusal(who, now)
        if wait <= 0 or self._stop_reason is not None:
            return defer.fail(refusal)
        waiter = defer.Deferred()
        entry = [who, seconds, waiter, None]
        entry[3] = self.reactor.callLater(wait, self._lease_wait_over, entry, wait)
        self._lease_waiters.append(entry)
        return waiter

    def renew_lease(self, who: str, seconds: float) -> dict:
        """``who`` extends its lease to ``seconds`` from now; ReplyError if it cannot."""
        now = self.reactor.seconds()
        self._lease_expired_by(now)
        self.leases.renew(who, seconds, now)
        self._lease_timer()
        self.log.info(
            "lease renewed by {who} for {seconds:g} s", module=self.name, who=who, seconds=seconds
        )
        return self.leases.describe(now)

    def release_lease(self, who: str) -> None:
        """``who`` gives its lease back; ReplyError if it holds none."""
        now = self.reactor.seconds()
        self._lease_expired_by(now)
        lease = self.leases.release(who, now)
        self._lease_ended(lease, f"released by {who}")

    def break_lease(self, by: str) -> str:
        """An administrator ends the lease; returns who held it (ReplyError if none)."""
        now = self.reactor.seconds()
        self._lease_expired_by(now)
        lease = self.leases.break_(now)
        self._lease_ended(lease, f"broken by {by}")
        return lease.holder

    def _grant(self, who: str, seconds: float) -> defer.Deferred:
        now = self.reactor.seconds()
        self.leases.grant(who, seconds, now)
        self._lease_timer()
        self.log.info(
            "lease taken by {who} for {seconds:g} s", module=self.name, who=who, seconds=seconds
        )
        if self._holder is not None and self._holder_owner != who:
            self._drop_holder()
        for call in self._line.remove(lambda c: owner(c) != who and not c.lease_wait):
            self._fail_call(call, self.leases.refusal(owner(call), now))
        granted = defer.Deferred()
        current = self._current
        if current is not None and owner(current) != who and not current.answered:
            self._granted.append((granted, who))  # answered once that call ends
        else:
            granted.callback(self.leases.describe(now))
        self._advance()
        return granted

    def _answer_granted(self) -> None:
        granted, self._granted = self._granted, []
        now = self.reactor.seconds()
        for waiter, who in granted:
            lease = self.leases.describe(now)
            if lease is not None and lease["holder"] == who:
                waiter.callback(lease)
            else:
                waiter.errback(self.leases.refusal(who, now) or _lease_lost(self.name, who))

    def _lease_timer(self) -> None:
        self._cancel_timer("lease")
        lease = self.leases.lease
        if lease is not None:
            delay = max(0.0, lease.until - self.reactor.seconds())
            self._timers["lease"] = self.reactor.callLater(delay, self._lease_timer_fired)

    def _lease_timer_fired(self) -> None:
        del self._timers["lease"]
        self._lease_expired_by(self.reactor.seconds())

    def _lease_expired_by(self, now: float) -> None:
        lease = self.leases.expire(now)
        if lease is not None:
            self._lease_ended(lease, "expired (lost)")

    def _lease_ended(self, lease: Lease, how: str) -> None:
        """The lease is gone: the first client waiting for it gets it, or the line moves."""
        self._cancel_timer("lease")
        self.log.info(
            "lease of {holder} {how}",
            module=self.name,
            holder=lease.holder,
            how=how,
        )
        if self._lease_waiters:
            who, seconds, waiter, timer = self._lease_waiters.pop(0)
            if timer.active():
                timer.cancel()
            self._grant(who, seconds).chainDeferred(waiter)
            return
        self._advance()

    def _lease_wait_over(self, entry: list, wait: float) -> None:
        if entry in self._lease_waiters:
            self._lease_waiters.remove(entry)
        who, _, waiter, _ = entry
        now = self.reactor.seconds()
        refusal = self.leases.refusal(who, now)
        reason = refusal.message if refusal is not None else f"{self.name} is leased"
        waiter.errback(ReplyError("Busy", f"{reason}; waited {wait:g} s for the lease"))

    def _fail_lease_waiters(self, err: ReplyError) -> None:
        waiters, self._lease_waiters = self._lease_waiters, []
        for _, _, waiter, timer in waiters:
            if timer.active():
                timer.cancel()
            waiter.errback(err)

    # Internals ----------------------------------------------------------

    def _set_state(self, state: State) -> None:
        if state is not self.state:
            check_transition(self.state, state)
            self.state = state

    def _spawn_when_gone(self) -> None:
        if self._process is None:
            self._spawn()
        else:
            self._pending = "restart"

    def _spawn(self) -> None:
        self._cancel_timer("backoff")
        self._set_state(State.STARTING)
        spec = self.spec
        self.load_error = None
        if spec.cwd is not None and not os.path.isdir(spec.cwd):
            self._load_failed(
                ReplyError(
                    "LoadError", f"{self.name}: the working directory {spec.cwd} does not exist"
                )
            )
            return
        env = None
        if spec.env:
            env = dict(os.environ)
            env.update(dict(spec.env))
        proc = WorkerProcess(self)
        args = [spec.python, "-u", self.settings.script, spec.name]
        self.output_tail.clear()  # a death explains itself with this worker's output alone
        try:
            self.settings.platform.spawn(self.reactor, proc, spec.python, args, env, spec.cwd)
        except OSError as exc:
            if exc.errno in TRANSIENT_ERRNOS:
                self._spawn_failed_for_now(exc)
            else:
                self._load_failed(
                    ReplyError("LoadError", f"{self.name}: cannot start {spec.python}: {exc}")
                )
            return
        except Exception as exc:
            self._load_failed(
                ReplyError("LoadError", f"{self.name}: cannot start {spec.python}: {exc}")
            )
            return
        self._process = proc
        self.log.info("starting worker (pid {pid})", module=self.name, pid=proc.pid)
        proc.send(
            channel.json_frame(
                channel.LOAD,
                {
                    "name": spec.name,
                    "module": spec.module,
                    "entry": spec.entry,
                    "dispatch": spec.dispatch,
                    "paths": list(self.settings.import_paths),
                    "max_reply": self.settings.max_reply,
                    "log_level": self.settings.log_level,
                },
            )
        )

    def _spawn_failed_for_now(self, exc: OSError) -> None:
        """No worker could be started for want of something that comes back
        (descriptors, memory, processes): retry with backoff, never give up."""
        self.restarts += 1
        self.stats.restarted(self.reactor.seconds(), "spawn", f"cannot start: {exc}")
        delay = self._policy.next_delay(self.reactor.seconds(), None, False)
        delay = max(delay, self._policy.initial)
        self.log.error(
            "cannot start a worker now ({reason}); retrying in {delay:g} s",
            module=self.name,
            reason=exc,
            delay=delay,
        )
        self._set_state(State.BACKOFF)
        self._cannot_load(
            ReplyError(
                "Unavailable",
                f"{self.name} cannot start its worker now ({exc.strerror or exc}); "
                f"retrying in {delay:g} s",
            )
        )
        self._restart_in(delay)

    def _worker_ready(self, info: dict) -> None:
        if self.state is not State.STARTING:
            return
        self._take_files(info)
        self._ready_at = self.reactor.seconds()
        self._set_state(State.READY)
        self.log.info(
            "ready (pid {pid}, loaded in {load_time:.3f} s)",
            module=self.name,
            pid=info.get("pid"),
            load_time=info.get("load_time", 0.0),
        )
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        self._advance()

    def _worker_load_failed(self, info: dict) -> None:
        self._take_files(info)
        reason = info.get("reason", "LoadError")
        err = ReplyError(
            "LoadError",
            f"{self.name} failed to load: {reason}",
            info.get("traceback", ""),
        )
        self._load_failed(err)

    def _take_files(self, info: dict) -> None:
        self.files = {path: bytes.fromhex(digest) for path, digest in info.get("files", [])}

    def _load_failed(self, err: ReplyError) -> None:
        if self.state is not State.FAILED:
            self._set_state(State.FAILED)
        self.log.error(
            "{reason}\n{traceback}",
            module=self.name,
            reason=err.reason,
            traceback=err.traceback,
        )
        self._cannot_load(err)

    def _cannot_load(self, err: ReplyError) -> None:
        """No worker to serve: ``err`` answers hellos, waiting calls and reloads."""
        self.load_error = err
        self._fail_waiting(err)
        self._fail_ready_waiters(err)

    def _module_log(self, info: dict) -> None:
        text = info.get("message", "")
        if info.get("exc_text"):
            text = text + "\n" + info["exc_text"].rstrip("\n")
        self.module_log.emit(
            logs.level_for(int(info.get("level", 20))),
            "{logger}: {text}",
            module=self.name,
            logger=info.get("logger", ""),
            text=text,
            levelname=info.get("levelname"),
            message=info.get("message", ""),
            exc_text=info.get("exc_text", ""),
            module_time=info.get("time"),
        )

    def _advance(self) -> None:
        """Start the next piece of work if the module is idle."""
        if self._granted and self._current is None:
            self._answer_granted()
        if self.state is not State.READY:
            return
        if self._pending is not None and self._holder is None:
            self._begin_stop()
            return
        call = self._next_call()
        if call is not None:
            self._dispatch(call)

    def _next_call(self) -> Call | None:
        if self._holder is not None:
            return self._line.next_call(lambda call: call.sink is self._holder)
        holder = self.leases.holder(self.reactor.seconds())
        if holder is None:
            return self._line.next_call()
        return self._line.next_call(eligible=lambda who: who == holder)

    def _dispatch(self, call: Call) -> None:
        self._request_ids = (self._request_ids + 1) & 0xFFFFFFFF
        call.request_id = self._request_ids
        call.started = self.reactor.seconds()
        self._current = call
        self._set_state(State.BUSY)
        meta = call.meta or json.dumps({"client": call.client_ip}).encode("utf-8") + b"\n"
        flags = channel.PLAIN if call.plain else 0
        head = channel.header(channel.CALL, len(meta) + len(call.request), flags, call.request_id)
        self._process.send(head, meta, call.request)
        call.sent()
        kill_after, give_up_after = call_deadlines(call, self.spec.timeout)
        if kill_after is not None:
            self._timers["call"] = self.reactor.callLater(
                kill_after, self._call_timed_out, call, kill_after
            )
        if give_up_after is not None:
            self._timers["give_up"] = self.reactor.callLater(
                give_up_after, self._client_gave_up, call, give_up_after
            )

    def _client_gave_up(self, call: Call, timeout: float) -> None:
        """A client's own timeout ran out: answer it; the worker goes on with the call."""
        del self._timers["give_up"]
        if call is not self._current or call.answered:
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
        if call is not self._current or (call.answered and not call.abandoned):
            return
        self._current = None
        self._drop_holder()
        self._fail_call(
            call,
            ReplyError(
                "Timeout",
                f"{self.name}.{call.function} did not answer within {timeout:g} s; "
                "its worker was killed and is being restarted",
            ),
        )
        self.log.warn(
            "{function}() timed out after {timeout:g} s; killing the worker",
            module=self.name,
            function=call.function,
            timeout=timeout,
        )
        if self._pending != "stop":
            self._pending = "restart"
            self.stats.restart_requested("timeout", f"{call.function}() ran over {timeout:g} s")
        self._set_state(State.STOPPING)
        self._process.signal("KILL")

    def _begin_stop(self) -> None:
        """Ask the worker to stop (it finishes a call in flight first)."""
        self._set_state(State.STOPPING)
        self._process.send(channel.frame(channel.STOP))
        self._timers["terminate"] = self.reactor.callLater(
            self.settings.stop_grace, self._terminate
        )

    def _terminate(self) -> None:
        del self._timers["terminate"]
        if self.settings.platform.terminate_signal is None:
            self._kill_now()  # Windows: no signal asks a process to stop
            return
        self.log.warn(
            "worker did not stop within {grace:g} s; sending SIGTERM",
            module=self.name,
            grace=self.settings.stop_grace,
        )
        if self._process is not None:
            self._process.signal("TERM")
            self._timers["kill"] = self.reactor.callLater(self.settings.kill_grace, self._kill)

    def _kill(self) -> None:
        del self._timers["kill"]
        if self._process is not None:
            self.log.warn("worker ignored SIGTERM; sending SIGKILL", module=self.name)
            self._process.signal("KILL")

    def _kill_now(self) -> None:
        self.log.warn(
            "worker did not stop within {grace:g} s; killing it",
            module=self.name,
            grace=self.settings.stop_grace,
        )
        if self._process is not None:
            self._process.signal("KILL")

    def _kill_leftovers(self, proc: WorkerProcess) -> None:
        """Kill what is left of the worker's process group or Job Object (its children)."""
        if proc.pid is not None:
            self.settings.signal_group(proc.pid, "KILL")

    def _after_stop(self) -> None:
        pending, self._pending = self._pending, None
        if pending == "restart":
            self.log.info("restarting", module=self.name)
            self.restarts += 1
            self.stats.restarted(self.reactor.seconds())
            self._spawn()
            return
        self._set_state(State.STOPPED)
        self.output.stop()  # say now how much of a flood went unlogged
        self.log.info("stopped", module=self.name)
        waiters, self._stopped_waiters = self._stopped_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _died(self, description: str, uptime: float | None) -> None:
        """The worker died unexpectedly: restart it as the restart policy says.

        Waiting calls are answered at once unless the next start is due
        within the hold time; a module that dies while loading answers them
        (and hellos) with how it died, while it keeps being retried.
        """
        self.restarts += 1
        loading = self.state is State.STARTING
        served, self._served = self._served, 0
        delay = self._policy.next_delay(self.reactor.seconds(), uptime, served > 0)
        self.stats.restarted(self.reactor.seconds(), "died", description)
        when = "now" if delay == 0 else f"in {delay:g} s"
        self.log.error(
            "worker died unexpectedly ({how}); restarting {when}",
            module=self.name,
            how=description,
            when=when,
        )
        self._death = f"The last worker ended: {description}.\n{self._tail_text()}"
        self._set_state(State.BACKOFF)
        if loading:
            self._cannot_load(
                ReplyError(
                    "WorkerDied",
                    f"the worker of {self.name} died while loading ({description}); "
                    f"retrying {when}",
                    self._tail_text(),
                )
            )
        else:
            refusal = backoff_refusal(self.name, self._policy.crashes, delay, self._death)
            if refusal is not None:
                self._fail_waiting(refusal)
        self._restart_in(delay)

    def _restart_in(self, delay: float) -> None:
        if delay == 0:
            self._spawn()
        else:
            self._timers["backoff"] = self.reactor.callLater(delay, self._backoff_over)

    def _backoff_over(self) -> None:
        del self._timers["backoff"]
        self._spawn()

    def _fail_current(self, description: str) -> None:
        call, self._current = self._current, None
        self._relay.drop()
        self._answer_granted()
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
                self._tail_text(),
            ),
        )

    def _tail_text(self) -> str:
        if not self.output_tail:
            return "(the worker wrote nothing before it ended)\n"
        lines = (line.decode("utf-8", "replace").rstrip("\r") for line in self.output_tail)
        return "Last output of the worker:\n" + "\n".join(lines) + "\n"

    def _fail_ready_waiters(self, err: ReplyError) -> None:
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            waiter.errback(LoadFailed(err))

    def _cancel_timer(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None and timer.active():
            timer.cancel()
