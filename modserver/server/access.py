"""Who a client is and what it may do (no I/O).

A client's identity is its address and, over mutual TLS, the subject CN of
its certificate.  Rules come from the command line (``--allow``,
``--admin-allow``) and from the config (a module's ``allow`` list); each
rule is one of::

    10.0.1.0/24   2001:db8::/48   10.0.1.7   ::1     a network or an address
    loopback                                          127.0.0.0/8 and ::1
    local         loopback and the networks this computer's interfaces are on
    any           every address
    cn:alice      a client whose certificate's subject CN is "alice"
    cn:*          any client with a certificate (over mutual TLS, signed by the CA)

The server asks an ``AccessPolicy``; it does no I/O itself except through
the function it is given to list the local networks.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
ANY = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
THIS_COMPUTER = ipaddress.ip_address("127.0.0.1")

RULE_EXAMPLES = "10.0.1.0/24, 10.0.1.7, 2001:db8::/48, loopback, local, any"

# How long the list of local networks is trusted before it is read again
# (a laptop's address changes; a lab PC's rarely does).
LOCAL_NETWORKS_TTL = 30.0


def parse_address(host: str) -> Address | None:
    """The IP address in a peer's ``host``; None if it is not one (a UNIX socket).

    IPv4 clients of a dual-stack (``::``) listener appear as ``::ffff:a.b.c.d``
    and are taken as the IPv4 address they are; a zone (``%eth0``) is dropped.
    """
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True)
class Identity:
    """Who a client is: its address (None on a UNIX socket) and certificate CN."""

    address: Address | None
    cn: str | None = None

    @classmethod
    def of(cls, host: str, cn: str | None = None) -> Identity:
        return cls(parse_address(host), cn)

    @property
    def local_socket(self) -> bool:
        """True for a client on this computer's UNIX socket (no address)."""
        return self.address is None

    @property
    def owner(self) -> str:
        """The name turns and leases know it by: ``cn:NAME`` with a certificate, else
        the address (clients behind one certificate share their turns and leases)."""
        if self.cn is not None:
            return f"cn:{self.cn}"
        return "local socket" if self.address is None else str(self.address)

    def __str__(self) -> str:
        where = "a local socket client" if self.address is None else str(self.address)
        return where if self.cn is None else f"{where} (cn={self.cn})"


@dataclass(frozen=True)
class Rule:
    """One allow entry: networks, the local networks, or a certificate CN."""

    text: str
    networks: tuple[Network, ...] = ()
    local: bool = False  # loopback plus the networks of this computer's interfaces
    cn: str | None = None

    def matches(self, who: Identity, local_networks: Iterable[Network] = ()) -> bool:
        if self.cn is not None:
            return who.cn is not None and self.cn in ("*", who.cn)
        # A UNIX socket's client is on this computer: it is what loopback is.
        address = THIS_COMPUTER if who.address is None else who.address
        networks = (*self.networks, *local_networks) if self.local else self.networks
        return any(address in net for net in networks)

    def __str__(self) -> str:
        return self.text


def parse_rule(text: str) -> Rule:
    """One rule from its text; ValueError says what is wrong and what is expected."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a rule (examples: {RULE_EXAMPLES}, cn:NAME)")
    word = text.strip()
    lowered = word.lower()
    if lowered == "loopback":
        return Rule(word, LOOPBACK)
    if lowered == "local":
        return Rule(word, LOOPBACK, local=True)
    if lowered == "any":
        return Rule(word, ANY)
    if lowered.startswith("cn:"):
        name = word[3:].strip()
        if not name:
            raise ValueError(f'"{word}": cn: needs a name, as in cn:alice')
        return Rule(word, cn=name)
    try:
        network = ipaddress.ip_network(word.strip("[]"), strict=False)
    except ValueError:
        raise ValueError(
            f'"{word}" is not an address or a network (examples: {RULE_EXAMPLES}, cn:NAME)'
        ) from None
    return Rule(word, (network,))


def parse_rules(texts: Iterable[str]) -> tuple[Rule, ...]:
    return tuple(parse_rule(text) for text in texts)


DEFAULT_ALLOW = ("local",)
DEFAULT_ADMIN_ALLOW = ("loopback",)


@dataclass
class AccessPolicy:
    """The server's rules: who may connect, who administers.

    ``allow`` admits clients to the server at all: by address when the
    connection is made, or, for its ``cn:`` entries, by the certificate a
    client shows over mutual TLS (checked at its first line).  ``admin`` names who may
    reload modules and re-read the config, and whose per-request timeouts
    may end a worker; an administrator must be admitted by ``allow`` too.
    A module's own ``allow`` list narrows who may open that module.
    ``local_networks`` lists this computer's networks; ``clock`` tells the
    time, to read them again now and then.
    """

    allow: tuple[Rule, ...] = field(default_factory=lambda: parse_rules(DEFAULT_ALLOW))
    admin: tuple[Rule, ...] = field(default_factory=lambda: parse_rules(DEFAULT_ADMIN_ALLOW))
    local_networks: Callable[[], Iterable[Network]] = lambda: ()
    clock: Callable[[], float] = lambda: 0.0

    def __post_init__(self) -> None:
        self._local: tuple[Network, ...] = ()
        self._local_read_at: float | None = None

    def admits(self, who: Identity) -> bool:
        """May ``who`` use this server at all?"""
        return self._any(self.allow, who)

    @property
    def admits_certificates(self) -> bool:
        """True if ``allow`` has ``cn:`` entries: an address it refuses may still be
        admitted by the certificate its client shows."""
        return any(rule.cn is not None for rule in self.allow)

    def is_admin(self, who: Identity) -> bool:
        """May ``who`` reload modules, re-read the config and end workers?"""
        return self.admits(who) and self._any(self.admin, who)

    def may_open(self, who: Identity, module_rules: tuple[Rule, ...] | None) -> bool:
        """May ``who`` open a module whose config gives ``module_rules`` (None: no list)?"""
        if not self.admits(who):
            return False
        return module_rules is None or self._any(module_rules, who)

    def _any(self, rules: tuple[Rule, ...], who: Identity) -> bool:
        local = self._local_networks() if any(rule.local for rule in rules) else ()
        return any(rule.matches(who, local) for rule in rules)

    def _local_networks(self) -> tuple[Network, ...]:
        now = self.clock()
        if self._local_read_at is None or now - self._local_read_at >= LOCAL_NETWORKS_TTL:
            self._local = tuple(self.local_networks())
            self._local_read_at = now
        return self._local


def interface_networks() -> list[Network]:
    """The networks this computer's interfaces are on (ifaddr: Windows, macOS, Linux)."""
    import ifaddr

    networks = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            host = ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip
            try:
                networks.append(ipaddress.ip_network(f"{host}/{ip.network_prefix}", strict=False))
            except ValueError:
                continue
    return networks
