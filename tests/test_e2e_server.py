"""The server as an operator runs it: command line, defaults, limits, options."""

from __future__ import annotations

import glob
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import wine
from tests.helpers import (
    GRACEFUL_STOP,
    HARD_KILL,
    ON_WINDOWS,
    Connection,
    ServerProcess,
    call,
    free_port,
    hello,
    modserver_command,
    pid_alive,
    response,
    stopped_gracefully,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent

# Each test runs on this system's platform layer and on the portable one.
pytestmark = pytest.mark.usefixtures("platform_mode")


def run_twistd(args, cwd, timeout=30):
    """twistd run to its end; a bound (longer under Wine) that, passed, fails
    the test with what it had printed."""
    try:
        return subprocess.run(
            [*modserver_command(), *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout * wine.SLOWER,
        )
    except subprocess.TimeoutExpired as exc:
        printed = "".join(
            part.decode(errors="replace") if isinstance(part, bytes) else part
            for part in (exc.stdout, exc.stderr)
            if part
        )
        raise AssertionError(f"{exc}; it had printed:\n{printed}") from None


# Command-line errors are one clear line --------------------------------------


def _one_line_error(result, *fragments):
    """Exit status 1 and one line saying why (stderr, or the log once twistd logs)."""
    output = result.stderr + result.stdout
    assert result.returncode == 1, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if "modserver:" in line]
    assert len(lines) == 1, output
    for fragment in fragments:
        assert fragment in lines[0], output


def test_missing_config_file_is_a_one_line_error(tmp_path):
    result = run_twistd(["--config", "nowhere.config"], tmp_path)
    _one_line_error(result, "cannot read config file nowhere.config", "No such file")


def test_config_that_is_not_json_is_a_one_line_error(tmp_path):
    (tmp_path / "server.config").write_text("{ not json")
    result = run_twistd(["--config", "server.config"], tmp_path)
    _one_line_error(result, "server.config is not valid JSON")


def test_bad_endpoint_string_is_a_one_line_error(tmp_path):
    result = run_twistd(["--listen", "carrier-pigeon:9"], tmp_path)
    _one_line_error(result, "bad --listen endpoint 'carrier-pigeon:9'")


# The system's own words for a port another program holds (WSAEADDRINUSE).
ADDRESS_IN_USE = "WinError 10048" if ON_WINDOWS else "Address already in use"


def test_port_in_use_is_a_one_line_error_and_starts_no_worker(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        (tmp_path / "server.config").write_text(json.dumps({"basic": ["basic", "Basic", None]}))
        (tmp_path / "basic.py").write_text((ROOT / "tests/modules/basic.py").read_text())
        result = run_twistd(["--port", str(port)], tmp_path)
        _one_line_error(result, f"cannot listen on tcp:{port}:interface=127.0.0.1", ADDRESS_IN_USE)
        assert "starting worker" not in result.stdout
    finally:
        taken.close()


# Defaults ---------------------------------------------------------------------


def test_without_config_it_serves_the_bundled_demo(tmp_path):
    srv = ServerProcess(tmp_path, config=None)
    command = [
        *modserver_command(),
        "--listen",
        "tcp:0:interface=127.0.0.1",
    ]
    with srv.start(command=command):
        assert "serving the bundled demo modules" in srv.log()
        assert response(hello(srv.port, "_get_modules")) == ["echo", "laser", "wavemeter"]
        assert response(call(srv.port, "echo", "add", 2, 3)) == 5
        assert response(call(srv.port, "laser", "set_wavelength", 800)) == 800.0
        assert isinstance(response(call(srv.port, "wavemeter", "GetPower", 1)), float)


def test_server_config_in_the_working_directory_is_used(tmp_path):
    srv = ServerProcess(tmp_path, {"only": ["basic", "Basic", None]})
    command = [
        *modserver_command(),
        "--listen",
        "tcp:0:interface=127.0.0.1",
    ]
    with srv.start(command=command, wait_ready=False):
        assert response(hello(srv.port, "_get_modules")) == ["only"]


def test_port_and_interface_shortcuts(tmp_path):
    port = free_port()
    srv = ServerProcess(tmp_path, {"basic": ["basic", "Basic", None]})
    command = [
        *modserver_command(),
        "--config",
        str(srv.config_path),
        "--port",
        str(port),
        "--interface",
        "localhost",
    ]
    with srv.start(command=command, port=port, wait_ready=False):
        assert response(hello(port, "_ping"))[0] == "127.0.0.1"


def test_compatible_server_main_runs_the_same_server(tmp_path):
    """A server.py written for the original: server.main(name, config, ip, port, level, log)."""
    port = free_port()
    srv = ServerProcess(tmp_path, {"basic": ["basic", "Basic", None]})
    (tmp_path / "server.py").write_text(
        "import logging, os\n"
        "import modserver.server as server\n"
        "BASE = os.path.dirname(os.path.abspath(__file__))\n"
        "if __name__ == '__main__':\n"
        f"    server.main('HW Server', os.path.join(BASE, 'server.config'), 'localhost', {port},\n"
        "                logging.INFO, os.path.join(BASE, 'logs', 'server.log'))\n"
    )
    srv.start(command=[sys.executable, "server.py"], port=port)
    try:
        assert response(call(port, "basic", "add", 1, 2)) == 3
        assert response(hello(port, "_status"))["server"]["name"] == "HW Server"
        wait_for(
            lambda: "[basic#info] ready" in (tmp_path / "logs/server.log").read_text(),
            what="the log file",
        )
    finally:
        assert srv.stop() == 0


# Limits -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_limits(tmp_path_factory, platform_mode):
    directory = tmp_path_factory.mktemp("limits")
    config = {"basic": ["basic", "Basic", None]}
    args = ("--max-request", "2K", "--max-reply", "4K")
    with ServerProcess(directory, config, args).start() as srv:
        yield srv


@pytest.mark.parametrize("plain", [False, True])
def test_request_over_the_limit_is_an_error_then_close(small_limits, plain):
    with Connection(small_limits.port) as conn:
        conn.send({"name": "basic"}, plain)
        response(conn.reply(plain))
        conn.send({"function": "echo", "args": ["z" * 5000]}, plain)
        reply = conn.reply(plain)
        assert reply["error"] is True
        assert reply["response"].startswith("LineTooLong: the message is longer than")
        assert conn.is_closed()


def test_an_endless_line_is_cut_off(small_limits):
    with Connection(small_limits.port) as conn:
        conn.send_raw(b"x" * 100_000)
        reply = conn.reply()
        assert reply["error"] is True and reply["response"].startswith("LineTooLong")
        assert conn.is_closed()


def test_reply_over_the_limit_is_an_error(small_limits):
    reply = call(small_limits.port, "basic", "big", 10_000)
    assert reply["error"] is True
    assert reply["response"].startswith("ReplyTooLarge: the reply of basic.big is")
    assert response(call(small_limits.port, "basic", "big", 100)) == "x" * 100


# Module options ---------------------------------------------------------------


def _other_interpreter():
    """An older CPython (stdlib only), to show the worker does not need our environment.

    MODSERVER_OLD_PYTHON names one (CI sets it to a Python 3.7).
    """
    if os.environ.get("MODSERVER_OLD_PYTHON"):
        return os.environ["MODSERVER_OLD_PYTHON"]
    if ON_WINDOWS:  # (under Wine, Linux's /usr/bin/python3 is visible, but no Windows program)
        return None
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.[789].*/bin/python3")))
    candidates += ["/usr/bin/python3"]
    for path in candidates:
        if os.path.exists(path) and os.path.realpath(path) != os.path.realpath(sys.executable):
            return path
    return None


@pytest.mark.skipif(
    ON_WINDOWS, reason="a link to a venv's python.exe is no Python on Windows (no pyvenv.cfg)"
)
def test_per_module_python_cwd_and_env(tmp_path):
    link = tmp_path / "lab-python"
    link.symlink_to(sys.executable)
    workdir = tmp_path / "instrument-dir"
    workdir.mkdir()
    config = {
        "who": {
            "module": "whoami",
            "entry": "WhoAmI",
            "python": str(link),
            "cwd": "instrument-dir",
            "env": {"MODSERVER_TEST_VALUE": "set-by-config"},
        },
    }
    with ServerProcess(tmp_path, config).start() as srv:
        facts = response(call(srv.port, "who", "facts"))
        assert facts["executable"] == str(link)
        assert facts["cwd"] == str(workdir)
        assert facts["env"] == "set-by-config"


def test_worker_runs_under_another_python_without_twisted(tmp_path):
    python = _other_interpreter()
    if python is None:
        pytest.skip("no second Python interpreter on this machine")
    config = {
        "who": {"module": "whoami", "entry": "WhoAmI", "python": python},
        "basic": {"module": "basic", "entry": "Basic", "python": python},
    }
    with ServerProcess(tmp_path, config).start() as srv:
        facts = response(call(srv.port, "who", "facts"))
        assert facts["executable"] == python
        assert response(call(srv.port, "basic", "add", 20, 22)) == 42
        reply = call(srv.port, "basic", "boom", "old python")
        assert reply["error"] is True and reply["response"] == "ValueError: old python"


def test_imports_resolve_in_the_config_directory_then_the_working_directory(tmp_path):
    config_dir, cwd = tmp_path / "config", tmp_path / "cwd"
    config_dir.mkdir()
    cwd.mkdir()
    source = "class Where:\n    def where(self):\n        return {!r}\n"
    (config_dir / "shadowed.py").write_text(source.format("config directory"))
    (cwd / "shadowed.py").write_text(source.format("working directory"))
    (cwd / "cwd_only.py").write_text(source.format("working directory"))
    config = {"a": ["shadowed", "Where", None], "b": ["cwd_only", "Where", None]}
    srv = ServerProcess(config_dir, config)
    srv.start(
        command=[
            *modserver_command(),
            "--config",
            str(srv.config_path),
            "--listen",
            "tcp:0:interface=127.0.0.1",
        ],
        cwd=cwd,
    )
    try:
        assert response(call(srv.port, "a", "where")) == "config directory"
        assert response(call(srv.port, "b", "where")) == "working directory"
    finally:
        srv.stop()


# Shutdown ----------------------------------------------------------------------


def test_workers_exit_when_the_server_is_killed(tmp_path):
    config = {"basic": ["basic", "Basic", None], "busy": ["basic", "Basic", None]}
    srv = ServerProcess(tmp_path, config).start()
    pids = [srv.module_status(name)["pid"] for name in config]
    conn = Connection(srv.port)
    conn.send({"name": "busy"}, True)
    response(conn.reply(True))
    conn.send({"function": "sleep", "args": [30]}, True)
    srv.wait_state("busy", "busy")
    srv.stop(HARD_KILL)
    conn.close()
    wait_for(
        lambda: not any(pid_alive(pid) for pid in pids),
        timeout=2.0,
        what="every worker to exit after the server was killed",
    )


@pytest.mark.skipif(ON_WINDOWS, reason="on Windows os.kill ends a process at once: no SIGTERM")
def test_a_worker_sent_sigterm_directly_still_calls_exit(tmp_path):
    """Service managers (systemd's default KillMode) signal every process at once."""
    (tmp_path / "tidy.py").write_text(
        "import os\n"
        "class Tidy:\n"
        "    def __exit__(self, *exc):\n"
        "        open(os.environ['TIDY_MARK'], 'a').write('exit called\\n')\n"
    )
    mark = tmp_path / "mark.txt"
    config = {"one": {"module": "tidy", "entry": "Tidy", "env": {"TIDY_MARK": str(mark)}}}
    with ServerProcess(tmp_path, config).start() as srv:
        os.kill(srv.module_status("one")["pid"], signal.SIGTERM)
        wait_for(lambda: mark.exists() and "exit called" in mark.read_text(), what="__exit__")


# Windows: Ctrl-Break (SIGBREAK); Ctrl-C cannot be sent to another console process group.
STOP_SIGNALS = [GRACEFUL_STOP] if ON_WINDOWS else [signal.SIGTERM, signal.SIGINT]


@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=lambda sig: signal.Signals(sig).name)
def test_the_server_stops_every_worker_after_its_exit_hook(tmp_path, sig):
    (tmp_path / "tidy.py").write_text(
        "import os\n"
        "class Tidy:\n"
        "    def __exit__(self, *exc):\n"
        "        open(os.environ['TIDY_MARK'], 'a').write('exit called\\n')\n"
        "    def close(self):\n"
        "        open(os.environ['TIDY_MARK'], 'a').write('close called\\n')\n"
        "    def ping(self):\n"
        "        return 'pong'\n"
    )
    mark = tmp_path / "mark.txt"
    config = {
        "one": {"module": "tidy", "entry": "Tidy", "env": {"TIDY_MARK": str(mark)}},
        "two": {"module": "tidy", "entry": "Tidy", "env": {"TIDY_MARK": str(mark)}},
    }
    srv = ServerProcess(tmp_path, config).start()
    pids = [srv.module_status(name)["pid"] for name in config]
    started = time.monotonic()
    assert stopped_gracefully(srv.stop(sig, timeout=10), sig)
    assert time.monotonic() - started < 5
    assert mark.read_text().count("exit called") == 2
    assert "close called" not in mark.read_text()  # close() may be a hardware command
    assert not any(pid_alive(pid) for pid in pids)


# The example project ---------------------------------------------------------------


def test_the_example_project_runs_as_is(tmp_path):
    """examples/: the original README's project, served from the repository as it is."""
    srv = ServerProcess(tmp_path, config=None)
    command = [
        *modserver_command(),
        "--config",
        str(ROOT / "examples" / "server.config"),
        "--listen",
        "tcp:0:interface=127.0.0.1",
    ]
    srv.start(command=command, wait_ready=False)
    try:
        assert response(hello(srv.port, "_get_modules")) == ["moduleA", "moduleB"]
        # moduleA takes 3 s to start: the call waits for it rather than failing
        reply = call(srv.port, "moduleA", "anything", "ay", 1, False, None)
        assert response(reply) == "You successfully called the dispatching method!"
        assert response(call(srv.port, "moduleB", "fun1", 1)) == "No dispatching method necessary."
        wait_for(
            lambda: "127.0.0.1 asked for anything('ay', 1, False, None)" in srv.log(),
            what="moduleA's log line",
        )
    finally:
        srv.stop()


def test_an_unopenable_json_log_is_one_line_before_anything_starts(tmp_path):
    (tmp_path / "server.config").write_text(json.dumps({"basic": ["basic", "Basic", None]}))
    (tmp_path / "basic.py").write_text((ROOT / "tests/modules/basic.py").read_text())
    (tmp_path / "a-file").write_text("")
    where = tmp_path / "a-file" / "modserver.json"  # under a file: cannot be made
    args = ["--listen", "tcp:0:interface=127.0.0.1", "--json-log", str(where)]
    result = run_twistd(args, tmp_path)
    output = result.stderr + result.stdout
    assert result.returncode == 2, output
    assert "Traceback" not in output
    said = [line for line in output.splitlines() if "modserver:" in line]
    # One line naming the file, and the system's own reason (its words vary:
    # "Not a directory" on Linux).
    assert len(said) == 1 and said[0].startswith(f"modserver: cannot open --json-log {where}: ")
    if sys.platform.startswith("linux"):
        assert said[0].endswith(": Not a directory")
    assert "listening on" not in output and "starting worker" not in output


def test_the_startup_log_is_plain_and_says_a_load_error_once(tmp_path):
    with ServerProcess(tmp_path, {"broken": ["broken_import", "Broken", None]}).start() as srv:
        log = srv.log()
    assert re.search(r"serving 1 module from \S+ on ", log)
    lines = log.splitlines()
    at = next(i for i, line in enumerate(lines) if "[broken#error] LoadError" in line)
    event = [lines[at]]
    event += itertools.takewhile(lambda line: line.startswith("\t"), lines[at + 1 :])
    assert "\n".join(event).count("No module named 'this_package_does_not_exist'") == 1
    assert event[1] == "\tTraceback (most recent call last):"
    assert all(line.strip() for line in event)  # no empty indented line
    assert not re.search(r"(ClientFactory|StatusSite) starting on", log)
