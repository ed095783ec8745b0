"""Who may do what (access.AccessPolicy), refusal logging, and allow lists in the config."""

from __future__ import annotations

import ipaddress
import json

import pytest

from modserver.server.access import AccessPolicy, Identity, parse_rule, parse_rules
from modserver.server.config import parse_config
from modserver.server.refusals import RefusalTally


def policy(allow=("local",), admin=("loopback",), local=(), clock=lambda: 0.0):
    return AccessPolicy(
        allow=parse_rules(allow),
        admin=parse_rules(admin),
        local_networks=lambda: [ipaddress.ip_network(n) for n in local],
        clock=clock,
    )


@pytest.mark.parametrize(
    "rule, host, matches",
    [
        ("10.0.1.0/24", "10.0.1.77", True),
        ("10.0.1.0/24", "10.0.2.1", False),
        ("10.0.1.7", "10.0.1.7", True),
        ("10.0.1.7", "10.0.1.8", False),
        ("2001:db8::/48", "2001:db8:0:1::5", True),
        ("2001:db8::/48", "10.0.1.7", False),
        ("10.0.1.0/24", "::ffff:10.0.1.9", True),  # IPv4 client of a dual-stack listener
        ("fe80::/64", "fe80::1%eth0", True),
        ("loopback", "127.0.0.2", True),
        ("loopback", "::1", True),
        ("loopback", "10.0.0.1", False),
        ("any", "203.0.113.9", True),
        ("any", "2001:db8::1", True),
        ("127.0.0.1", "/run/modserver.sock", True),  # a UNIX socket client is on this PC
        ("10.0.0.0/8", "/run/modserver.sock", False),
    ],
)
def test_address_rules(rule, host, matches):
    assert parse_rule(rule).matches(Identity.of(host)) is matches


def test_local_is_loopback_and_this_computers_networks():
    p = policy(allow=("local",), local=("192.168.7.0/24", "fd00::/64"))
    assert p.admits(Identity.of("127.0.0.1"))
    assert p.admits(Identity.of("192.168.7.200"))
    assert p.admits(Identity.of("fd00::42"))
    assert not p.admits(Identity.of("192.168.8.1"))


def test_local_networks_are_read_again_after_a_while():
    now = [0.0]
    networks = [["10.1.0.0/16"]]
    p = AccessPolicy(
        allow=parse_rules(["local"]),
        local_networks=lambda: [ipaddress.ip_network(n) for n in networks[0]],
        clock=lambda: now[0],
    )
    assert p.admits(Identity.of("10.1.2.3"))
    networks[0] = ["10.2.0.0/16"]  # the PC moved
    assert p.admits(Identity.of("10.1.2.3"))  # not read again at every connection
    now[0] = 31.0
    assert not p.admits(Identity.of("10.1.2.3")) and p.admits(Identity.of("10.2.0.1"))


def test_cn_rules_match_the_certificate_name_only():
    rule = parse_rule("cn:alice")
    assert rule.matches(Identity.of("10.0.0.1", cn="alice"))
    assert not rule.matches(Identity.of("10.0.0.1", cn="bob"))
    assert not rule.matches(Identity.of("10.0.0.1"))


def test_administrators_must_be_admitted_too():
    p = policy(allow=("10.0.1.0/24",), admin=("loopback", "cn:alice"))
    assert not p.is_admin(Identity.of("127.0.0.1"))  # loopback is not admitted at all
    assert p.is_admin(Identity.of("10.0.1.5", cn="alice"))
    assert not p.is_admin(Identity.of("10.0.1.5", cn="bob"))
    assert not p.is_admin(Identity.of("10.0.9.5", cn="alice"))


def test_module_rules_narrow_who_the_server_admits():
    p = policy(allow=("10.0.0.0/8",))
    rules = parse_rules(["10.0.1.0/24", "cn:alice"])
    assert p.may_open(Identity.of("10.0.1.4"), rules)
    assert p.may_open(Identity.of("10.0.7.4", cn="alice"), rules)
    assert not p.may_open(Identity.of("10.0.7.4"), rules)
    assert not p.may_open(Identity.of("192.168.0.1", cn="alice"), rules)
    assert p.may_open(Identity.of("10.0.7.4"), None)


def test_the_defaults_admit_this_computers_networks_and_make_loopback_the_administrator():
    p = AccessPolicy(local_networks=lambda: [ipaddress.ip_network("10.0.1.0/24")])
    assert p.admits(Identity.of("10.0.1.9")) and not p.is_admin(Identity.of("10.0.1.9"))
    assert p.is_admin(Identity.of("127.0.0.1"))
    assert not p.admits(Identity.of("8.8.8.8"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("10.0.0.300", '"10.0.0.300" is not an address or a network'),
        ("lab-pc", '"lab-pc" is not an address or a network'),
        ("cn:", "cn: needs a name"),
    ],
)
def test_bad_rules_say_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        parse_rule(text)


def test_cn_star_matches_any_client_with_a_certificate():
    rule = parse_rule("cn:*")
    assert rule.matches(Identity.of("10.0.0.1", cn="anyone"))
    assert not rule.matches(Identity.of("10.0.0.1"))


def test_a_certificate_name_can_admit_a_client_its_address_does_not():
    p = policy(allow=("10.0.1.21", "cn:*"))
    assert p.admits_certificates and not policy().admits_certificates
    assert not p.admits(Identity.of("192.168.5.5"))
    assert p.admits(Identity.of("192.168.5.5", cn="alice"))


def test_turns_and_leases_know_a_client_by_its_certificate_else_its_address():
    assert Identity.of("10.0.0.1", cn="alice").owner == "cn:alice"
    assert Identity.of("10.0.0.2", cn="alice").owner == "cn:alice"  # alice on another PC
    assert Identity.of("::ffff:10.0.0.1").owner == "10.0.0.1"
    assert Identity(None).owner == "local socket"


def test_identities_print_as_people_read_them():
    assert str(Identity.of("::ffff:10.0.0.1")) == "10.0.0.1"
    assert str(Identity.of("10.0.0.1", cn="alice")) == "10.0.0.1 (cn=alice)"


# Refusal logging -------------------------------------------------------------------------


def test_refusals_are_logged_once_per_client_and_interval_with_a_count():
    tally = RefusalTally(interval=60.0)
    assert tally.refused("10.0.0.9", "may not use this server", now=0.0)
    for second in range(1, 40):
        assert not tally.refused("10.0.0.9", "may not use this server", now=second)
    assert tally.refused("10.0.0.8", "may not use this server", now=5.0)
    assert tally.due(59.0) == []
    assert tally.due(60.0) == [("10.0.0.9", "may not use this server", 39, 60.0)]
    assert tally.due(65.0) == []  # 10.0.0.8 was refused once: already logged
    assert tally.refused("10.0.0.9", "may not use this server", now=61.0)


def test_a_flood_from_many_addresses_is_counted_in_bounded_memory():
    tally = RefusalTally(interval=60.0, max_tracked=10)
    logged = sum(tally.refused(f"10.0.{i // 256}.{i % 256}", "no", 0.0) for i in range(5000))
    assert logged == 10 and len(tally) == 11  # ten clients, and one line for the rest
    assert tally.due(60.0)[-1][:3] == ("other clients", "refused", 4990)


# The config's allow lists ------------------------------------------------------------------


def entry(**options):
    return json.dumps({"laser": {"module": "laser", "entry": "Laser", **options}})


def test_a_config_entry_takes_an_allow_list():
    config = parse_config(entry(allow=["10.0.1.0/24", "cn:alice", "loopback"]), "/cfg")
    assert [str(rule) for rule in config.modules[0].allow] == [
        "10.0.1.0/24",
        "cn:alice",
        "loopback",
    ]
    assert parse_config(entry(), "/cfg").modules[0].allow is None


@pytest.mark.parametrize(
    "allow, problem",
    [
        ([], '"allow" must be a list of networks and cn:NAME entries'),
        ({"a": 1}, '"allow" must be a list'),
        (["10.0.1.0/33"], '"allow": "10.0.1.0/33" is not an address or a network'),
        ([5], '"allow": 5 is not a rule'),
    ],
)
def test_a_bad_allow_list_skips_the_entry_with_its_reason(allow, problem):
    config = parse_config(entry(allow=allow), "/cfg")
    assert config.modules == ()
    assert problem in config.problems[0]


def test_changing_only_the_allow_list_needs_no_restart():
    old = parse_config(entry(), "/cfg").modules[0]
    assert not old.needs_restart(parse_config(entry(allow=["cn:alice"]), "/cfg").modules[0])
    assert old.needs_restart(parse_config(entry(timeout=3), "/cfg").modules[0])
