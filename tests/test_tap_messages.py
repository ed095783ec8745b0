"""What ``twistd modserver`` says about its version and about endpoints it cannot use."""

from __future__ import annotations

import os
import subprocess

import pytest

import modserver
from modserver.server.endpoint_help import explain, host_port, systemd_problem
from tests.helpers import modserver_command, twistd_command

UNKNOWN = ValueError("Unknown endpoint type: '0.0.0.0'")
PID = str(os.getpid())  # LISTEN_PID naming this process


@pytest.mark.parametrize(
    ("written", "suggested"),
    [
        ("0.0.0.0:8080", "tcp:8080:interface=0.0.0.0"),
        ("127.0.0.1:36577", "tcp:36577:interface=127.0.0.1"),
        ("localhost:8080", "tcp:8080:interface=127.0.0.1"),
        ("[::]:8080", "tcp:8080:interface=\\:\\:"),
    ],
)
def test_host_port_is_answered_with_the_endpoint_to_write(written, suggested):
    assert host_port(written)[2] == suggested
    assert explain(written, UNKNOWN).endswith(f", write {suggested}")


@pytest.mark.parametrize("written", ["lab-pc:8080", "carrier-pigeon:9:x", "tcp:8080"])
def test_other_mistakes_keep_twisteds_reason(written):
    assert explain(written, UNKNOWN) == str(UNKNOWN)


def test_systemd_without_any_socket_says_so():
    said = systemd_problem("systemd:domain=INET:index=0", {})
    assert said.startswith("no socket was handed over to modserver (LISTEN_FDS is not set)")
    assert "systemd-socket-activate" in said


def test_systemd_sockets_for_another_process_say_so():
    said = systemd_problem("systemd:domain=INET:index=0", {"LISTEN_FDS": "1", "LISTEN_PID": "1"})
    assert f"handed over to process 1, not to this one ({os.getpid()})" in said


def test_systemd_sockets_without_names_say_what_twisted_needs():
    said = systemd_problem("systemd:domain=INET:index=0", {"LISTEN_FDS": "1", "LISTEN_PID": PID})
    assert "LISTEN_FDNAMES" in said and "--fdname" in said


def test_systemd_index_beyond_the_sockets_twisted_took_over():
    environ = {"LISTEN_FDNAMES": "modserver"}  # Twisted removed LISTEN_FDS and LISTEN_PID
    said = systemd_problem("systemd:domain=INET:index=3", environ)
    assert said.startswith("systemd handed over 1 socket (names: modserver)")


def run(*args) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    return subprocess.run(
        [*modserver_command(), *args], capture_output=True, text=True, timeout=60, env=environ
    )


def test_twistd_modserver_version_is_modservers():
    result = subprocess.run(
        [*twistd_command(), "modserver", "--version"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert result.stdout.startswith(f"modserver {modserver.__version__} (Twisted ")


def test_an_address_given_as_http_endpoint_gets_the_endpoint_to_write(tmp_path):
    result = run("--http", "0.0.0.0:8080")
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        "to listen on 0.0.0.0 port 8080, write tcp:8080:interface=0.0.0.0"
    )


def test_listen_systemd_without_an_inherited_socket_says_so():
    result = run("--listen", "systemd:domain=INET:index=0")
    assert result.returncode == 1
    assert "no socket was handed over to modserver (LISTEN_FDS is not set)" in result.stderr
