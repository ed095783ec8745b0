"""One module's worker process from birth to death: the part of procmon's job.

``WorkerLife`` spawns the worker child (through process.WorkerProcess),
sees it ready or failing to load, answers for its death, respawns it with
backoff (lifecycle.RestartPolicy), and stops it with the ladder STOP ->
SIGTERM -> SIGKILL.  It keeps the module's lifecycle state
(lifecycle.State).  What runs on the worker, and when, is call_flow.CallFlow's
business: this part tells it when the worker is ready or gone, and lends
it the worker to send calls to.  The reactor is injected.
"""

from __future__ import annotations

import collections
import errno
import os

from twisted.internet import defer

from modserver.server import logs
from modserver.server.config import ModuleSpec
from modserver.supervision.admission import backoff_refusal
from modserver.supervision.lifecycle import State, check_transition
from modserver.supervision.process import WorkerProcess
from modserver.supervision.stats import ModuleStats
from modserver.wire import channel
from modserver.wire.errors import ReplyError

# Lines of a worker's raw output kept to explain its death to clients (a
# crash dump lists every thread's stack, so keep enough), each cut to a length.
OUTPUT_TAIL = 60
OUTPUT_TAIL_LINE = 500

# Spawn errors that pass (no descriptors, memory or processes to spare just
# now): the worker is retried with backoff instead of being marked failed.
TRANSIENT_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN}


def traceback_above(reason: str, traceback: str) -> str:
    """``traceback`` for the log below ``reason``: without its last line when the
    reason already ends with it, and without trailing blank lines."""
    lines = traceback.rstrip().split("\n")
    if lines and lines[-1].strip() and reason.rstrip().endswith(lines[-1].strip()):
        lines.pop()
    return "\n".join(lines).rstrip()


class LoadFailed(Exception):
    """A module could not be loaded; carries the reply error to give clients."""

    def __init__(self, err: ReplyError) -> None:
        super().__init__(err.reason)
        self.error = err


class WorkerLife:
    """The module's worker child and lifecycle state.

    ``events`` is what the WorkerProcess reports to (the supervisor, which
    passes reply frames to the call flow and the rest here); ``flow`` is
    the call flow, told when the worker is ready or gone.
    """

    def __init__(self, spec: ModuleSpec, settings, reactor, stats: ModuleStats, events) -> None:
        self.spec = spec
        self.name = spec.name  # a config change never renames a module
        self.settings = settings
        self.reactor = reactor
        self.stats = stats
        self.events = events
        self.flow = None  # the CallFlow, set by the supervisor
        self.log = logs.for_module(spec.name)
        self.module_log = logs.for_module(spec.name, "module")
        self.output = logs.ModuleOutput(spec.name, reactor)
        self.state = State.STOPPED
        self.load_error: ReplyError | None = None
        # The module's own source files, each with the digest of what was imported.
        self.files: dict[str, bytes] = {}
        self.restarts = 0
        self.last_exit: str | None = None
        self.output_tail: collections.deque[bytes] = collections.deque(maxlen=OUTPUT_TAIL)
        self.process: WorkerProcess | None = None
        self.pending: str | None = None  # "restart" or "stop", once idle / gone
        self.stop_reason: ReplyError | None = None  # stopped for good
        self.ready_at: float | None = None
        self._ready_waiters: list[defer.Deferred] = []
        self._stopped_waiters: list[defer.Deferred] = []
        self._timers: dict[str, object] = {}
        self._policy = settings.restart_policy()
        self._served = 0  # calls the current worker answered
        self._death: str = ""  # how the last worker died, and its last output

    # Commands ---------------------------------------------------------

    def start(self) -> None:
        """Start the worker unless one runs or is on its way."""
        if self.state in (State.STOPPED, State.FAILED, State.BACKOFF):
            self.pending = None
            self._spawn_when_gone()

    def restart(self, when_idle: bool = False) -> defer.Deferred:
        """Replace the worker with a fresh one; fires once it is ready (see
        ModuleSupervisor.restart); LoadFailed if the new worker cannot load."""
        waiter = defer.Deferred()
        if self.stop_reason is not None:
            waiter.errback(LoadFailed(self.stop_reason))
            return waiter
        self._ready_waiters.append(waiter)
        self.pending = "restart"
        if self.state in (State.STOPPED, State.FAILED, State.BACKOFF):
            self.pending = None
            self._spawn_when_gone()
        elif self.state is State.STARTING or (self.state is not State.STOPPING and not when_idle):
            self.begin_stop()
        else:
            self.flow.advance()  # the flow stops the worker once it is idle
        return waiter

    def stop(self, reason: ReplyError) -> defer.Deferred:
        """Stop for good (the flow has answered its calls); fires once the worker is gone."""
        self.pending = "stop"
        self.stop_reason = reason
        self._cancel_timer("backoff")
        self._fail_ready_waiters(reason)
        waiter = defer.Deferred()
        if self.process is None:
            self.pending = None
            self._set_state(State.STOPPED)
            waiter.callback(None)
            return waiter
        self._stopped_waiters.append(waiter)
        if self.state is not State.STOPPING:
            self.begin_stop()
        return waiter

    def hello_error(self) -> ReplyError | None:
        """Why a client cannot use the module now, or None (see ModuleSupervisor)."""
        if self.pending is not None:
            return None
        if self.state is State.FAILED:
            return self.load_error
        if self.state is State.BACKOFF and self.load_error is not None:
            return self.load_error  # it dies while loading: say so, with its output
        if self.state is State.BACKOFF:
            return backoff_refusal(
                self.name, self._policy.crashes, self.next_start_in(), self._death
            )
        return None

    def restart_in(self) -> float | None:
        """Seconds until the next start in backoff, or None when none is due."""
        return self.next_start_in() if "backoff" in self._timers else None

    def next_start_in(self) -> float:
        """Seconds until the next start in backoff (0 when none is due)."""
        timer = self._timers.get("backoff")
        return max(0.0, timer.getTime() - self.reactor.seconds()) if timer is not None else 0.0

    # What the call flow asks --------------------------------------------

    def send(self, *pieces: bytes) -> None:
        """Frame bytes to the worker."""
        self.process.send(*pieces)

    def busy(self) -> None:
        """A call went to the worker."""
        if self.state is State.READY:
            self.state = State.BUSY  # legal (lifecycle.TRANSITIONS): no check on every call
        else:
            self._set_state(State.BUSY)

    def answered(self) -> None:
        """The worker answered its call."""
        self._served += 1
        if self.state is State.BUSY:
            self.state = State.READY  # legal too, as in busy()

    def kill_for_timeout(self, function: str, timeout: float) -> None:
        """A call ran over its timeout: kill the worker, and restart it unless stopping."""
        self.log.warn(
            "{function}() timed out after {timeout:g} s; killing the worker",
            module=self.name,
            function=function,
            timeout=timeout,
        )
        if self.pending != "stop":
            self.pending = "restart"
            self.stats.restart_requested("timeout", f"{function}() ran over {timeout:g} s")
        self._set_state(State.STOPPING)
        self.process.signal("KILL")

    def begin_stop(self) -> None:
        """Ask the worker to stop (it finishes a call in flight first)."""
        self._set_state(State.STOPPING)
        self.process.send(channel.frame(channel.STOP))
        self._timers["terminate"] = self.reactor.callLater(
            self.settings.stop_grace, self._terminate
        )

    def tail_text(self) -> str:
        """The worker's last output, to explain its death."""
        if not self.output_tail:
            return "(the worker wrote nothing before it ended)\n"
        lines = (line.decode("utf-8", "replace").rstrip("\r") for line in self.output_tail)
        return "Last output of the worker:\n" + "\n".join(lines) + "\n"

    # Events from the worker ---------------------------------------------

    def worker_message(self, proc: WorkerProcess, kind: int, info: dict) -> None:
        if proc is not self.process:
            return
        if kind == channel.READY:
            self._worker_ready(info)
        elif kind == channel.LOAD_FAILED:
            self._worker_load_failed(info)
        elif kind == channel.LOG:
            self._module_log(info)
        elif kind == channel.PUBLISH:
            self.events.published(info)

    def worker_output(self, proc: WorkerProcess, line: bytes) -> None:
        self.output_tail.append(line[:OUTPUT_TAIL_LINE])
        self.output.line(line)

    def worker_broken(self, proc: WorkerProcess, what: str) -> None:
        if proc is self.process:
            self.log.error("{module}'s worker {what}; killing it", module=self.name, what=what)
            proc.signal("KILL")

    def worker_gone(self, proc: WorkerProcess, description: str) -> None:
        """The worker exited and its channel closed: decide what comes next."""
        if proc is not self.process:
            return
        self.process = None
        self.last_exit = description
        self._cancel_timer("terminate")
        self._cancel_timer("kill")
        uptime = self.reactor.seconds() - self.ready_at if self.ready_at is not None else None
        self.ready_at = None
        self._kill_leftovers(proc)
        self.flow.worker_gone(description, self.tail_text())
        if self.state is State.STOPPING:
            self._after_stop()
        elif self.state is State.FAILED:
            if self.pending == "restart":
                self.pending = None
                self._spawn()
        else:
            self._died(description, uptime)

    # Starting ---------------------------------------------------------------

    def _set_state(self, state: State) -> None:
        if state is not self.state:
            check_transition(self.state, state)
            self.state = state

    def _spawn_when_gone(self) -> None:
        if self.process is None:
            self._spawn()
        else:
            self.pending = "restart"

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
        proc = WorkerProcess(self.events)
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
        self.process = proc
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
        self.ready_at = self.reactor.seconds()
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
        self.flow.advance()

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
            "{reason}\n{traceback}" if err.traceback.strip() else "{reason}",
            module=self.name,
            reason=err.reason,
            traceback=traceback_above(err.reason, err.traceback),
        )
        self._cannot_load(err)

    def _cannot_load(self, err: ReplyError) -> None:
        """No worker to serve: ``err`` answers hellos, waiting calls and reloads."""
        self.load_error = err
        self.flow.fail_waiting(err)
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

    # Stopping: STOP, then SIGTERM, then SIGKILL ----------------------------

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
        if self.process is not None:
            self.process.signal("TERM")
            self._timers["kill"] = self.reactor.callLater(self.settings.kill_grace, self._kill)

    def _kill(self) -> None:
        del self._timers["kill"]
        if self.process is not None:
            self.log.warn("worker ignored SIGTERM; sending SIGKILL", module=self.name)
            self.process.signal("KILL")

    def _kill_now(self) -> None:
        self.log.warn(
            "worker did not stop within {grace:g} s; killing it",
            module=self.name,
            grace=self.settings.stop_grace,
        )
        if self.process is not None:
            self.process.signal("KILL")

    def _kill_leftovers(self, proc: WorkerProcess) -> None:
        """Kill what is left of the worker's process group or Job Object (its children)."""
        if proc.pid is not None:
            self.settings.signal_group(proc.pid, "KILL")

    def _after_stop(self) -> None:
        pending, self.pending = self.pending, None
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

    # Deaths -------------------------------------------------------------------

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
        self._death = f"The last worker ended: {description}.\n{self.tail_text()}"
        self._set_state(State.BACKOFF)
        if loading:
            self._cannot_load(
                ReplyError(
                    "WorkerDied",
                    f"the worker of {self.name} died while loading ({description}); "
                    f"retrying {when}",
                    self.tail_text(),
                )
            )
        else:
            refusal = backoff_refusal(self.name, self._policy.crashes, delay, self._death)
            if refusal is not None:
                self.flow.fail_waiting(refusal)
        self._restart_in(delay)

    def _restart_in(self, delay: float) -> None:
        if delay == 0:
            self._spawn()
        else:
            self._timers["backoff"] = self.reactor.callLater(delay, self._backoff_over)

    def _backoff_over(self) -> None:
        del self._timers["backoff"]
        self._spawn()

    def _fail_ready_waiters(self, err: ReplyError) -> None:
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            waiter.errback(LoadFailed(err))

    def _cancel_timer(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None and timer.active():
            timer.cancel()
