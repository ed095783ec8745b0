"""``twistd modserver``: command-line options and the service they make."""

from __future__ import annotations

import functools
import os
import sys
from platform import python_version

from twisted.copyright import version as twisted_version
from twisted.internet import endpoints
from twisted.logger import LogLevel
from twisted.python import usage

import modserver
from modserver.lab import discovery
from modserver.net.endpoints import windows_paths_escaped
from modserver.server import access, endpoint_help, logs
from modserver.server.config import ConfigError, read_config
from modserver.server.service import ModServer, ServerSettings
from modserver.supervision.leases import DEFAULT_MAX_LEASE
from modserver.supervision.lifecycle import RestartPolicy
from modserver.supervision.supervisor import WorkerSettings
from modserver.supervision.watches import (
    DEFAULT_MAX_PER_IDENTITY,
    DEFAULT_MAX_WATCHES,
    DEFAULT_STUCK_LIMIT,
)
from modserver.worker import platforms

DEFAULT_PORT = 36577
DEFAULT_INTERFACE = "127.0.0.1"
DEFAULT_CONFIG = "server.config"
DEMO_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demo", "server.config"
)

LOG_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}
STDLIB_LEVELS = {
    LogLevel.debug: 10,
    LogLevel.info: 20,
    LogLevel.warn: 30,
    LogLevel.error: 40,
    LogLevel.critical: 50,
}

_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def size(text: str) -> int:
    """A byte count such as ``16777216``, ``64M`` or ``1G``."""
    unsuffixed = text.strip().upper().removesuffix("B")
    unit = unsuffixed[-1:] if unsuffixed[-1:] in _SIZE_UNITS else ""
    try:
        value = float(unsuffixed[: len(unsuffixed) - len(unit)])
    except ValueError:
        value = 0
    if not value > 0:
        raise ValueError(f"{text!r} is not a byte count (such as 16777216, 64M or 1G)")
    return int(value * _SIZE_UNITS[unit])


size.coerceDoc = "A byte count; K, M and G suffixes allowed."


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{text!r} is not a whole number of at least 1")
    return value


def count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{text!r} is not a whole number of at least 0")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not (value > 0 and value != float("inf")):
        raise ValueError(f"{text!r} is not a positive number of seconds")
    return value


def _named(parameter: list) -> list:
    """An optParameters entry whose coerce function names the option in its error
    (usage.Options says only "Parameter type enforcement failed")."""
    if len(parameter) < 5:
        return parameter
    name, coerce = parameter[0], parameter[4]

    def named(text: str):
        try:
            return coerce(text)
        except ValueError as exc:
            raise ValueError(f"--{name}: {exc}") from None

    named.coerceDoc = getattr(coerce, "coerceDoc", None)
    return [*parameter[:4], named]


def _help(text: str):
    """Give an ``opt_`` method its ``--help`` text (usage.Options reads the docstring)."""

    def give(method):
        method.__doc__ = text
        return method

    return give


ENDPOINT_EXAMPLES = """
Endpoints for --listen (each one argument):
  tcp:36577:interface=0.0.0.0
      plain TCP on every address (interface=127.0.0.1: this PC only)
  ssl:36578:certKey=server.pem:privateKey=server.key
      TLS
  mtls:36578:certKey=server.pem:privateKey=server.key:caCerts=lab-ca.pem
      mutual TLS: clients need a certificate signed by the CA
  systemd:domain=INET:index=0
      a socket passed by systemd (socket activation)
"""


class Options(usage.Options):
    """Options of ``twistd modserver``."""

    synopsis = "[--config PATH] [--listen ENDPOINT ...] [options]"
    longdesc = (
        "Runs each module named in the config file in its own worker process and "
        "serves ModuleServer clients (MATLAB hwserver, the Python client, telnet) "
        "on the given endpoints.  Without --config it uses ./server.config, or the "
        "bundled demo modules if there is none."
    )

    def getUsage(self, width: int | None = None) -> str:  # noqa: N802 - Twisted's name
        """Twisted's usage text, then the endpoint examples, each whole on its line
        (Twisted's wrapping would cut them in the middle)."""
        return super().getUsage(width) + ENDPOINT_EXAMPLES

    optParameters = [
        ["config", "c", None, "The JSON config file naming the modules."],
        [
            "port",
            "p",
            None,
            f"Listen on this TCP port (default {DEFAULT_PORT}); a shortcut for --listen.",
            int,
        ],
        [
            "interface",
            "i",
            None,
            f"With --port: the address to listen on (default "
            f"{DEFAULT_INTERFACE}; 0.0.0.0 for every interface).",
        ],
        ["name", None, "modserver", "This server's name, shown by _status."],
        [
            "log-level",
            None,
            "info",
            "Lowest level logged: debug, info, warn (or warning), error, critical.",
        ],
        [
            "keepalive-timeout",
            None,
            1.0,
            "Seconds an idle keep-alive connection stays open.",
            seconds,
        ],
        [
            "idle-timeout",
            None,
            60.0,
            "Seconds a connection may wait before its first message or request.",
            seconds,
        ],
        ["max-request", None, 64 * 1024**2, "Longest request line accepted.", size],
        ["max-reply", None, 1024**3, "Longest reply line a module may send.", size],
        [
            "max-held-requests",
            None,
            None,
            "Request bytes held in memory at once (lines being received and requests "
            "waiting); more get Busy (default: 128M, or twice --max-request if larger)",
            size,
        ],
        [
            "max-connections",
            None,
            None,
            "Connections open at once; more get Busy (default: from the open-file limit, "
            "keeping descriptors for workers and logs, at most 10000).",
            positive_int,
        ],
        [
            "max-connections-per-address",
            None,
            100,
            "Connections open at once from one address; more get Busy.",
            positive_int,
        ],
        [
            "json-log",
            None,
            None,
            "Also write the log as JSON records to this file (rotated; read it with "
            "twisted.logger.eventsFromJSONLogFile or jq --seq).",
        ],
        ["json-log-size", None, 10 * 1024**2, "Rotate the JSON log at this size.", size],
        ["json-log-count", None, 5, "How many rotated JSON log files to keep.", count],
        [
            "http",
            None,
            None,
            "Serve a status page on this endpoint (a bare port number listens on "
            "127.0.0.1 only), e.g. 8080 or tcp:8080:interface=0.0.0.0.",
        ],
        [
            "poll-interval",
            None,
            0.5,
            "Seconds between looks at the config file and the modules' files "
            "(a change reloads what it affects).",
            seconds,
        ],
        [
            "backoff-cap",
            None,
            30.0,
            "Longest wait, in seconds, before restarting a worker that keeps dying.",
            seconds,
        ],
        [
            "max-watches",
            None,
            DEFAULT_MAX_WATCHES,
            "Watches the server holds at once; more get Busy.",
            positive_int,
        ],
        [
            "max-watches-per-client",
            None,
            DEFAULT_MAX_PER_IDENTITY,
            "Watches one client (address, or certificate CN) holds at once; more get Busy.",
            positive_int,
        ],
        [
            "watch-stuck-limit",
            None,
            DEFAULT_STUCK_LIMIT,
            "Seconds a watcher may read nothing before it is disconnected.",
            seconds,
        ],
        [
            "max-lease",
            None,
            DEFAULT_MAX_LEASE,
            "Longest lease, in seconds, a module grants unless its config entry says (max_lease).",
            seconds,
        ],
        [
            "stop-grace",
            None,
            5.0,
            "Seconds a worker gets to stop (its __exit__) before "
            "SIGTERM; SIGKILL follows 2 s later.",
            seconds,
        ],
    ]

    optParameters = [_named(parameter) for parameter in optParameters]

    optFlags = [
        ["no-access-log", None, "Do not log a line for every call."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["allow"] = []
        self["admin-allow"] = []
        self["http-host"] = []

    @_help(
        "Listen on a Twisted endpoint (repeatable), e.g. tcp:36577:interface=0.0.0.0; "
        "ssl: for TLS, mtls: for mutual TLS (endpoints below). "
        "File paths starting with a drive (certKey=C:\\certs\\server.pem) are taken as "
        "written; any other colon in a value is written \\: and a backslash \\\\."
    )
    def opt_listen(self, description: str) -> None:
        self["listen"].append(description)

    opt_l = opt_listen

    @_help(
        "Admit clients from this address or network (repeatable): 10.0.1.0/24, "
        "10.0.1.7, 2001:db8::/48, loopback, local (loopback and the networks of "
        "this computer's interfaces), any; over mutual TLS also cn:NAME (a client "
        "certificate's CN) and cn:* (any client certificate). Others get "
        '"Forbidden". Default: local'
    )
    def opt_allow(self, rule: str) -> None:
        self["allow"].append(rule)

    @_help(
        "Administrators (repeatable; the same rules as --allow, cn:NAME naming a "
        "client certificate's CN over mutual TLS): they may reload modules, re-read "
        "the config, and end a worker with a request's timeout. Default: loopback"
    )
    def opt_admin_allow(self, rule: str) -> None:
        self["admin-allow"].append(rule)

    @_help(
        "A host name the status page answers to (repeatable), besides IP addresses, "
        "localhost and this computer's own name"
    )
    def opt_http_host(self, name: str) -> None:
        self["http-host"].append(name)

    # Announcing on the lab network (modserver.lab.announce) -----------------

    def opt_announce(self) -> None:
        """Announce on the lab network (DNS-SD, needs zeroconf); default beyond loopback."""
        self["announce"] = True

    def opt_no_announce(self) -> None:
        """Do not announce this server on the lab network."""
        self["announce"] = False

    def opt_version(self) -> None:
        """Show modserver's version (with Twisted's and Python's) and exit."""
        print(
            f"modserver {modserver.__version__} "
            f"(Twisted {twisted_version}, Python {python_version()})"
        )
        sys.exit(0)

    def postOptions(self) -> None:
        if self["log-level"].lower() not in LOG_LEVELS:
            raise usage.UsageError(f"--log-level must be one of {', '.join(LOG_LEVELS)}")
        try:
            self["allow-rules"] = access.parse_rules(self["allow"] or access.DEFAULT_ALLOW)
        except ValueError as exc:
            raise usage.UsageError(f"--allow: {exc}") from None
        try:
            self["admin-rules"] = access.parse_rules(
                self["admin-allow"] or access.DEFAULT_ADMIN_ALLOW
            )
        except ValueError as exc:
            raise usage.UsageError(f"--admin-allow: {exc}") from None
        if self["port"] is not None or self["interface"] is not None:
            port = self["port"] if self["port"] is not None else DEFAULT_PORT
            interface = self["interface"] or DEFAULT_INTERFACE
            if interface.count(":") == 1:  # 0.0.0.0:36577: a port where an address goes
                raise usage.UsageError(
                    f"--interface takes an address only, not {interface!r}: give the port "
                    "with --port (as in --interface 0.0.0.0 --port 36577)"
                )
            if interface == "localhost":
                interface = "127.0.0.1"
            self["listen"].append(f"tcp:{port}:interface={interface.replace(':', chr(92) + ':')}")
        if not self["listen"]:
            self["listen"].append(f"tcp:{DEFAULT_PORT}:interface={DEFAULT_INTERFACE}")


EXIT_USAGE = 2  # exit status for a mistake in the command line


def config_location(given: str | None) -> tuple[str, bool]:
    """The config file to use and whether it is the bundled demo."""
    if given:
        return given, False
    if os.path.exists(DEFAULT_CONFIG):
        return os.path.abspath(DEFAULT_CONFIG), False
    return DEMO_CONFIG, True


def _platform() -> platforms.Platform:
    """This system's platform layer, or the portable one (MODSERVER_PLATFORM)."""
    try:
        platform = platforms.current()
    except ValueError as exc:
        raise SystemExit(f"modserver: {exc}") from None
    if platform.name == "portable":
        logs.server_log.warn(
            "{var}=portable: workers are handled as on Windows, without Win32 (no process "
            "groups, a channel reader thread, stopped by message then killed)",
            var=platforms.ENV_VAR,
        )
    return platform


def makeService(options: Options, reactor=None) -> ModServer:
    """Build the server from parsed options; a bad setup exits with one line."""
    if reactor is None:
        from twisted.internet import reactor
    path, demo = config_location(options["config"])
    try:
        config = read_config(path)
    except ConfigError as exc:
        raise SystemExit(f"modserver: {exc}") from None
    for description in options["listen"]:
        try:
            endpoints.serverFromString(reactor, windows_paths_escaped(description))
        except Exception as exc:
            raise SystemExit(
                f"modserver: bad --listen endpoint {description!r}: "
                f"{endpoint_help.explain(description, exc)}"
            ) from None
    json_log = options["json-log"]
    problem = json_log and logs.cannot_open(json_log)
    if problem:  # a usage mistake: said before anything starts, as an option's
        sys.stderr.write(f"modserver: cannot open --json-log {json_log}: {problem}\n")
        raise SystemExit(EXIT_USAGE)
    platform = _platform()
    fd_limit = platform.raise_fd_limit()
    log_level = LOG_LEVELS[options["log-level"].lower()]
    http = options["http"]
    if http is not None and http.isdigit():
        http = f"tcp:{http}:interface={DEFAULT_INTERFACE}"  # loopback unless told otherwise
    for description in filter(None, [http]):
        try:
            endpoints.serverFromString(reactor, windows_paths_escaped(description))
        except Exception as exc:
            raise SystemExit(
                f"modserver: bad --http endpoint {description!r}: "
                f"{endpoint_help.explain(description, exc)}"
            ) from None
    settings = ServerSettings(
        name=options["name"],
        listen=tuple(options["listen"]),
        max_request=options["max-request"],
        keepalive_timeout=options["keepalive-timeout"],
        idle_timeout=options["idle-timeout"],
        poll_interval=options["poll-interval"],
        log_level=log_level,
        json_log=options["json-log"],
        json_log_size=options["json-log-size"],
        json_log_count=options["json-log-count"],
        http=http,
        http_hosts=tuple(options["http-host"]),
        max_held_requests=options["max-held-requests"],
        max_connections=options["max-connections"],
        max_connections_per_address=options["max-connections-per-address"],
        max_watches=options["max-watches"],
        max_watches_per_client=options["max-watches-per-client"],
        watch_stuck_limit=options["watch-stuck-limit"],
        fd_limit=fd_limit,
        reload_on_sighup=True,
        access=access.AccessPolicy(
            allow=options["allow-rules"],
            admin=options["admin-rules"],
            local_networks=access.interface_networks,
            clock=reactor.seconds,
        ),
        workers=WorkerSettings(
            import_paths=(config.base_dir, os.getcwd()),
            max_reply=options["max-reply"],
            log_level=STDLIB_LEVELS[log_level],
            access_log=not options["no-access-log"],
            stop_grace=options["stop-grace"],
            max_lease=options["max-lease"],
            restart_policy=functools.partial(RestartPolicy, cap=options["backoff-cap"]),
            platform=platform,
        ),
    )
    settings.announce = announce_setting(options)
    return ModServer(config, settings, reactor, demo=demo)


def announce_setting(options: Options) -> bool | None:
    """--announce, --no-announce, or None (announce when listening beyond loopback);
    an explicit --announce without zeroconf exits with what to install."""
    setting = options.get("announce")
    if setting:
        try:
            discovery.load_zeroconf()
        except discovery.DiscoveryUnavailable:
            raise SystemExit(
                f"modserver: --announce needs python-zeroconf, which is not installed: "
                f"{discovery.INSTALL_HINT}"
            ) from None
    return setting
