"""Command-line options of ``twistd modserver`` and the service they build."""

from __future__ import annotations

import re
import sys

import pytest
from twisted.python import usage

from modserver.net.endpoints import windows_paths_escaped
from modserver.server import tap
from modserver.supervision.supervisor import ModuleSupervisor
from modserver.worker import platforms
from tests.fakes import FakeReactor


def options(*argv):
    parsed = tap.Options()
    parsed.parseOptions(list(argv))
    return parsed


def test_default_listens_where_the_original_did():
    assert options()["listen"] == ["tcp:36577:interface=127.0.0.1"]


def test_listen_is_repeatable():
    parsed = options("--listen", "tcp:1234", "-l", "tcp:5678:interface=0.0.0.0")
    assert parsed["listen"] == ["tcp:1234", "tcp:5678:interface=0.0.0.0"]


def test_port_and_interface_shortcuts_match_server_port_and_server_ip():
    assert options("--port", "4000")["listen"] == ["tcp:4000:interface=127.0.0.1"]
    assert options("-i", "0.0.0.0")["listen"] == ["tcp:36577:interface=0.0.0.0"]
    assert options("-p", "4000", "-i", "localhost")["listen"] == ["tcp:4000:interface=127.0.0.1"]
    assert options("-p", "4000", "-i", "::1")["listen"] == ["tcp:4000:interface=\\:\\:1"]


@pytest.mark.parametrize(
    "text, value",
    [
        ("2048", 2048),
        ("64M", 64 * 1024**2),
        ("1g", 1024**3),
        ("16MB", 16 * 1024**2),
        ("1.5K", 1536),
    ],
)
def test_sizes_take_suffixes(text, value):
    assert options("--max-request", text)["max-request"] == value


def test_defaults_carry_lab_sized_messages():
    parsed = options()
    assert parsed["max-request"] >= 16 * 1024**2
    assert parsed["max-reply"] >= 100 * 1024**2
    assert parsed["keepalive-timeout"] == 1.0


@pytest.mark.parametrize(
    "argv", [["--log-level", "loud"], ["--keepalive-timeout", "0"], ["--max-reply", "-5"]]
)
def test_bad_option_values_are_usage_errors(argv):
    with pytest.raises(usage.UsageError):
        options(*argv)


def test_config_lookup_prefers_the_option_then_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tap.config_location(None) == (tap.DEMO_CONFIG, True)
    (tmp_path / "server.config").write_text("{}")
    assert tap.config_location(None) == (str(tmp_path / "server.config"), False)
    assert tap.config_location("other.config") == ("other.config", False)


def test_make_service_from_options(tmp_path):
    config = tmp_path / "lab.config"
    config.write_text('{"laser": ["laser", "Laser", null]}')
    service = tap.makeService(options("--config", str(config), "--max-reply", "2M"), FakeReactor())
    assert service.config.names == ["laser"]
    assert service.settings.workers.max_reply == 2 * 1024**2
    assert service.settings.workers.import_paths[0] == str(tmp_path)


def test_the_longest_lease_is_the_servers_default_unless_a_module_says(tmp_path):
    config = tmp_path / "lab.config"
    config.write_text(
        '{"laser": ["laser", "Laser", null], '
        '"stage": {"module": "stage", "entry": "Stage", "max_lease": 60}}'
    )
    service = tap.makeService(options("--config", str(config), "--max-lease", "900"), FakeReactor())
    workers = service.settings.workers
    for name, longest in (("laser", 900), ("stage", 60)):
        module = ModuleSupervisor(service.config.get(name), workers, FakeReactor())
        assert module.leases.max_seconds == longest


def test_unreadable_config_exits_with_one_line(tmp_path):
    with pytest.raises(SystemExit) as caught:
        tap.makeService(options("--config", str(tmp_path)), FakeReactor())
    message = str(caught.value)
    assert message.startswith("modserver: cannot read config file ") and "\n" not in message


def test_bad_endpoint_exits_with_one_line(tmp_path):
    config = tmp_path / "lab.config"
    config.write_text("{}")
    with pytest.raises(SystemExit) as caught:
        tap.makeService(options("--config", str(config), "--listen", "tcp:notaport"), FakeReactor())
    assert str(caught.value).startswith("modserver: bad --listen endpoint 'tcp:notaport'")


def test_the_platform_layer_comes_from_the_environment(tmp_path, monkeypatch):
    config = tmp_path / "lab.config"
    config.write_text("{}")
    monkeypatch.setenv(platforms.ENV_VAR, "portable")
    service = tap.makeService(options("--config", str(config)), FakeReactor())
    assert service.settings.workers.platform.name == "portable"
    monkeypatch.setenv(platforms.ENV_VAR, "solaris")
    with pytest.raises(SystemExit) as caught:
        tap.makeService(options("--config", str(config)), FakeReactor())
    message = str(caught.value)
    assert message.startswith("modserver: MODSERVER_PLATFORM=solaris is not known")
    assert "\n" not in message


@pytest.mark.parametrize(
    "argv, setting",
    [((), None), (("--announce",), True), (("--no-announce",), False)],
)
def test_announce_is_on_off_or_decided_by_the_listeners(tmp_path, argv, setting):
    config = tmp_path / "lab.config"
    config.write_text("{}")
    service = tap.makeService(options("--config", str(config), *argv), FakeReactor())
    assert service.settings.announce is setting


def test_announce_without_zeroconf_exits_saying_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "zeroconf", None)  # import zeroconf now fails
    config = tmp_path / "lab.config"
    config.write_text("{}")
    with pytest.raises(SystemExit) as caught:
        tap.makeService(options("--config", str(config), "--announce"), FakeReactor())
    assert str(caught.value) == (
        "modserver: --announce needs python-zeroconf, which is not installed: "
        "pip install '.[discovery]' in modserver's checkout (or pip install zeroconf)"
    )
    no_announce = tap.makeService(options("--config", str(config)), FakeReactor())
    assert no_announce.settings.announce is None  # the default carries on without it


@pytest.mark.parametrize(
    "argv, message",
    [
        (("--stop-grace", "0"), "--stop-grace: '0' is not a positive number of seconds"),
        (("--max-request", "10Q"), "--max-request: '10Q' is not a byte count"),
        (("--max-connections", "abc"), "--max-connections: 'abc' is not a whole number"),
        (("--json-log-count", "-1"), "--json-log-count: '-1' is not a whole number of at least 0"),
        (("--interface", "0.0.0.0:36577"), "give the port with --port"),
    ],
)
def test_a_bad_option_value_names_the_option(argv, message):
    with pytest.raises(usage.UsageError, match=re.escape(message)):
        options(*argv)


@pytest.mark.parametrize(
    "written, escaped",
    [
        (
            r"mtls:0:certKey=C:\certs\server.pem:caCerts=C:\certs\ca.pem",
            r"mtls:0:certKey=C\:\\certs\\server.pem:caCerts=C\:\\certs\\ca.pem",
        ),
        (
            r"ssl:443:privateKey=d:/keys/k.pem:certKey=d:/keys/c.pem:interface=0.0.0.0",
            r"ssl:443:privateKey=d\:/keys/k.pem:certKey=d\:/keys/c.pem:interface=0.0.0.0",
        ),
        # already escaped, or not a path with a drive: as written
        (r"ssl:443:certKey=C\:/certs/server.pem", r"ssl:443:certKey=C\:/certs/server.pem"),
        ("mtls:0:certKey=server.pem:caCerts=ca.pem", "mtls:0:certKey=server.pem:caCerts=ca.pem"),
        ("tcp:36577:interface=::1", "tcp:36577:interface=::1"),
    ],
)
def test_windows_paths_in_endpoint_strings_are_taken_as_written(written, escaped):
    assert windows_paths_escaped(written) == escaped


def test_a_tls_endpoint_with_windows_paths_reads_those_files(tmp_path):
    config = tmp_path / "lab.config"
    config.write_text("{}")
    listen = r"mtls:0:certKey=C:\lab certs\server.pem:caCerts=C:\lab certs\ca.pem"
    with pytest.raises(SystemExit) as caught:
        tap.makeService(options("--config", str(config), "--listen", listen), FakeReactor())
    # The drive's colon did not cut the option: the file was looked for whole.
    assert r"cannot read certKey file C:\lab certs\server.pem" in str(caught.value)


@pytest.mark.parametrize("width", [80, 100])
def test_help_never_cuts_an_endpoint_string(width):
    text = tap.Options().getUsage(width=width)
    whole = {
        "tcp:36577:interface=0.0.0.0",
        "tcp:8080:interface=0.0.0.0",
        "ssl:36578:certKey=server.pem:privateKey=server.key",
        "mtls:36578:certKey=server.pem:privateKey=server.key:caCerts=lab-ca.pem",
        "systemd:domain=INET:index=0",
        "ssl:",
        "mtls:",
    }
    tokens = re.findall(r"\b(?:tcp|ssl|mtls|systemd):[^\s;,()]*", text)
    assert {token.rstrip(".") for token in tokens} <= whole
    assert all(example in text for example in whole)
