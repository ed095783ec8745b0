"""Announcing: the decisions (plain functions) and the service's glue, with a clock.

The glue tests replace the blocking zeroconf calls (publish, withdraw) with
recorded ones run on the test's thread: a zeroconf that hangs, or takes a
given time, cannot be arranged for real.  The real announcement is tested
between network namespaces (test_discovery_netns.py).
"""

from __future__ import annotations

import sys

import pytest
from twisted.internet import defer, task
from twisted.logger import formatEvent, globalLogPublisher

from modserver.lab import announce, discovery
from modserver.lab.announce import Announcer, BoundPort, NothingToAnnounce
from modserver.server.service import ServerSettings

LOCAL = ["127.0.0.1", "10.0.0.5", "192.168.1.7", "::1", "fe80::1%2", "2001:db8::5"]


def clients(*hosts, port=36577, description="tcp:36577"):
    return [BoundPort("clients", description, host, port) for host in hosts]


# Whether to announce ---------------------------------------------------------------


@pytest.mark.parametrize(
    "hosts, announced",
    [
        (["127.0.0.1"], False),
        (["::1"], False),
        (["127.0.0.1", "0.0.0.0"], True),
        (["::"], True),
        (["10.0.0.5"], True),
    ],
)
def test_by_default_announce_when_listening_beyond_loopback(hosts, announced):
    assert announce.should_announce(None, clients(*hosts)) is announced


def test_the_options_win_over_the_default():
    assert announce.should_announce(True, clients("127.0.0.1")) is True
    assert announce.should_announce(False, clients("0.0.0.0")) is False


def test_a_status_page_beyond_loopback_alone_is_no_reason_to_announce():
    listeners = [*clients("127.0.0.1"), BoundPort("status page", "tcp:8080", "0.0.0.0", 8080)]
    assert announce.should_announce(None, listeners) is False
    assert "only on loopback (127.0.0.1:36577)" in announce.loopback_only(listeners)


def test_tls_listeners_are_told_by_their_prefix():
    assert BoundPort("clients", "ssl:36578:privateKey=k.pem", "0.0.0.0", 36578).tls
    assert BoundPort("clients", "mtls:36578:ca=ca.pem", "0.0.0.0", 36578).tls
    assert not BoundPort("clients", "tcp:36577", "0.0.0.0", 36577).tls


# Which addresses --------------------------------------------------------------------


def test_a_wildcard_announces_every_address_but_loopback():
    assert announce.advertised_addresses("0.0.0.0", LOCAL) == ["10.0.0.5", "192.168.1.7"]


def test_an_ipv6_wildcard_announces_global_ipv6_and_ipv4_except_on_windows():
    assert announce.advertised_addresses("::", LOCAL, windows=False) == [
        "2001:db8::5",
        "10.0.0.5",
        "192.168.1.7",
    ]
    assert announce.advertised_addresses("::", LOCAL, windows=True) == ["2001:db8::5"]


def test_a_specific_address_announces_itself_only():
    assert announce.advertised_addresses("192.168.1.7", LOCAL) == ["192.168.1.7"]
    assert announce.advertised_addresses("127.0.0.1", LOCAL) == []


# The records --------------------------------------------------------------------------


def test_the_plan_names_the_server_and_carries_its_ports_in_txt():
    listeners = [
        *clients("0.0.0.0"),
        BoundPort("clients", "ssl:36578:privateKey=k.pem", "0.0.0.0", 36578),
        BoundPort("status page", "tcp:8080:interface=0.0.0.0", "0.0.0.0", 8080),
    ]
    plan = announce.make_plan("lasers", "0.1.0", "labpc1.example.org", listeners, LOCAL)
    assert plan.instance == "lasers on labpc1"
    assert plan.port == 36577
    assert plan.addresses == ("10.0.0.5", "192.168.1.7")
    assert dict(plan.properties) == {
        "name": "lasers",
        "version": "0.1.0",
        "port": "36577",
        "tls_port": "36578",
        "http": "8080",
    }
    assert plan.host_name.startswith("labpc1-") and plan.host_name.endswith(".local.")
    assert plan.interfaces is None  # a wildcard: speak on every interface


def test_a_tls_only_server_announces_its_tls_port_and_no_plain_one():
    listeners = [BoundPort("clients", "mtls:36578:ca=ca.pem", "10.0.0.5", 36578)]
    plan = announce.make_plan("lasers", "0.1.0", "labpc1", listeners, LOCAL)
    assert plan.port == 36578
    assert dict(plan.properties) == {"name": "lasers", "version": "0.1.0", "tls_port": "36578"}


def test_loopback_listeners_and_status_pages_are_left_out_of_the_records():
    listeners = [
        *clients("127.0.0.1", port=40000),
        *clients("10.0.0.5"),
        BoundPort("status page", "8080", "127.0.0.1", 8080),
    ]
    plan = announce.make_plan("lasers", "0.1.0", "labpc1", listeners, LOCAL)
    assert plan.port == 36577 and plan.addresses == ("10.0.0.5",)
    assert "http" not in dict(plan.properties)
    assert plan.interfaces == ("10.0.0.5",)  # announced only where it listens


def test_two_servers_on_one_computer_get_host_names_of_their_own():
    one = announce.make_plan("a", "0.1.0", "labpc1", clients("0.0.0.0"), LOCAL)
    two = announce.make_plan("a", "0.1.0", "labpc1", clients("0.0.0.0", port=36600), LOCAL)
    assert one.host_name != two.host_name


def test_a_server_off_the_usual_port_has_the_port_in_its_name():
    plan = announce.make_plan("a", "0.1.0", "labpc1", clients("0.0.0.0", port=36600), LOCAL)
    assert plan.instance == "a on labpc1:36600"
    long = announce.instance_name("µ" * 80, "labpc1", 36600)
    assert long.endswith("µ:36600") and len(long.encode()) <= 63


def test_names_are_cut_to_one_dns_label_and_made_dns_safe():
    plan = announce.make_plan("µ" * 80, "0.1.0", "Lab PC_3.lan", clients("0.0.0.0"), LOCAL)
    assert len(plan.instance.encode()) <= 63
    assert plan.host_name.startswith("Lab-PC-3-")


def test_nothing_to_announce_without_a_network_address():
    with pytest.raises(NothingToAnnounce, match="no network address besides loopback"):
        announce.make_plan("a", "0.1.0", "pc", clients("0.0.0.0"), ["127.0.0.1"])
    with pytest.raises(NothingToAnnounce, match="only on loopback"):
        announce.make_plan("a", "0.1.0", "pc", clients("127.0.0.1"), LOCAL)


# The service's glue, on a clock --------------------------------------------------------


class FakeBrowser:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def names(self) -> list[str]:
        return list(self.seen)


class FakeInfo:
    name = "lasers on pc._modserver._tcp.local."
    port = 36577

    def parsed_addresses(self) -> list[str]:
        return ["10.0.0.5"]


class FakePublication:
    """What publish() returns; resolve and withdraw are recorded."""

    def __init__(self) -> None:
        self.info = FakeInfo()
        self.full_name = self.info.name
        self.browser = FakeBrowser()
        self.withdrawn = 0

    def resolve(self, full_name: str):
        return discovery.Server(discovery.instance_of(full_name), "other", "0.1.0", ["10.0.0.6"])

    def withdraw(self) -> None:
        self.withdrawn += 1


class Threads:
    """Stands in for the thread pool: each call waits until the test releases it."""

    def __init__(self) -> None:
        self.calls: list[tuple[defer.Deferred, object, tuple]] = []

    def __call__(self, function, *args) -> defer.Deferred:
        waiting = defer.Deferred()
        self.calls.append((waiting, function, args))
        return waiting

    def run_next(self):
        waiting, function, args = self.calls.pop(0)
        defer.maybeDeferred(function, *args).chainDeferred(waiting)


class Server:
    def __init__(self, announce_setting, bound) -> None:
        self.settings = ServerSettings(name="lasers", announce=announce_setting)
        self.bound = bound


@pytest.fixture
def logged():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def messages(events: list[dict]) -> list[str]:
    return [formatEvent(event) for event in events]


def make_announcer(setting=None, bound=None):
    clock, threads, publication = task.Clock(), Threads(), FakePublication()
    clock.callFromThread = lambda f, *a: f(*a)
    server = Server(setting, clients("0.0.0.0") if bound is None else bound)
    announcer = Announcer(
        server, clock, publisher=lambda plan, news: publication, in_thread=threads
    )
    return announcer, clock, threads, publication


def test_publishing_runs_off_the_reactor_and_reports_when_done(logged):
    announcer, _, threads, publication = make_announcer()
    announcer.startService()
    assert announcer.snapshot()["state"] == "announcing"  # nothing ran on the reactor yet
    threads.run_next()
    assert announcer.snapshot()["state"] == "announced"
    assert announcer.instance == "lasers on pc"
    assert "announced on the lab network as 'lasers on pc' (_modserver._tcp at 10.0.0.5:36577)" in (
        messages(logged)
    )


def test_other_servers_are_listed_without_this_one(logged):
    announcer, _, threads, publication = make_announcer()
    announcer.startService()
    threads.run_next()
    other = "laser-pc on pc._modserver._tcp.local."
    publication.browser.seen = [other, publication.full_name]
    announcer._news_from_thread(publication.full_name, False)
    assert threads.calls == []  # our own announcement is not a peer
    announcer._news_from_thread(other, False)
    threads.run_next()
    assert [p["instance"] for p in announcer.snapshot()["peers"]] == ["laser-pc on pc"]
    publication.browser.seen = [publication.full_name]
    announcer._news_from_thread(other, True)
    assert announcer.snapshot()["peers"] == []


def test_a_peer_that_left_while_being_resolved_is_not_listed():
    announcer, _, threads, publication = make_announcer()
    announcer.startService()
    threads.run_next()
    other = "laser-pc on pc._modserver._tcp.local."
    announcer._news_from_thread(other, False)  # not in the browser's names any more
    threads.run_next()
    assert announcer.snapshot()["peers"] == []


def test_stopping_withdraws_the_announcement():
    announcer, clock, threads, publication = make_announcer()
    announcer.startService()
    threads.run_next()
    stopped = announcer.stopService()
    threads.run_next()
    assert publication.withdrawn == 1
    assert stopped.called and announcer.snapshot()["state"] == "off"


def test_stopping_while_still_probing_withdraws_once_registered():
    announcer, clock, threads, publication = make_announcer()
    announcer.startService()
    stopped = announcer.stopService()
    assert not stopped.called
    threads.run_next()  # the registration finishes
    threads.run_next()  # then the withdrawal runs
    assert publication.withdrawn == 1 and stopped.called


def test_a_withdrawal_that_hangs_does_not_hold_the_stop_past_its_bound(logged):
    announcer, clock, threads, publication = make_announcer()
    announcer.startService()
    threads.run_next()
    stopped = announcer.stopService()
    clock.advance(announce.WITHDRAW_TIMEOUT - 0.1)
    assert not stopped.called
    clock.advance(0.2)
    assert stopped.called  # and it succeeded: the server's stop goes on
    threads.run_next()  # the withdrawal ends after all: nothing more happens
    assert publication.withdrawn == 1
    assert any("was not withdrawn within 3.0 s" in line for line in messages(logged))


def test_a_failed_registration_is_logged_and_the_server_carries_on(logged):
    announcer, clock, threads, _ = make_announcer()

    def fails(plan, news):
        raise OSError("no multicast-capable interface")

    announcer._publisher = fails
    announcer.startService()
    threads.run_next()
    assert announcer.snapshot()["state"] == "failed"
    assert "no multicast-capable interface" in announcer.snapshot()["reason"]
    assert "could not announce on the lab network" in messages(logged)
    assert announcer.stopService().called


def test_nothing_happens_on_loopback_by_default():
    announcer, _, threads, _ = make_announcer(bound=clients("127.0.0.1"))
    announcer.startService()
    assert threads.calls == [] and announcer.snapshot()["state"] == "off"
    assert announcer.stopService() is None


def test_an_explicit_announce_on_loopback_stops_the_server_with_one_line():
    announcer, _, threads, _ = make_announcer(setting=True, bound=clients("127.0.0.1"))
    with pytest.raises(SystemExit, match="--announce: the server listens only on loopback"):
        announcer.startService()
    assert threads.calls == []


def test_without_zeroconf_the_default_logs_one_line_and_carries_on(monkeypatch, logged):
    monkeypatch.setitem(sys.modules, "zeroconf", None)  # import zeroconf now fails
    announcer, _, threads, _ = make_announcer()
    announcer.startService()
    assert threads.calls == []
    lines = [line for line in messages(logged) if "python-zeroconf is not installed" in line]
    assert lines == [
        "not announced on the lab network: python-zeroconf is not installed (pip install "
        "'.[discovery]' in modserver's checkout (or pip install zeroconf)); --no-announce "
        "silences this line"
    ]
    assert announcer.snapshot()["state"] == "off"


def test_a_peer_whose_records_cannot_be_read_is_logged_and_left_out(logged):
    announcer, _, threads, publication = make_announcer()
    announcer.startService()
    threads.run_next()
    other = "laser-pc on pc._modserver._tcp.local."
    publication.browser.seen = [other]

    def broken(full_name):
        raise OSError("socket closed")

    publication.resolve = broken
    announcer._news_from_thread(other, False)
    threads.run_next()
    assert announcer.snapshot()["peers"] == []
    assert f"could not read {other}'s records" in messages(logged)
