"""The systemd units in examples/systemd/: valid for systemd, and working through real
socket activation (systemd-socket-activate, as systemd itself hands a socket over).

Both tools come with Debian's systemd package (apt-get install systemd); the
tests are skipped where they are missing.
"""

from __future__ import annotations

import configparser
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.helpers import (
    ON_WINDOWS,
    ServerProcess,
    call,
    free_port,
    hello,
    response,
    twistd_command,
    wait_for,
)

UNITS = Path(__file__).resolve().parent.parent / "examples" / "systemd"
ANALYZE = shutil.which("systemd-analyze")
ACTIVATE = shutil.which("systemd-socket-activate")
INSTALL = "Debian's systemd package: apt-get install systemd"


def unit(name: str) -> configparser.ConfigParser:
    """A unit file's sections and keys (systemd's syntax is close enough to INI's)."""
    parsed = configparser.ConfigParser(interpolation=None, strict=False)
    parsed.optionxform = str  # keys are case-sensitive
    parsed.read(UNITS / name)
    return parsed


def exec_start() -> list[str]:
    return shlex.split(unit("modserver.service")["Service"]["ExecStart"])


def test_the_units_ship_and_name_the_same_socket():
    socket, service = unit("modserver.socket"), unit("modserver.service")
    name = socket["Socket"]["FileDescriptorName"]
    assert socket["Socket"]["Service"] == "modserver.service"
    assert "modserver.socket" in service["Unit"]["Requires"]
    listen = exec_start()[exec_start().index("--listen") + 1]
    assert listen == f"systemd:domain=INET:name={name}"
    assert exec_start()[1:4] == ["-n", "--pidfile=", "modserver"]


@pytest.mark.skipif(ANALYZE is None, reason=f"needs systemd-analyze ({INSTALL})")
def test_systemd_analyze_verify_finds_nothing_to_say(tmp_path):
    # verify checks that ExecStart's program exists: point it at this twistd.
    twistd = Path(twistd_command()[0]).resolve()
    shipped = exec_start()[0]
    for name in ("modserver.socket", "modserver.service"):
        text = (UNITS / name).read_text().replace(shipped, str(twistd))
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        [ANALYZE, "verify", "--man=no", "modserver.socket", "modserver.service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # It can print errors and still exit 0: nothing printed is the pass.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.skipif(
    ACTIVATE is None or ON_WINDOWS, reason=f"needs systemd-socket-activate ({INSTALL})"
)
def test_socket_activation_with_the_shipped_command_line(tmp_path):
    """The first client's connection starts the server, which serves it on the
    socket it was handed; a stop by SIGTERM ends it with SIGTERM's status."""
    srv = ServerProcess(tmp_path, {"basic": ["basic", "Basic", None]})
    port = free_port()
    command = exec_start()
    command[0:1] = twistd_command()
    command[command.index("--config") + 1] = str(srv.config_path)
    name = unit("modserver.socket")["Socket"]["FileDescriptorName"]
    activate = [ACTIVATE, "--listen", f"127.0.0.1:{port}", f"--fdname={name}", *command]
    with open(srv.log_path, "wb") as log:
        process = subprocess.Popen(activate, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        wait_for(lambda: "Listening on 127.0.0.1" in srv.log(), what="systemd-socket-activate")
        assert "modserver" not in srv.log()  # not started before a client came
        assert response(hello(port, "_ping"))[0] == "127.0.0.1"
        assert f"listening on 127.0.0.1:{port}" in srv.log()  # the socket handed over
        srv.port = port
        srv.wait_settled()
        assert response(call(port, "basic", "add", 2, 3)) == 5
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
            raise
    assert code == -signal.SIGTERM, srv.log()
    assert "Server Shut Down." in srv.log()


def header_commands(name: str) -> list[str]:
    """The commands a unit's header comment tells the reader to run."""
    return [
        line[1:].strip()
        for line in (UNITS / name).read_text().splitlines()
        if line.startswith("#   ")
    ]


@pytest.mark.parametrize("name", ["modserver.socket", "modserver.service"])
def test_each_units_header_gives_the_steps_docs_operating_gives(name):
    docs = (UNITS.parent.parent / "docs" / "operating.md").read_text()
    steps = docs[docs.index("## Running under systemd") :]
    steps = steps[steps.index("```\n") + 4 : steps.index("\n```", steps.index("```\n") + 4)]
    documented = [line.replace("examples/systemd/", "") for line in steps.splitlines()]
    assert "sudo systemd-analyze verify /etc/systemd/system/modserver.{socket,service}" in (
        header_commands(name)
    )
    assert header_commands(name)[: len(documented)] == documented
