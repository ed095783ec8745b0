"""One module: its worker's life and the flow of its calls, behind one face.

``ModuleSupervisor`` is what the server and its clients talk to.  It is
two parts, each readable on its own:

- worker_life.WorkerLife: the worker child's life (spawn, ready, death,
  backoff, the stop ladder) and the module's lifecycle state;
- call_flow.CallFlow: the calls (waiting line, turns, keep-alive sessions,
  leases, dispatch, deadlines, replies).

The reactor is injected, so tests drive it with a fake.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet import defer

from modserver.server import logs
from modserver.server.config import ModuleSpec
from modserver.supervision.call_flow import CallFlow
from modserver.supervision.calls import Call, CallSink
from modserver.supervision.leases import DEFAULT_MAX_LEASE
from modserver.supervision.lifecycle import RestartPolicy, State
from modserver.supervision.process import WorkerProcess
from modserver.supervision.stats import ModuleStats
from modserver.supervision.worker_life import LoadFailed, WorkerLife
from modserver.wire.errors import ReplyError
from modserver.worker import platforms

__all__ = ["LoadFailed", "ModuleSupervisor", "WorkerSettings"]

WORKER_SCRIPT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "worker", "worker.py"
)


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


class ModuleSupervisor:
    """Runs one module: its worker child (``life``) and its calls (``flow``).

    Calls are served one at a time, in turns across clients; a keep-alive
    session holds the module between its calls for a bounded time while
    others wait; a lease keeps it for one client.  Unexpected deaths are
    answered, logged and respawned with backoff; load failures wait for a
    change or a reload.
    """

    def __init__(self, spec: ModuleSpec, settings: WorkerSettings, reactor) -> None:
        self.settings = settings
        self.reactor = reactor
        self.stats = ModuleStats()
        self.log = logs.for_module(spec.name)
        self.life = WorkerLife(spec, settings, reactor, self.stats, events=self)
        self.flow = CallFlow(spec, settings, reactor, self.stats, self.life)
        self.life.flow = self.flow
        self._spec = spec
        # Values the module publishes itself: (module, name, value, time), for watches.
        self.on_publish: Callable[[str, str, object, float], None] | None = None

    def published(self, info: dict) -> None:
        """The worker sent a value the module published."""
        name, when = info.get("name"), info.get("time")
        if self.on_publish is None or not isinstance(name, str):
            return
        if not isinstance(when, int | float) or isinstance(when, bool):
            when = self.reactor.seconds()
        self.on_publish(self.name, name, info.get("value"), float(when))

    @property
    def name(self) -> str:
        return self._spec.name

    @property
    def spec(self) -> ModuleSpec:
        return self._spec

    @spec.setter
    def spec(self, spec: ModuleSpec) -> None:
        """A new config entry; its queue, hold and lease limits apply at once."""
        self._spec = spec
        self.life.spec = spec
        self.flow.spec = spec

    @property
    def state(self) -> State:
        return self.life.state

    @property
    def pid(self) -> int | None:
        process = self.life.process
        return process.pid if process is not None else None

    @property
    def files(self) -> dict[str, bytes]:
        """The module's own source files, each with the digest of what was imported."""
        return self.life.files

    @property
    def restarts(self) -> int:
        return self.life.restarts

    @property
    def load_error(self) -> ReplyError | None:
        return self.life.load_error

    @property
    def last_exit(self) -> str | None:
        return self.life.last_exit

    @property
    def calls_served(self) -> int:
        return self.flow.calls_served

    @property
    def leases(self):
        """The module's lease (leases.ModuleLease)."""
        return self.flow.leases

    # Commands ---------------------------------------------------------

    def start(self) -> None:
        """Start the worker unless one runs or is on its way."""
        self.life.start()

    def restart(self, when_idle: bool = False) -> defer.Deferred:
        """Replace the worker with a fresh one; fires once it is ready.

        ``when_idle``: wait until no call runs and no keep-alive session
        holds the module (code and config changes).  Otherwise stop at once:
        the worker finishes its call in flight first, and is killed if that
        call outlives the stop grace period (an explicit ``_reload_``).
        The Deferred fails with LoadFailed if the new worker cannot load.
        """
        return self.life.restart(when_idle)

    def files_changed(self, paths: list[str]) -> None:
        """Some of the module's files changed: restart with the new code once idle.

        A module that failed to load is retried: the change may be the fix.
        """
        busy = self.state is State.BUSY or self.flow.holder is not None
        self.log.info(
            "{files} changed; reloading {when}",
            module=self.name,
            files=", ".join(paths),
            when="once idle" if busy else "now",
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
        self.flow.stop(reason)
        return self.life.stop(reason)

    def submit(self, call: Call) -> None:
        """Queue a call; it is answered now if the module cannot take it."""
        self.flow.submit(call)

    def answers_within(self) -> float | None:
        """Seconds within which a request gets its reply: its wait for a turn
        (the queue wait limit) and its call (the module's timeout); None when
        the module has no timeout (a call may run as long as it runs)."""
        if self.spec.timeout is None:
            return None
        return self.flow.line.rules.wait + self.spec.timeout

    def hello_error(self) -> ReplyError | None:
        """Why a client cannot use the module now, or None to acknowledge it.

        A module that cannot load says why; one restarting after crashes
        answers at once unless its next start is due within the hold time.
        """
        return self.life.hello_error()

    def release(self, sink: CallSink) -> None:
        """The client ``sink`` is gone: drop its waiting calls and its hold."""
        self.flow.release(sink)

    # Leases ---------------------------------------------------------------

    def take_lease(self, who: str, seconds: float, wait: float = 0.0) -> defer.Deferred:
        """``who`` takes the module's lease (see lease_keeper.LeaseKeeper.take)."""
        return self.flow.lease_keeper.take(who, seconds, wait)

    def renew_lease(self, who: str, seconds: float) -> dict:
        return self.flow.lease_keeper.renew(who, seconds)

    def release_lease(self, who: str) -> None:
        self.flow.lease_keeper.release(who)

    def break_lease(self, by: str) -> str:
        """An administrator ends the lease; returns who held it."""
        return self.flow.lease_keeper.break_(by)

    def snapshot(self) -> dict:
        """The module's state for ``_status`` and the status page."""
        now = self.reactor.seconds()
        life = self.life
        restart_in = life.restart_in()
        return {
            "state": life.state.value,
            "pid": self.pid,
            "uptime": round(now - life.ready_at, 3) if life.ready_at is not None else None,
            "restarts": life.restarts,
            "last_exit": life.last_exit,
            "last_error": (
                {"reason": life.load_error.reason, "traceback": life.load_error.traceback}
                if life.load_error is not None
                else None
            ),
            **self.flow.snapshot(),
            "restart_in": round(restart_in, 3) if restart_in is not None else None,
            "module": self.spec.module,
            "entry": self.spec.entry,
            "dispatch": self.spec.dispatch,
            "python": self.spec.python,
            "files": sorted(life.files),
            "timeout": self.spec.timeout,
            **self.stats.snapshot(now),
        }

    # Events from the worker (process.WorkerProcess) ----------------------

    def worker_message(self, proc: WorkerProcess, kind: int, info: dict) -> None:
        self.life.worker_message(proc, kind, info)

    def worker_reply_started(
        self, proc: WorkerProcess, flags: int, request_id: int, length: int = 0
    ) -> None:
        self.flow.reply_started(proc, flags, request_id, length)

    def worker_reply_data(self, proc: WorkerProcess, data: bytes) -> None:
        if proc is self.life.process:
            self.flow.reply_data(data)

    def worker_reply_ended(self, proc: WorkerProcess) -> None:
        if proc is self.life.process:
            self.flow.reply_ended()

    def worker_output(self, proc: WorkerProcess, line: bytes) -> None:
        self.life.worker_output(proc, line)

    def worker_broken(self, proc: WorkerProcess, what: str) -> None:
        self.life.worker_broken(proc, what)

    def worker_gone(self, proc: WorkerProcess, description: str) -> None:
        """The worker exited and its channel closed: decide what comes next."""
        self.life.worker_gone(proc, description)
