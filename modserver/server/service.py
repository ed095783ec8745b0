"""The server as a Twisted service: listeners, the config, one supervisor per module."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import LogLevel, globalLogPublisher

import modserver
from modserver.lab.announce import Announcer, BoundPort
from modserver.server import logs
from modserver.server.access import AccessPolicy, Identity
from modserver.server.config import Config, ConfigError, read_config
from modserver.server.listeners import Listener, security
from modserver.server.protocol import ClientFactory
from modserver.server.refusals import RefusalTally
from modserver.server.watcher import FileWatch
from modserver.supervision.admission import ByteBudget, ConnectionLimits, connection_limit
from modserver.supervision.leases import LeaseRequest
from modserver.supervision.supervisor import ModuleSupervisor, WorkerSettings
from modserver.supervision.watches import (
    DEFAULT_MAX_PER_IDENTITY,
    DEFAULT_MAX_WATCHES,
    DEFAULT_STUCK_LIMIT,
    WatchBoard,
    reading_key,
)
from modserver.supervision.watching import WatchHub
from modserver.web.status import StatusPage, StatusSite
from modserver.wire.errors import ReplyError, bad_request

HELP_TEXT = """\
modserver speaks one JSON message per line, each urlencoded (quote_plus) or,
if the line starts with "{", plain JSON.  Every reply is
  {"response": R, "error": true|false, "traceback": T}

Hello (the first message): {"name": NAME}
  null or "_ping"        -> [your ip, your port]
  "_help"                -> this text
  "_get_modules[.PREFIX]" -> the module names (starting with PREFIX)
  "_reload_"             -> re-read the config file (administrators)
  "_reload_MODULE"       -> restart MODULE's worker (administrators)
  "_status[.MODULE]"     -> the state of the server and its modules
  "_lease"               -> "ack", then one request about a module's lease:
                            take [module, seconds, (wait)], renew [module, seconds],
                            release [module], show [(module)], break [module] (administrators)
  a module name          -> "ack", then send requests to that module

Request to the module: {"function": F, "args": [...], "keep_alive": false}
  "function": "_help" gives the module's help; null leaves quietly.
  Optional "timeout": seconds before the call is abandoned (and, for
  administrators, the worker restarted).  With "keep_alive": true the
  connection stays with the module for the next request (closed after 1 s
  idle by default).
  Any error reply closes the connection.
"""


def plural(count: int, noun: str) -> str:
    """``"1 module"``, ``"3 modules"``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


@dataclass
class ServerSettings:
    """Server-wide settings (from the command line)."""

    name: str = "modserver"
    listen: tuple[str, ...] = ("tcp:36577:interface=127.0.0.1",)
    max_request: int = 64 * 1024 * 1024
    keepalive_timeout: float = 1.0
    idle_timeout: float = 60.0
    poll_interval: float = 0.5  # seconds between looks at the config and module files
    log_level: LogLevel = LogLevel.info
    json_log: str | None = None  # path of a rotating JSON log
    json_log_size: int = 10 * 1024 * 1024
    json_log_count: int = 5
    http: str | None = None  # endpoint of the status page
    http_hosts: tuple[str, ...] = ()  # names the status page answers to, besides IPs
    access: AccessPolicy = field(default_factory=AccessPolicy)
    # DNS-SD announcement: True, False, or None for "when listening beyond
    # loopback" (the command line's default).  Off here, so that a server
    # built in code (the tests') stays off the lab network unless asked.
    announce: bool | None = False
    # Request bytes held in memory at once (lines being received, requests
    # waiting); None: 128 MiB, or room for two of the longest requests.
    max_held_requests: int | None = None
    max_connections: int | None = None  # None: from the file limit and the modules
    max_connections_per_address: int = 100
    max_watches: int = DEFAULT_MAX_WATCHES  # watches the server holds at once
    max_watches_per_client: int = DEFAULT_MAX_PER_IDENTITY
    watch_stuck_limit: float = DEFAULT_STUCK_LIMIT  # seconds a watcher may read nothing
    fd_limit: int | None = None  # the open-file limit (None: none, as on Windows)
    reload_on_sighup: bool = False  # SIGHUP re-reads the config and reopens the logs
    workers: WorkerSettings = field(default_factory=WorkerSettings)


class ModServer(service.MultiService):
    """Listens for clients and keeps one supervised worker per configured module."""

    log = logs.server_log

    def __init__(
        self, config: Config, settings: ServerSettings, reactor, demo: bool = False
    ) -> None:
        super().__init__()
        self.config = config
        self.settings = settings
        self.reactor = reactor
        self.demo = demo
        self.supervisors: dict[str, ModuleSupervisor] = {}
        # Removed modules whose workers are still stopping, by name: a module
        # added back waits for them, never two workers on one instrument.
        self._retiring: dict[str, list[defer.Deferred]] = {}
        self._started_at: float | None = None
        self._watch = FileWatch()
        self._poller = task.LoopingCall(self._poll)
        self._poller.clock = reactor
        self._config_missing = False
        self.config_error: str | None = None  # why the config file on disk is not in use
        self.access = settings.access
        self.refusals = RefusalTally()
        self.request_bytes = ByteBudget(
            settings.max_held_requests or max(128 * 1024 * 1024, 2 * settings.max_request)
        )
        board = WatchBoard(
            settings.max_watches_per_client, settings.max_watches, settings.watch_stuck_limit
        )
        self.watches = WatchHub(board, self.module, reactor)
        self.connections = ConnectionLimits(
            self._connection_limit(len(config.modules)), settings.max_connections_per_address
        )
        # Not child services: they must listen before anything else starts,
        # and exactly once under both twistd and twist (see _listen).
        self._listeners = [
            Listener(
                "clients",
                description,
                ClientFactory(self, mutual_tls=security(description) == "mutual TLS"),
                reactor,
            )
            for description in settings.listen
        ]
        if settings.http is not None:
            site = StatusSite(StatusPage(self, settings.http_hosts))
            self._listeners.append(Listener("status page", settings.http, site, reactor))
        self.announcer = Announcer(self, reactor)
        self.announcer.setServiceParent(self)
        self.log_tail = logs.LogTail()
        self._observers: list = []
        self._json_stream = None

    # Service ----------------------------------------------------------------

    def privilegedStartService(self) -> None:
        """Listen first: a port in use must stop us before any worker starts."""
        self._listen()
        super().privilegedStartService()

    def startService(self) -> None:
        """Listen (if twistd did not already), then start every module's worker."""
        self._listen()
        self._start_logging()
        super().startService()
        self._started_at = self.reactor.seconds()
        if self.demo:
            self.log.info(
                "No --config given and no server.config in {cwd}: serving the bundled "
                "demo modules from {path}",
                cwd=os.getcwd(),
                path=self.config.path,
            )
        self.log.info(
            "modserver {version} serving {count} from {path} on {listen}",
            version=modserver.__version__,
            count=plural(len(self.config.modules), "module"),
            path=self.config.path,
            listen=", ".join(self.settings.listen),
        )
        self.log.info(
            "Clients admitted (--allow): {allow}; administrators (--admin-allow): {admin}",
            allow=", ".join(map(str, self.access.allow)),
            admin=", ".join(map(str, self.access.admin)),
        )
        self.log.info(
            "Limits: {total} connections ({per_address} from one address), "
            "{held} MiB of requests held in memory",
            total=self.connections.total,
            per_address=self.connections.per_address,
            held=self.request_bytes.limit // (1024 * 1024),
        )
        if self.settings.reload_on_sighup:
            self.settings.workers.platform.install_reload_handler(
                lambda: self.reactor.callFromThread(self.reload_on_signal)
            )
        if self.config.path is not None:
            self._watch.track(self.config.path, self.config.digest)
        self._apply(self.config)
        self._poller.start(self.settings.poll_interval, now=False)

    def reload_on_signal(self) -> None:
        """SIGHUP: re-read the config (as ``_reload_`` does) and reopen the log files."""
        if self._json_stream is not None:
            self._json_stream.reopen()
        self.log.info("SIGHUP: reopened the log files; re-reading the config")
        try:
            self.reload_config()
        except ReplyError:
            pass  # reload_config logged why; the running modules are unchanged

    def _connection_limit(self, modules: int) -> int:
        if self.settings.max_connections is not None:
            return self.settings.max_connections
        return connection_limit(self.settings.fd_limit, modules)

    def stopService(self) -> defer.Deferred:
        """Stop listening, then stop every worker (each gets its ``__exit__``)."""
        if self._poller.running:
            self._poller.stop()
        self.watches.stop()
        listening = [listener.stop() for listener in self._listeners]
        children = super().stopService()
        reason = ReplyError("ServerStopping", "the server is shutting down")
        stopping = [s.stop(reason) for s in self.supervisors.values()]
        retiring = [d for waits in self._retiring.values() for d in waits]
        done = defer.gatherResults([*listening, children, *stopping, *retiring], consumeErrors=True)
        return done.addBoth(self._stop_logging)

    def _start_logging(self) -> None:
        logs.set_level(self.settings.log_level)
        self._observers = [self.log_tail]
        if self.settings.json_log:
            observer, self._json_stream = logs.json_observer(
                self.settings.json_log, self.settings.json_log_size, self.settings.json_log_count
            )
            self._observers.append(observer)
        for observer in self._observers:
            globalLogPublisher.addObserver(observer)

    def _stop_logging(self, result):
        for observer in self._observers:
            globalLogPublisher.removeObserver(observer)
        self._observers = []
        if self._json_stream is not None:
            self._json_stream.close()
            self._json_stream = None
        return result

    @property
    def bound(self) -> list[BoundPort]:
        """Where the server listens, once bound (for the announcement)."""
        found = []
        for listener in self._listeners:
            address = listener.port.getHost() if listener.port is not None else None
            host, number = getattr(address, "host", None), getattr(address, "port", None)
            if isinstance(host, str) and isinstance(number, int):
                found.append(BoundPort(listener.kind, listener.description, host, number))
        return found

    def _listen(self) -> None:
        for listener in self._listeners:
            if not listener.started:
                listener.start()

    # What clients ask for ----------------------------------------------------

    def module(self, name: str) -> ModuleSupervisor | None:
        return self.supervisors.get(name)

    def why_skipped(self, name: str) -> str | None:
        """Why the config's entry ``name`` is not served, or None if there is no such entry."""
        return self.config.why_skipped(name)

    def may_open(self, who: Identity | None, name: str) -> bool:
        """May ``who`` (None: the server itself) use module ``name``?"""
        supervisor = self.supervisors.get(name)
        if supervisor is None:
            return False
        return who is None or self.access.may_open(who, supervisor.spec.allow)

    def module_names(self, prefix: str = "", who: Identity | None = None) -> list[str]:
        """Module names starting with ``prefix`` that ``who`` may use, in config order."""
        return [n for n in self.supervisors if n.startswith(prefix) and self.may_open(who, n)]

    def help_text(self, who: Identity | None = None) -> str:
        names = ", ".join(self.module_names("", who))
        return f"Available modules: {names}\n\n{HELP_TEXT}"

    def refused(self, who: Identity, what: str, reason: str) -> None:
        """Log a refusal (of ``what``: the server, a module, ...): the first one
        for ``who`` with this reason now, the same ones later counted."""
        if self.refusals.refused(str(who), reason, self.reactor.seconds()):
            self.log.warn("Refused: {reason}", client=str(who), refused=what, reason=reason)

    def _log_refusal_counts(self) -> None:
        for client, reason, count, seconds in self.refusals.due(self.reactor.seconds()):
            self.log.warn(
                "Refused {client} {count} more {times} in the last {seconds:.0f} s: {reason}",
                client=client,
                count=count,
                times="time" if count == 1 else "times",
                seconds=seconds,
                reason=reason,
            )

    def status(self, name: str | None = None, who: Identity | None = None) -> dict:
        """Server facts and the state of each module ``who`` may use (or just ``name``'s)."""
        now = self.reactor.seconds()
        names = [name] if name is not None else self.module_names("", who)
        return {
            "server": {
                "name": self.settings.name,
                "version": modserver.__version__,
                "pid": os.getpid(),
                "python": sys.version.split()[0],
                "uptime": round(now - self._started_at, 3) if self._started_at else 0.0,
                "config": self.config.path,
                "demo": self.demo,
                "listen": list(self.settings.listen),
                "config_problems": list(self.config.problems),
                "config_error": self._config_trouble(),
                "connections": self.connections.open,
            },
            "modules": {n: self._snapshot(n) for n in names},
        }

    def _config_trouble(self) -> str | None:
        """Why the config file on disk is not what runs, or None if it is."""
        if self._config_missing:
            return (
                f"the config file {self.config.path} is missing; the running modules are unchanged"
            )
        return self.config_error

    def _snapshot(self, name: str) -> dict:
        snapshot = self.supervisors[name].snapshot()
        snapshot["readings"] = self.watches.snapshot(name)
        snapshot["log"] = self.log_tail.lines(name)
        return snapshot

    def lease(self, who: Identity, request: LeaseRequest):
        """Carry out a ``_lease`` request for ``who``: a value, a Deferred, or ReplyError."""
        if request.operation == "show" and request.module is None:
            now = self.reactor.seconds()
            return {
                name: self.supervisors[name].leases.describe(now)
                for name in self.module_names("", who)
            }
        supervisor = self.supervisors.get(request.module)
        if supervisor is None:
            raise bad_request(f"{request.module} does not exist (case matters)")
        if not self.may_open(who, request.module):
            raise ReplyError(
                "Forbidden",
                f'{who} may not use {request.module}; the operator can admit it in the "allow" '
                "list of its config entry",
            )
        operation, owner = request.operation, who.owner
        if operation == "take":
            return supervisor.take_lease(owner, request.seconds, request.wait)
        if operation == "renew":
            return supervisor.renew_lease(owner, request.seconds)
        if operation == "release":
            supervisor.release_lease(owner)
            return f"Released the lease on {request.module}"
        if operation == "show":
            return supervisor.leases.describe(self.reactor.seconds())
        if not self.access.is_admin(who):
            raise ReplyError(
                "Forbidden",
                f"{who} may not break the lease on {request.module}: only administrators may; "
                "the operator names them with --admin-allow",
            )
        holder = supervisor.break_lease(str(who))
        return f"Broke {holder}'s lease on {request.module}"

    def break_lease(self, name: str, by: str) -> str | None:
        """End module ``name``'s lease (asked ``by`` someone): who held it, None for no
        such module; ReplyError if it is not leased."""
        supervisor = self.supervisors.get(name)
        return None if supervisor is None else supervisor.break_lease(by)

    def reload_config(self, by: str | None = None) -> None:
        """Re-read the config file and apply it (asked ``by`` someone, or on a change
        or a signal); ReplyError if it cannot be read."""
        if by is not None:
            self.log.info("Config re-read, requested by {by}", by=by)
        try:
            config = read_config(self.config.path)
        except ConfigError as exc:
            self.log.warn(
                "Config not reloaded, the running modules are unchanged: {reason}", reason=str(exc)
            )
            self.config_error = f"{exc}; the running modules are unchanged"
            raise ReplyError("ConfigError", str(exc)) from None
        self.config_error = None
        self.config = config
        self._apply(config)

    def reload_module(self, name: str, by: str = "a client") -> defer.Deferred | None:
        """Restart one module's worker (asked ``by`` someone); None if there is no such module."""
        supervisor = self.supervisors.get(name)
        if supervisor is None:
            return None
        logs.for_module(name).info("restart requested by {by}", module=name, by=by)
        supervisor.stats.restart_requested("reload", f"requested by {by}")
        return supervisor.restart(when_idle=False)

    # Watching files ---------------------------------------------------------

    def _poll(self) -> None:
        """One look at the config file and every module's files."""
        try:
            self._log_refusal_counts()
            wanted = self._watched_files()
            for path in self._watch.paths - set(wanted) - {self.config.path}:
                self._watch.forget(path)
            for path, loaded in wanted.items():
                self._watch.track(path, loaded)
            changed = set(self._watch.poll())
            self._check_config_file(changed)
            for supervisor in list(self.supervisors.values()):
                hits = changed & set(supervisor.files).union(supervisor.spec.watch)
                if hits:
                    supervisor.files_changed(sorted(hits))
        except Exception:
            # A LoopingCall stops for good at the first exception.
            self.log.failure("Looking for changed files failed")

    def _watched_files(self) -> dict[str, bytes | None]:
        wanted: dict[str, bytes | None] = {}
        for supervisor in self.supervisors.values():
            wanted.update(supervisor.files)
            wanted.update(dict.fromkeys(supervisor.spec.watch))
        return wanted

    def _check_config_file(self, changed: set[str]) -> None:
        path = self.config.path
        if path is None:
            return
        missing = not os.path.exists(path)
        if missing and not self._config_missing:
            self.log.warn(
                "Config file {path} is missing; the running modules are unchanged", path=path
            )
        self._config_missing = missing
        if path in changed:
            self.log.info("Config file {path} changed; applying it", path=path)
            try:
                self.reload_config()
            except ReplyError:
                pass  # reload_config logged why; the next change is looked at again

    # Config changes ------------------------------------------------------------

    def _apply(self, config: Config) -> None:
        """Start added modules, restart changed ones, stop removed ones."""
        # More workers need more descriptors: fewer are left for connections.
        self.connections.total = self._connection_limit(len(config.modules))
        for problem in config.problems:
            self.log.warn("{problem}", problem=problem)
        old, new = self.supervisors, {}
        for spec in config.modules:
            for path in spec.watch:
                self._watch.track(path)  # from now: the worker about to start sees this
            supervisor = old.get(spec.name)
            if supervisor is None:
                supervisor = ModuleSupervisor(spec, self.settings.workers, self.reactor)
                supervisor.on_publish = self.watches.published
                self._start_after_retired(supervisor)
            elif supervisor.spec.needs_restart(spec):
                logs.for_module(spec.name).info(
                    "config entry changed; restarting once idle", module=spec.name
                )
                supervisor.update(spec)
            elif supervisor.spec != spec:
                logs.for_module(spec.name).info(
                    "config entry changed; applied without a restart", module=spec.name
                )
                supervisor.spec = spec
            new[spec.name] = supervisor
        self.supervisors = new
        self._stand_readings(config)
        for name, supervisor in old.items():
            if name not in new:
                logs.for_module(name).info("removed from the config; stopping", module=name)
                self._retire(supervisor)

    def _stand_readings(self, config: Config) -> None:
        """Watch the readings the config names (and no others) from now on."""
        wanted = {}
        for spec in config.modules:
            for reading in spec.readings:
                key = reading_key(spec.name, reading.function, json.loads(reading.args))
                wanted[key] = (reading.name, reading.every)
        self.watches.stand_only(wanted)

    def _start_after_retired(self, supervisor: ModuleSupervisor) -> None:
        retiring = self._retiring.get(supervisor.name)
        if not retiring:
            supervisor.start()
            return
        logs.for_module(supervisor.name).info(
            "waiting for the previous worker to stop before starting", module=supervisor.name
        )
        gone = defer.DeferredList(list(retiring), consumeErrors=True)
        gone.addCallback(lambda _: self._start_if_current(supervisor))

    def _start_if_current(self, supervisor: ModuleSupervisor) -> None:
        if self.running and self.supervisors.get(supervisor.name) is supervisor:
            supervisor.start()

    def _retire(self, supervisor: ModuleSupervisor) -> None:
        name = supervisor.name
        reason = ReplyError("ModuleRemoved", f"{name} was removed from the config")
        stopped = supervisor.stop(reason)
        self._retiring.setdefault(name, []).append(stopped)

        def retired(result):
            waits = self._retiring.get(name, [])
            if stopped in waits:
                waits.remove(stopped)
            if not waits:
                self._retiring.pop(name, None)
            return result

        stopped.addBoth(retired)
