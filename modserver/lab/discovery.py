"""Finding modservers on the lab network: DNS-SD (``_modserver._tcp``) over multicast DNS.

Servers announce themselves (see modserver.lab.announce); this module finds
them, asks each for its modules and picks the one server that offers a
module.  It speaks what Bonjour and Avahi speak, through python-zeroconf,
an optional dependency (``pip install '.[discovery]'`` in the checkout) imported
only when something here is used.

Clients load it (``modserver.client.Lab``), so it keeps Python 3.7 syntax
and needs nothing beyond the standard library and zeroconf.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import threading
import time

from modserver.client import (
    Client,
    ClientError,
    ConnectionFailed,
    ReplyTimeout,
    ServerError,
)

SERVICE_TYPE = "_modserver._tcp.local."
DEFAULT_TIMEOUT = 2.0  # seconds to resolve a server's announcement, and to ask it its modules

# TXT record keys (docs/operating.md lists them).  Kept short: every
# announcement carries them.
TXT_NAME = "name"  # the server's --name
TXT_VERSION = "version"  # modserver's version
TXT_PORT = "port"  # the plain TCP port, absent if there is none
TXT_TLS_PORT = "tls_port"  # the TLS port (ssl: or mtls: listener), absent if none
TXT_HTTP = "http"  # the status page's port, if it listens beyond loopback

INSTALL_HINT = "pip install '.[discovery]' in modserver's checkout (or pip install zeroconf)"

# How long a look around the network collects answers.  mDNS has no "that
# was everyone": a responder answers within about 0.1 s, except that it
# holds back a record it multicast less than a second before (RFC 6762,
# section 14): a server that has just announced itself answers the first
# question up to about 1.3 s later.  Two seconds leave room for that.
DEFAULT_WAIT = 2.0


class DiscoveryUnavailable(ClientError):
    """python-zeroconf is not installed."""


class ModuleNotFound(ClientError):
    """No server on the lab network offers the module."""


class AmbiguousModule(ClientError):
    """More than one server offers the module: the caller must choose."""


def load_zeroconf():
    """The zeroconf package, or DiscoveryUnavailable saying what to install."""
    try:
        import zeroconf
    except ImportError:
        raise DiscoveryUnavailable(
            "finding servers on the lab network needs python-zeroconf, which is not "
            "installed: " + INSTALL_HINT
        ) from None
    return zeroconf


# What an announcement says ---------------------------------------------------------


class Server:
    """One announced modserver: its DNS-SD instance and what its records say."""

    def __init__(
        self,
        instance: str,
        name: str,
        version: str,
        addresses: list,
        port: int = None,
        tls_port: int = None,
        http: int = None,
    ) -> None:
        self.instance = instance  # unique on the network, e.g. "lasers on labpc1"
        self.name = name
        self.version = version
        self.addresses = list(addresses)
        self.port = port
        self.tls_port = tls_port
        self.http = http

    def __repr__(self) -> str:
        return "<Server %r at %s>" % (self.instance, ", ".join(self.addresses))

    def __eq__(self, other) -> bool:
        return isinstance(other, Server) and vars(self) == vars(other)

    def endpoints(self) -> list:
        """(host, port) pairs the plain-TCP client can try, in the announced order."""
        if self.port is None:
            return []
        return [(address, self.port) for address in self.addresses]

    def status_page(self) -> str:
        """The status page's address, or "" if it does not serve one to the network."""
        if self.http is None or not self.addresses:
            return ""
        return "http://%s/" % _join(self.addresses[0], self.http)

    def as_dict(self) -> dict:
        return {
            "instance": self.instance,
            "name": self.name,
            "version": self.version,
            "addresses": self.addresses,
            "port": self.port,
            "tls_port": self.tls_port,
            "status_page": self.status_page() or None,
        }


def instance_of(full_name: str) -> str:
    """``"lasers on pc1._modserver._tcp.local."`` -> ``"lasers on pc1"``."""
    if full_name.endswith("." + SERVICE_TYPE):
        return full_name[: -len(SERVICE_TYPE) - 1]
    return full_name


def _port(text) -> int:
    try:
        port = int(text)
    except (TypeError, ValueError):
        return None
    return port if 0 < port < 65536 else None


def server_from_records(full_name: str, addresses: list, srv_port: int, properties: dict) -> Server:
    """A Server from the records of one announcement (TXT keys and values as bytes)."""
    text = {}
    for key, value in properties.items():
        key = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        text[key] = value
    tls_port = _port(text.get(TXT_TLS_PORT))
    if TXT_PORT in text:
        port = _port(text.get(TXT_PORT))
    elif tls_port is None:
        port = srv_port  # announced by something that did not say: take SRV's word
    else:
        port = None
    return Server(
        instance_of(full_name),
        text.get(TXT_NAME) or instance_of(full_name),
        text.get(TXT_VERSION) or "",
        addresses,
        port,
        tls_port,
        _port(text.get(TXT_HTTP)),
    )


def _join(host: str, port: int) -> str:
    return "[%s]:%s" % (host, port) if ":" in host else "%s:%s" % (host, port)


# Watching the network --------------------------------------------------------------


def _open_zeroconf(zeroconf):
    try:
        return zeroconf.Zeroconf()
    except (OSError, RuntimeError) as exc:  # RuntimeError: no interface with an address
        raise DiscoveryUnavailable(
            "cannot speak multicast DNS on this computer's network interfaces: %s" % exc
        ) from None


class Browser:
    """Keeps the names of the modservers announced on the network current.

    zeroconf's own thread delivers the changes; ``on_change(full_name,
    gone)`` is called from that thread, so it must only hand the news on.
    Pass ``zc`` to share a Zeroconf instance (the server announces with the
    same one); otherwise the browser makes one and closes it.
    """

    def __init__(self, zc=None, on_change=None) -> None:
        zeroconf = load_zeroconf()
        self._own = zc is None
        self.zc = _open_zeroconf(zeroconf) if zc is None else zc
        self._gone_state = zeroconf.ServiceStateChange.Removed
        self._on_change = on_change
        self._lock = threading.Lock()
        self._names = set()
        self.started = time.monotonic()
        # Multicast questions (QM) only: a unicast answer (QU), sent to port
        # 5353 on a computer where a server and this client both listen on
        # it, reaches one of the two sockets, maybe not ours.
        self._qm = zeroconf.DNSQuestionType.QM
        try:
            self._browser = zeroconf.ServiceBrowser(
                self.zc, SERVICE_TYPE, handlers=[self._changed], question_type=self._qm
            )
        except BaseException:
            if self._own:
                self.zc.close()
            raise

    def _changed(self, zeroconf, service_type, name, state_change) -> None:
        gone = state_change == self._gone_state
        with self._lock:
            if gone:
                self._names.discard(name)
            else:
                self._names.add(name)
        if self._on_change is not None:
            self._on_change(name, gone)

    def names(self) -> list:
        """Full DNS-SD names of the servers announced now."""
        with self._lock:
            return sorted(self._names)

    def settle(self, wait: float) -> None:
        """Return once the browser has listened for ``wait`` seconds since it started."""
        left = self.started + wait - time.monotonic()
        if left > 0:
            # The answers' collection window (see DEFAULT_WAIT): there is no
            # event that says the last server has answered.
            time.sleep(left)

    def resolve(self, full_name: str, timeout: float = DEFAULT_TIMEOUT) -> Server:
        """The announcement's records as a Server, or None if they did not come in time.

        Blocks: never call it from zeroconf's thread (``on_change``).
        """
        info = self.zc.get_service_info(
            SERVICE_TYPE, full_name, timeout=int(timeout * 1000), question_type=self._qm
        )
        if info is None or info.port is None:
            return None
        return server_from_records(
            full_name, info.parsed_addresses(), info.port, info.properties or {}
        )

    def servers(self, timeout: float = DEFAULT_TIMEOUT) -> list:
        """Every server announced now, resolved (in parallel), by instance name."""
        names = self.names()
        if not names:
            return []
        with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
            found = list(pool.map(lambda name: self.resolve(name, timeout), names))
        return sorted((s for s in found if s is not None), key=lambda s: s.instance.lower())

    def close(self) -> None:
        self._browser.cancel()
        if self._own:
            self.zc.close()


# Asking each server for its modules ------------------------------------------------


class Listing:
    """A server and what it answered to ``_get_modules`` (or why it did not)."""

    def __init__(
        self, server: Server, modules: list = None, host=None, error: str = None, port=None
    ):
        self.server = server
        self.modules = modules  # None if the server could not be asked
        self.host = host  # the address that answered
        self.port = port if port is not None else server.port  # the port that answered
        self.error = error

    def __repr__(self) -> str:
        return "<Listing %r %s>" % (self.server.instance, self.modules or self.error)

    def address(self) -> str:
        return _join(self.host, self.port) if self.host else ""

    def as_dict(self) -> dict:
        found = self.server.as_dict()
        found.update(
            {
                "host": self.host,
                "address": self.address() or None,
                "modules": self.modules,
                "error": self.error,
            }
        )
        return found


def ask_modules(server: Server, timeout: float = DEFAULT_TIMEOUT, tls=None) -> Listing:
    """Ask ``server`` for its modules at each announced address until one answers.

    With ``tls`` (an ssl.SSLContext, see client.tls_context), over its TLS port.
    """
    if tls is not None:
        endpoints = [(address, server.tls_port) for address in server.addresses]
        if server.tls_port is None:
            return Listing(server, error="announces no TLS port")
    else:
        endpoints = server.endpoints()
        if not endpoints:
            reason = "announces only a TLS port (%s): give the client TLS files to use it" % (
                server.tls_port
            )
            return Listing(server, error=reason)
    reasons = []
    for host, port in endpoints:
        try:
            modules = Client(host, port, timeout, tls=tls).get_modules()
        except (ConnectionFailed, ReplyTimeout, ServerError) as exc:
            reasons.append(str(exc))
            continue
        return Listing(server, list(modules), host, port=port)
    return Listing(server, error="; ".join(reasons))


def survey(servers: list, timeout: float = DEFAULT_TIMEOUT, tls=None) -> list:
    """Every server's Listing, asked in parallel (one slow server delays no other)."""
    if not servers:
        return []
    with concurrent.futures.ThreadPoolExecutor(len(servers)) as pool:
        return list(pool.map(lambda server: ask_modules(server, timeout, tls), servers))


def choose(module: str, listings: list, wait: float = DEFAULT_WAIT) -> Listing:
    """The one listing that offers ``module``; a clear error if none or several do."""
    offering = [each for each in listings if each.modules and module in each.modules]
    if len(offering) == 1:
        return offering[0]
    if offering:
        where = " and ".join(
            "%r (%s)" % (each.server.instance, each.address()) for each in offering
        )
        raise AmbiguousModule(
            "%r is offered by %d servers: %s; call one of them by its address, e.g. "
            "Client(%r, %d)" % (module, len(offering), where, offering[0].host, offering[0].port)
        )
    seen = ", ".join(_summary(each) for each in listings) or "none"
    raise ModuleNotFound(
        "no modserver on the lab network offers %r (servers found in %g s: %s)"
        % (module, wait, seen)
    )


def _summary(listing: Listing) -> str:
    if listing.modules is None:
        return "%r (not answering: %s)" % (listing.server.instance, listing.error)
    return "%r (%s)" % (listing.server.instance, ", ".join(listing.modules) or "no modules")


def discover(wait: float = DEFAULT_WAIT, timeout: float = DEFAULT_TIMEOUT, tls=None) -> list:
    """Look around the network for ``wait`` seconds; every server's Listing."""
    browser = Browser()
    try:
        browser.settle(wait)
        return survey(browser.servers(timeout), timeout, tls)
    finally:
        browser.close()


def shared_modules(listings: list) -> dict:
    """Module names offered by more than one server: name -> instances."""
    offered = {}
    for listing in listings:
        for module in listing.modules or ():
            offered.setdefault(module, []).append(listing.server.instance)
    return {module: where for module, where in offered.items() if len(where) > 1}


def format_listings(listings: list, wait: float = DEFAULT_WAIT, as_json: bool = False) -> str:
    """``modserver-client discover``'s output."""
    if as_json:
        return json.dumps([listing.as_dict() for listing in listings])
    if not listings:
        return (
            "no modserver announced itself on the lab network within %g s "
            "(--wait listens longer)" % wait
        )
    lines = []
    for listing in listings:
        server = listing.server
        where = listing.address() or ", ".join(server.addresses)
        lines.append("%s at %s (modserver %s)" % (server.instance, where, server.version or "?"))
        if listing.modules is None:
            lines.append("  not answering: %s" % listing.error)
        else:
            lines.append("  modules: %s" % (", ".join(listing.modules) or "(none)"))
        if server.tls_port is not None:
            lines.append("  TLS port: %s" % server.tls_port)
        if server.status_page():
            lines.append("  status page: %s" % server.status_page())
    for module, where in sorted(shared_modules(listings).items()):
        lines.append(
            "note: %s is offered by %d servers: %s" % (module, len(where), ", ".join(where))
        )
    return "\n".join(lines)


# Lab: modules by name, wherever they are -------------------------------------------


class Finder:
    """Which server offers a module: looked up once, remembered until the network changes.

    The answer is forgotten whenever a server appears, disappears or
    changes its announcement (a new server might offer the same module, so
    the answer might no longer be unique), and when ``forget`` is called
    after a failed call.  ``browser`` and ``survey`` are injectable for tests.
    """

    def __init__(
        self,
        wait: float = DEFAULT_WAIT,
        timeout: float = DEFAULT_TIMEOUT,
        browser=None,
        survey=survey,
        tls=None,
    ) -> None:
        self.wait = wait
        self.timeout = timeout
        self._lock = threading.Lock()
        self._answers = {}
        self._generation = 0  # counts network changes: an answer older than one is stale
        # With an ssl.SSLContext, servers are asked over their TLS ports.
        self._survey = functools.partial(survey, tls=tls) if tls is not None else survey
        self._browser = browser if browser is not None else Browser(on_change=self._changed)

    def _changed(self, full_name: str, gone: bool) -> None:
        with self._lock:
            self._answers.clear()
            self._generation += 1

    def locate(self, module: str) -> Listing:
        """The listing of the one server that offers ``module``."""
        with self._lock:
            known = self._answers.get(module)
            generation = self._generation
        if known is not None:
            return known
        listing = choose(module, self.servers(), self.wait)
        with self._lock:
            if generation == self._generation:
                self._answers[module] = listing
        return listing

    def forget(self, module: str) -> None:
        """Look ``module`` up again next time (its server did not answer)."""
        with self._lock:
            self._answers.pop(module, None)

    def servers(self) -> list:
        """Every server announced now, with its modules."""
        self._browser.settle(self.wait)
        return self._survey(self._browser.servers(self.timeout), self.timeout)

    def close(self) -> None:
        self._browser.close()
