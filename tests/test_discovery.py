"""Finding servers: reading announcements, choosing a server, remembering the answer.

These are the decisions, tested without a network: the Finder gets a
browser and a survey standing in for the network.  Servers announcing and
finding each other for real is test_discovery_netns.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from modserver import client
from modserver.lab import discovery
from modserver.lab.discovery import AmbiguousModule, Listing, ModuleNotFound, Server

FULL = "lasers on pc1._modserver._tcp.local."


def server(instance: str, *addresses: str, port: int = 36577, **more) -> Server:
    return Server(
        instance, instance.split()[0], "0.1.0", list(addresses or ["10.0.0.5"]), port, **more
    )


def listing(instance: str, modules, host: str = "10.0.0.5") -> Listing:
    return Listing(server(instance, host), modules, host)


# Reading an announcement -------------------------------------------------------------


def test_records_become_a_server():
    properties = {b"name": b"lasers", b"version": b"0.1.0", b"port": b"36577", b"http": b"8080"}
    found = discovery.server_from_records(FULL, ["10.0.0.5"], 36577, properties)
    assert found == Server("lasers on pc1", "lasers", "0.1.0", ["10.0.0.5"], 36577, None, 8080)
    assert found.endpoints() == [("10.0.0.5", 36577)]
    assert found.status_page() == "http://10.0.0.5:8080/"


def test_a_tls_only_server_has_no_plain_endpoint():
    properties = {b"name": b"lasers", b"tls_port": b"36578"}
    found = discovery.server_from_records(FULL, ["10.0.0.5"], 36578, properties)
    assert (found.port, found.tls_port, found.endpoints()) == (None, 36578, [])
    assert "only a TLS port (36578)" in discovery.ask_modules(found).error


def test_an_announcement_without_our_txt_keys_is_taken_at_its_srv_word():
    found = discovery.server_from_records(FULL, ["fd00::5"], 36577, {b"junk": None})
    assert (found.name, found.port, found.version) == ("lasers on pc1", 36577, "")
    assert found.status_page() == ""
    assert discovery.Listing(found, [], "fd00::5").address() == "[fd00::5]:36577"


def test_bad_port_numbers_are_ignored():
    properties = {b"port": b"99999", b"tls_port": b"x", b"http": b"0"}
    found = discovery.server_from_records(FULL, ["10.0.0.5"], 36577, properties)
    assert (found.port, found.tls_port, found.http) == (None, None, None)


# Choosing the server -----------------------------------------------------------------


def test_the_one_server_offering_a_module_is_chosen():
    listings = [listing("a on pc1", ["laser"]), listing("b on pc2", ["wavemeter"], "10.0.0.6")]
    assert discovery.choose("wavemeter", listings).server.instance == "b on pc2"


def test_a_module_offered_twice_is_an_error_naming_both_servers():
    listings = [listing("a on pc1", ["echo"]), listing("b on pc2", ["echo"], "10.0.0.6")]
    with pytest.raises(AmbiguousModule) as raised:
        discovery.choose("echo", listings)
    message = str(raised.value)
    assert "'echo' is offered by 2 servers" in message
    assert "'a on pc1' (10.0.0.5:36577) and 'b on pc2' (10.0.0.6:36577)" in message
    assert "Client('10.0.0.5', 36577)" in message
    assert isinstance(raised.value, client.ClientError)


def test_a_module_nobody_offers_is_an_error_listing_what_was_found():
    listings = [listing("a on pc1", ["laser"]), Listing(server("b on pc2"), error="refused")]
    with pytest.raises(ModuleNotFound) as raised:
        discovery.choose("stage", listings, wait=1.5)
    assert str(raised.value) == (
        "no modserver on the lab network offers 'stage' (servers found in 1.5 s: "
        "'a on pc1' (laser), 'b on pc2' (not answering: refused))"
    )


def test_a_server_that_did_not_answer_is_not_chosen():
    listings = [Listing(server("a on pc1"), error="refused"), listing("b on pc2", ["echo"])]
    assert discovery.choose("echo", listings).server.instance == "b on pc2"


# The command line's output ---------------------------------------------------------------


def test_discover_prints_servers_their_modules_and_shared_names():
    listings = [
        listing("a on pc1", ["laser", "echo"]),
        Listing(server("b on pc2", "10.0.0.6", http=8080, tls_port=36578), ["echo"], "10.0.0.6"),
        Listing(server("c on pc3", "10.0.0.7"), error="cannot connect"),
    ]
    assert discovery.format_listings(listings).splitlines() == [
        "a on pc1 at 10.0.0.5:36577 (modserver 0.1.0)",
        "  modules: laser, echo",
        "b on pc2 at 10.0.0.6:36577 (modserver 0.1.0)",
        "  modules: echo",
        "  TLS port: 36578",
        "  status page: http://10.0.0.6:8080/",
        "c on pc3 at 10.0.0.7 (modserver 0.1.0)",
        "  not answering: cannot connect",
        "note: echo is offered by 2 servers: a on pc1, b on pc2",
    ]
    as_json = json.loads(discovery.format_listings(listings, as_json=True))
    assert (as_json[1]["host"], as_json[1]["address"]) == ("10.0.0.6", "10.0.0.6:36577")
    assert as_json[1]["modules"] == ["echo"]
    assert as_json[1]["status_page"] == "http://10.0.0.6:8080/"
    assert as_json[2]["error"] == "cannot connect" and as_json[2]["modules"] is None


def test_discover_says_when_nobody_answered():
    assert discovery.format_listings([], 3) == (
        "no modserver announced itself on the lab network within 3 s (--wait listens longer)"
    )


# Remembering the answer ------------------------------------------------------------------


class Network:
    """Stands in for the browser and the survey: the servers and what they offer."""

    def __init__(self) -> None:
        self.offers: dict[str, list[str]] = {}
        self.surveys = 0
        self.settled: list[float] = []

    # the browser's side
    def settle(self, wait: float) -> None:
        self.settled.append(wait)

    def servers(self, timeout: float) -> list[Server]:
        return [server(name) for name in self.offers]

    def close(self) -> None:
        pass

    # the survey
    def survey(self, servers: list[Server], timeout: float) -> list[Listing]:
        self.surveys += 1
        return [Listing(s, self.offers[s.instance], s.addresses[0]) for s in servers]


def make_finder():
    network = Network()
    finder = discovery.Finder(0.5, 2.0, browser=network, survey=network.survey)
    return finder, network


def test_the_answer_is_remembered():
    finder, network = make_finder()
    network.offers = {"a on pc1": ["wavemeter"]}
    assert finder.locate("wavemeter").server.instance == "a on pc1"
    assert finder.locate("wavemeter").server.instance == "a on pc1"
    assert network.surveys == 1 and network.settled == [0.5]


def test_any_change_on_the_network_makes_it_look_again():
    finder, network = make_finder()
    network.offers = {"a on pc1": ["wavemeter"]}
    finder.locate("wavemeter")
    network.offers["b on pc2"] = ["wavemeter"]  # a second server came: no longer unique
    finder._changed("b on pc2._modserver._tcp.local.", gone=False)
    with pytest.raises(AmbiguousModule):
        finder.locate("wavemeter")
    del network.offers["a on pc1"]
    finder._changed(FULL, gone=True)
    assert finder.locate("wavemeter").server.instance == "b on pc2"
    assert network.surveys == 3


def test_forgetting_one_module_makes_it_look_again():
    finder, network = make_finder()
    network.offers = {"a on pc1": ["wavemeter"]}
    finder.locate("wavemeter")
    network.offers = {"b on pc2": ["wavemeter"]}  # moved, and no goodbye was heard
    finder.forget("wavemeter")
    assert finder.locate("wavemeter").server.instance == "b on pc2"


def test_an_answer_found_while_the_network_changed_is_not_kept():
    finder, network = make_finder()
    network.offers = {"a on pc1": ["wavemeter"]}
    survey = network.survey

    def changes_meanwhile(servers, timeout):
        finder._changed("b on pc2._modserver._tcp.local.", gone=False)
        return survey(servers, timeout)

    finder._survey = changes_meanwhile
    finder.locate("wavemeter")
    finder.locate("wavemeter")
    assert network.surveys == 2


def test_an_unknown_module_is_looked_for_every_time():
    finder, network = make_finder()
    network.offers = {"a on pc1": ["laser"]}
    for _ in range(2):
        with pytest.raises(ModuleNotFound):
            finder.locate("wavemeter")
    network.offers["a on pc1"].append("wavemeter")  # added to the config
    assert finder.locate("wavemeter").server.instance == "a on pc1"


# Without zeroconf ----------------------------------------------------------------------


def test_lab_without_zeroconf_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "zeroconf", None)  # import zeroconf now fails
    with pytest.raises(client.ClientError) as raised:
        client.Lab()
    assert "pip install '.[discovery]'" in str(raised.value)


def test_discover_without_zeroconf_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "zeroconf", None)
    assert client.main(["discover"]) == client.EXIT_UNREACHABLE
    assert "error: finding servers on the lab network needs python-zeroconf" in (
        capsys.readouterr().err
    )


def test_a_copied_client_file_without_the_package_says_what_to_install(tmp_path):
    shutil.copy(Path(client.__file__), tmp_path / "client.py")
    # -S: no site-packages, so neither modserver nor zeroconf can be imported.
    result = subprocess.run(
        [sys.executable, "-S", "client.py", "discover"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == client.EXIT_UNREACHABLE
    assert result.stderr == (
        "error: finding servers on the lab network needs the modserver package and "
        "python-zeroconf: pip install '.[discovery]' in modserver's checkout\n"
    )
