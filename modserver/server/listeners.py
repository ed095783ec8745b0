"""The server's listening sockets, from endpoint strings.

A port that cannot be had must stop the server before any worker starts,
with one line saying why; the listeners also say where they listen and
whether it is TLS.  Twisted's ``strports.service`` hides the port it gets,
so this keeps the endpoint's Deferred itself.
"""

from __future__ import annotations

from twisted.internet import defer, endpoints, error
from twisted.python import context
from twisted.python.log import ILogContext

from modserver.net.endpoints import windows_paths_escaped
from modserver.server import logs

# Endpoint prefixes that serve TLS, and how the log names them.
TLS_PREFIXES = {"ssl": "TLS", "tls": "TLS", "mtls": "mutual TLS"}

# Twisted's TCP endpoints queue 50 connections not yet accepted; a burst of
# clients beyond that waits a second or more for the kernel to retry.
LISTEN_BACKLOG = 1024
_BACKLOG_PREFIXES = ("tcp", "tcp6", "ssl", "tls")


def with_backlog(description: str) -> str:
    """``description`` with ``backlog=1024`` added to a TCP or TLS endpoint that sets none."""
    kind = description.split(":", 1)[0].strip().lower()
    if kind not in _BACKLOG_PREFIXES or "backlog=" in description:
        return description
    return f"{description}:backlog={LISTEN_BACKLOG}"


def security(description: str) -> str:
    """``"TLS"``, ``"mutual TLS"`` or ``""`` (plain TCP) for an endpoint string."""
    return TLS_PREFIXES.get(description.split(":", 1)[0].strip().lower(), "")


def page_urls(host: str, port: int, local: list[str] | None = None) -> list[str]:
    """The status page's URLs for a listener bound to ``host``: for a wildcard
    (0.0.0.0, ::), localhost and this PC's addresses (``local``: all of them)."""
    from modserver.lab import announce  # (which imports this module)

    def url(address: str) -> str:
        return f"http://[{address}]:{port}/" if ":" in address else f"http://{address}:{port}/"

    if host not in (*announce.WILDCARD_V4, announce.WILDCARD_V6):
        return [url(host)]
    if local is None:
        try:
            local = announce.local_addresses()
        except Exception:  # noqa: BLE001 - naming them is a courtesy; serving goes on
            local = []
    return [url("localhost"), *map(url, announce.advertised_addresses(host, local))]


class Listener:
    """One endpoint the server listens on, for clients or for the status page."""

    log = logs.server_log

    def __init__(self, kind: str, description: str, factory, reactor) -> None:
        self.kind = kind
        self.description = description
        self.factory = factory
        self.reactor = reactor
        self.port = None  # the IListeningPort, once listening
        self._listening: defer.Deferred | None = None

    @property
    def started(self) -> bool:
        return self._listening is not None

    def start(self) -> None:
        """Listen; SystemExit with the reason if the endpoint cannot be had now."""
        endpoint = endpoints.serverFromString(
            self.reactor, with_backlog(windows_paths_escaped(self.description))
        )
        failures = []
        # Twisted's port says "<Factory> starting on <port>" as it listens: a
        # line with no text here, as this listener says where it listens.
        quiet = {ILogContext: {"log_format": ""}}
        self._listening = context.call(quiet, endpoint.listen, self.factory)
        self._listening.addCallbacks(self._listened, failures.append)
        if failures:  # TCP, TLS, UNIX and systemd endpoints fail at once
            exc = failures[0].value
            reason = exc.socketError if isinstance(exc, error.CannotListenError) else exc
            raise SystemExit(f"modserver: cannot listen on {self.description}: {reason}")

    def _listened(self, port) -> None:
        self.port = port
        address = port.getHost()
        host, number = getattr(address, "host", address), getattr(address, "port", "")
        if self.kind == "status page":
            self.log.info("status page on {urls}", urls=", ".join(page_urls(host, number)))
            return
        kind = security(self.description)
        self.log.info(
            "listening on {host}:{port}{security}",
            host=host,
            port=number,
            security=f" ({kind})" if kind else "",
        )

    def stop(self) -> defer.Deferred:
        """Stop listening (connections already made are not closed)."""
        if self.port is None:
            return defer.succeed(None)
        port, self.port = self.port, None
        return defer.maybeDeferred(port.stopListening)
