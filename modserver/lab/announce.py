"""Announcing the server on the lab network: DNS-SD (``_modserver._tcp``) over multicast DNS.

The decisions (whether to announce, which addresses, which records) are
plain functions.  ``Announcer`` is the Twisted glue, a child service of
the server: python-zeroconf blocks (probing that a name is free takes a
second or two), so every call into it runs in the reactor's thread pool and
its news comes back to the reactor with ``callFromThread``.  The reactor
never waits for the network.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import socket
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from twisted.application import service
from twisted.internet import defer, threads
from twisted.python.failure import Failure

import modserver
from modserver.client import DEFAULT_PORT
from modserver.lab import discovery
from modserver.server import logs
from modserver.server.listeners import security

# Records live this long in other computers' caches (RFC 6762 suggests 75
# minutes for most): a server that dies without withdrawing drops out of
# other servers' pages and of running Lab()s within two minutes.
TTL = 120
# Stopping waits at most this long for the announcement to be withdrawn.
WITHDRAW_TIMEOUT = 3.0
WILDCARD_V4 = ("", "0.0.0.0")
WILDCARD_V6 = "::"
MAX_LABEL = 63  # bytes in one DNS label (the instance name is one)


class NothingToAnnounce(Exception):
    """No listener another computer could reach, or no address to give."""


@dataclass(frozen=True)
class BoundPort:
    """One bound listening port: which option made it and where it listens."""

    kind: str  # "clients" or "status page"
    description: str  # the endpoint string, e.g. "tcp:36577:interface=0.0.0.0"
    host: str
    port: int

    @property
    def tls(self) -> bool:
        return bool(security(self.description))

    @property
    def reachable(self) -> bool:
        """True unless only this computer can connect (a loopback address)."""
        try:
            return not ipaddress.ip_address(self.host.split("%")[0]).is_loopback
        except ValueError:
            return self.host == ""  # Twisted's "every interface"; else not an IP at all


@dataclass(frozen=True)
class Plan:
    """What to announce."""

    instance: str  # the DNS-SD instance name, e.g. "lasers on labpc1"
    host_name: str  # the SRV record's target, e.g. "labpc1-3fa2c1.local."
    port: int  # the SRV record's port: the plain port, else the TLS one
    addresses: tuple[str, ...]
    properties: tuple[tuple[str, str], ...]  # the TXT record
    interfaces: tuple[str, ...] | None  # IPv4 addresses to speak on; None: all


def should_announce(setting: bool | None, listeners: Iterable[BoundPort]) -> bool:
    """``--announce`` (True), ``--no-announce`` (False), or by default (None):
    announce when some client listener is reachable from other computers."""
    if setting is not None:
        return setting
    return any(each.kind == "clients" and each.reachable for each in listeners)


def loopback_only(listeners: Iterable[BoundPort]) -> str | None:
    """Why an explicit --announce makes no sense, or None if it does."""
    clients = [each for each in listeners if each.kind == "clients"]
    if any(each.reachable for each in clients):
        return None
    where = ", ".join(f"{each.host}:{each.port}" for each in clients) or "nowhere"
    return (
        f"the server listens only on loopback ({where}), which no other computer can "
        "reach; listen on the lab network too (e.g. --interface 0.0.0.0), or drop --announce"
    )


def advertised_addresses(
    host: str, local: Iterable[str], windows: bool = sys.platform == "win32"
) -> list[str]:
    """The addresses to announce for a listener bound to ``host``.

    ``local``: this computer's addresses.  A wildcard stands for every
    non-loopback address of its family (and ``::`` for the IPv4 ones too,
    except on Windows, whose IPv6 sockets are IPv6-only by default).
    IPv6 link-local addresses are left out: they are unusable without the
    interface, which a DNS record cannot carry.
    """
    usable = [ipaddress.ip_address(a) for a in local if "%" not in a]
    usable = [a for a in usable if not a.is_loopback and not a.is_unspecified]
    v4 = [str(a) for a in usable if a.version == 4]
    v6 = [str(a) for a in usable if a.version == 6 and not a.is_link_local]
    if host in WILDCARD_V4:
        return v4
    if host == WILDCARD_V6:
        return v6 + ([] if windows else v4)
    if not BoundPort("clients", "", host, 0).reachable:
        return []
    return [host]


def _label(text: str, suffix: str = "") -> str:
    """Text cut to fit one DNS label (63 bytes of UTF-8) with ``suffix``, at a character."""
    encoded = text.encode("utf-8")[: MAX_LABEL - len(suffix.encode("utf-8"))]
    return encoded.decode("utf-8", "ignore").strip() + suffix


def instance_name(name: str, label: str, port: int) -> str:
    """``"lasers on labpc1"``, with ``":PORT"`` when not on the usual port.

    The port keeps two servers on one computer apart by construction: the
    renaming that mDNS probing allows relies on a unicast answer, which on
    one computer may reach the other server's socket instead of ours.
    """
    return _label(f"{name} on {label}", "" if port == DEFAULT_PORT else f":{port}")


def host_label(hostname: str) -> str:
    """A DNS-safe label from the computer's name ("Lab PC.lan" -> "Lab-PC")."""
    label = re.sub(r"[^A-Za-z0-9-]+", "-", hostname.split(".")[0]).strip("-")
    return label[:40] or "modserver"


def make_plan(
    name: str,
    version: str,
    hostname: str,
    listeners: Iterable[BoundPort],
    local: Iterable[str],
) -> Plan:
    """What to announce, from the bound listeners; NothingToAnnounce if nothing can be."""
    listeners = list(listeners)
    reachable = [each for each in listeners if each.reachable]
    clients = [each for each in reachable if each.kind == "clients"]
    plain = next((each for each in clients if not each.tls), None)
    tls = next((each for each in clients if each.tls), None)
    page = next((each for each in reachable if each.kind == "status page"), None)
    main = plain or tls
    if main is None:
        raise NothingToAnnounce(loopback_only(listeners))
    addresses = tuple(advertised_addresses(main.host, local))
    if not addresses:
        raise NothingToAnnounce(
            f"this computer has no network address besides loopback for {main.description}"
        )
    text = [(discovery.TXT_NAME, name), (discovery.TXT_VERSION, version)]
    if plain is not None:
        text.append((discovery.TXT_PORT, str(plain.port)))
    if tls is not None:
        text.append((discovery.TXT_TLS_PORT, str(tls.port)))
    if page is not None:
        text.append((discovery.TXT_HTTP, str(page.port)))
    label = host_label(hostname)
    # The SRV target is a host name of its own, never the computer's: a
    # computer's name.local belongs to its Bonjour/Avahi responder, which
    # would see our records (a subset of its addresses) as a conflict and
    # rename the computer.  The digest keeps two servers apart.
    digest = hashlib.sha1(f"{label} {main.port} {' '.join(addresses)}".encode()).hexdigest()
    return Plan(
        instance=instance_name(name, label, main.port),
        host_name=f"{label}-{digest[:6]}.local.",
        port=main.port,
        addresses=addresses,
        properties=tuple(text),
        interfaces=speaking_interfaces(clients),
    )


def speaking_interfaces(clients: Iterable[BoundPort]) -> tuple[str, ...] | None:
    """Where to speak mDNS: the listeners' own IPv4 addresses when every one
    names one (so the server is announced only where it can be reached);
    otherwise None, every interface."""
    hosts = sorted({each.host for each in clients})
    if hosts and all(_specific_ipv4(host) for host in hosts):
        return tuple(hosts)
    return None


def _specific_ipv4(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.version == 4 and not address.is_unspecified


def local_addresses() -> list[str]:
    """This computer's IP addresses (IPv6 ones with %scope when link-local)."""
    import ifaddr  # installed with zeroconf

    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, tuple):  # IPv6: (address, flowinfo, scope)
                found.append(ip.ip[0] if ip.ip[2] == 0 else f"{ip.ip[0]}%{ip.ip[2]}")
            else:
                found.append(ip.ip)
    return found


# Talking to zeroconf (runs in a pool thread, never on the reactor) ------------------


class Publication:
    """A registered announcement, and the browser that sees the other servers."""

    def __init__(self, zc, info, browser: discovery.Browser) -> None:
        self.zc = zc
        self.info = info
        self.browser = browser

    @property
    def full_name(self) -> str:
        return self.info.name  # after a rename, the name actually registered

    def resolve(self, full_name: str) -> discovery.Server | None:
        return self.browser.resolve(full_name)

    def withdraw(self) -> None:
        """Say goodbye (other computers drop us at once), then close the sockets."""
        try:
            self.browser.close()
            self.zc.unregister_service(self.info)
        finally:
            self.zc.close()


def publish(plan: Plan, on_change: Callable[[str, bool], None]) -> Publication:
    """Register the announcement (blocks while probing) and start looking for peers."""
    zeroconf = discovery.load_zeroconf()
    interfaces = list(plan.interfaces) if plan.interfaces else zeroconf.InterfaceChoice.All
    zc = zeroconf.Zeroconf(interfaces=interfaces)
    try:
        info = zeroconf.ServiceInfo(
            discovery.SERVICE_TYPE,
            f"{plan.instance}.{discovery.SERVICE_TYPE}",
            port=plan.port,
            properties=dict(plan.properties),
            server=plan.host_name,
            parsed_addresses=list(plan.addresses),
            host_ttl=TTL,
            other_ttl=TTL,
        )
        # Another server with the same name and host: ours becomes "... (2)".
        zc.register_service(info, allow_name_change=True)
        browser = discovery.Browser(zc, on_change)
    except BaseException:
        zc.close()
        raise
    return Publication(zc, info, browser)


# The service --------------------------------------------------------------------------


class Announcer(service.Service):
    """Announces the server while it runs and keeps a list of the other servers seen.

    ``server`` gives ``settings.announce``, ``settings.name`` and ``bound``
    (the Listeners bound when this service starts).  ``publisher``,
    ``in_thread`` and ``local`` (this computer's addresses) are injectable
    for tests.
    """

    name = "announcer"
    log = logs.server_log

    def __init__(
        self, server, reactor, publisher=publish, in_thread=None, local=local_addresses
    ) -> None:
        self.server = server
        self.reactor = reactor
        self._publisher = publisher
        self._local = local
        self._in_thread = in_thread or self._pool_thread
        self.state = "off"
        self.reason = "Not announced."
        self.instance: str | None = None
        self.peers: dict[str, discovery.Server] = {}
        self._started: defer.Deferred | None = None
        self._publication: Publication | None = None

    def _pool_thread(self, function, *args) -> defer.Deferred:
        pool = self.reactor.getThreadPool()
        return threads.deferToThreadPool(self.reactor, pool, function, *args)

    def startService(self) -> None:
        """Decide, then register in a pool thread; an explicit --announce that
        no one could use stops the server with one line."""
        super().startService()
        setting = self.server.settings.announce
        listeners = list(self.server.bound)
        if not should_announce(setting, listeners):
            self.reason = (
                "Not announced (--no-announce)."
                if setting is False
                else "Not announced: the server listens on loopback only."
            )
            return
        if setting and loopback_only(listeners):
            raise SystemExit(f"modserver: --announce: {loopback_only(listeners)}")
        try:
            discovery.load_zeroconf()
        except discovery.DiscoveryUnavailable:
            self.reason = (
                "not announced on the lab network: python-zeroconf is not installed "
                f"({discovery.INSTALL_HINT}); --no-announce silences this line"
            )
            self.log.warn("{reason}", reason=self.reason)
            return
        self.state = "announcing"
        self.reason = ""
        self._started = self._in_thread(self._plan_and_publish, listeners)
        self._started.addCallbacks(self._published, self._not_published)

    def _plan_and_publish(self, listeners: list[BoundPort]) -> Publication:
        plan = make_plan(
            self.server.settings.name,
            modserver.__version__,
            socket.gethostname(),
            listeners,
            self._local(),
        )
        return self._publisher(plan, self._news_from_thread)

    def _published(self, publication: Publication) -> Publication:
        self._publication = publication
        self.instance = discovery.instance_of(publication.full_name)
        self.state = "announced"
        info = publication.info
        where = ", ".join(f"{a}:{info.port}" for a in info.parsed_addresses())
        self.log.info(
            "announced on the lab network as {instance!r} ({type} at {where})",
            instance=self.instance,
            type=discovery.SERVICE_TYPE.removesuffix(".local."),
            where=where,
        )
        for full_name in publication.browser.names():  # seen before we were ready
            self._peer_changed(full_name, gone=False)
        return publication

    def _not_published(self, failure) -> None:
        self.state = "failed"
        self.reason = failure.getErrorMessage() or failure.type.__name__
        if failure.check(NothingToAnnounce):
            self.log.warn("not announced on the lab network: {reason}", reason=self.reason)
        else:
            self.log.failure("could not announce on the lab network", failure)
        return None

    # Other servers ---------------------------------------------------------------------

    def _news_from_thread(self, full_name: str, gone: bool) -> None:
        """zeroconf's thread: hand the news to the reactor."""
        self.reactor.callFromThread(self._peer_changed, full_name, gone)

    def _peer_changed(self, full_name: str, gone: bool) -> None:
        publication = self._publication
        if gone:
            self.peers.pop(full_name, None)
            return
        if publication is None or not self.running or full_name == publication.full_name:
            return
        resolving = self._in_thread(publication.resolve, full_name)
        resolving.addCallback(self._peer_resolved, full_name, publication)
        resolving.addErrback(
            lambda failure: self.log.failure(
                "could not read {name}'s records", failure, name=full_name
            )
        )

    def _peer_resolved(self, server, full_name: str, publication: Publication) -> None:
        # It may have left while we asked.
        if server is not None and self.running and full_name in publication.browser.names():
            self.peers[full_name] = server

    def snapshot(self) -> dict:
        """For the status page: how we are announced and whom we see."""
        peers = sorted(self.peers.values(), key=lambda s: s.instance.lower())
        return {
            "state": self.state,
            "instance": self.instance,
            "reason": self.reason,
            "peers": [peer.as_dict() for peer in peers],
        }

    # Stopping ----------------------------------------------------------------------------

    def stopService(self) -> defer.Deferred | None:
        """Withdraw the announcement (after registering, if still at it), bounded in time."""
        super().stopService()
        self.peers.clear()
        started, self._started = self._started, None
        if started is None:
            return None
        withdrawn = defer.Deferred()  # cancelled by the timeout, it ignores a late result
        started.addCallback(self._withdraw).chainDeferred(withdrawn)
        withdrawn.addTimeout(WITHDRAW_TIMEOUT, self.reactor)
        return withdrawn.addBoth(self._withdrawn)

    def _withdraw(self, publication: Publication | None):
        if publication is None:
            return None
        self._publication = None
        return self._in_thread(publication.withdraw)

    def _withdrawn(self, result) -> None:
        if isinstance(result, Failure):
            if result.check(defer.TimeoutError):
                self.log.warn(
                    "the announcement {instance!r} was not withdrawn within {timeout} s; "
                    "other computers forget it within {ttl} s",
                    instance=self.instance,
                    timeout=WITHDRAW_TIMEOUT,
                    ttl=TTL,
                )
            else:
                self.log.failure("could not withdraw the announcement", result)
        elif self.state == "announced":
            self.log.info("withdrew the announcement {instance!r}", instance=self.instance)
        self.state = "off"
        self.reason = "the server is stopping"
