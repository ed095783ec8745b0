"""modserver-client: outputs and exit statuses against a real server."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from modserver import client
from tests.helpers import ServerProcess, free_port

CONFIG = {"basic": ["basic", "Basic", None], "broken": ["broken_import", "Broken", None]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerProcess(tmp_path_factory.mktemp("cli"), CONFIG).start() as srv:
        yield srv


def command() -> list[str]:
    script = shutil.which("modserver-client")
    return [script] if script else [sys.executable, "-m", "modserver.client"]


def run(server, *args):
    result = subprocess.run(
        [*command(), "--host", "127.0.0.1", "--port", str(server.port), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, result.stdout, result.stderr


def test_ping(server):
    code, out, err = run(server, "ping")
    assert code == 0 and err == ""
    assert out.startswith("127.0.0.1:")


def test_help_and_modules(server):
    assert run(server, "help")[1].startswith("Available modules: basic, broken")
    assert run(server, "modules") == (0, "basic\nbroken\n", "")
    assert run(server, "modules", "br") == (0, "broken\n", "")
    assert run(server, "--json", "modules") == (0, '["basic", "broken"]\n', "")


def test_reload(server):
    assert run(server, "reload", "basic") == (0, 'Reloaded "basic"\n', "")
    assert run(server, "reload") == (0, "Reloaded config\n", "")
    code, out, err = run(server, "reload", "nope")
    assert code == 1 and out == "" and err == 'error: Failed to find module "nope"\n'


def test_status(server):
    code, out, _ = run(server, "status", "basic")
    assert code == 0 and json.loads(out)["modules"]["basic"]["state"] in ("ready", "busy")
    code, out, _ = run(server, "--json", "status")
    assert len(out.splitlines()) == 1 and "broken" in json.loads(out)["modules"]


def test_call_parses_arguments_as_json_when_they_parse(server):
    code, out, _ = run(
        server,
        "--json",
        "call",
        "basic",
        "echo",
        "5",
        "2.5",
        "true",
        "null",
        "[1, 2]",
        '"7"',
        "plain text",
    )
    assert code == 0
    assert json.loads(out) == [5, 2.5, True, None, [1, 2], "7", "plain text"]
    assert run(server, "call", "basic", "add", "2", "3") == (0, "5\n", "")
    assert run(server, "call", "basic", "echo", "x")[1] == '[\n  "x"\n]\n'


def test_a_server_error_exits_1_with_the_reason_on_stderr_once(server):
    code, out, err = run(server, "call", "basic", "boom", "broken laser")
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert lines[0] == "error: ValueError: broken laser"
    assert lines[1] == "Traceback (most recent call last):"
    assert err.count("ValueError: broken laser") == 1


def test_an_unreachable_server_exits_3(tmp_path):
    port = free_port()
    result = subprocess.run(
        [*command(), "--port", str(port), "--host", "127.0.0.1", "ping"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3
    assert result.stderr.startswith(f"error: cannot connect to modserver at 127.0.0.1:{port}")


def test_a_timeout_exits_3_and_says_what_it_waited_for_and_which_option_sets_it(server):
    code, _, err = run(server, "--timeout", "0.3", "call", "basic", "sleep", "2")
    assert code == 3 and "within 0.3 s while waiting for basic.sleep()" in err
    assert "the client's timeout, which --timeout SECONDS sets" in err
    assert "a call already running goes on in the module" in err


def test_usage_errors_exit_2(server):
    assert run(server, "launch")[0] == 2


def test_main_returns_the_status_for_use_from_python(server, capsys):
    assert client.main(["--host", "127.0.0.1", "--port", str(server.port), "ping"]) == 0
    assert capsys.readouterr().out.startswith("127.0.0.1:")


def bare(*args):
    """modserver-client with exactly these arguments."""
    result = subprocess.run([*command(), *args], capture_output=True, text=True, timeout=60)
    return result.returncode, result.stdout, result.stderr


def test_options_are_accepted_after_the_command_too(server):
    port = str(server.port)
    assert bare("call", "basic", "add", "2", "3", "--host", "127.0.0.1", "--port", port) == (
        0,
        "5\n",
        "",
    )
    assert bare("--host", "127.0.0.1", "modules", "--port", port, "--json") == (
        0,
        '["basic", "broken"]\n',
        "",
    )
    code, _, err = bare("--host", "127.0.0.1", "--port", port, "call", "basic", "sleep", "2",
                        "--timeout", "0.3")  # fmt: skip
    assert code == 3 and "within 0.3 s" in err
    assert bare("--port", "1", "ping", "--host", "127.0.0.1", "--port", port)[0] == 0


def test_call_without_a_function_and_help_module_print_the_modules_help(server):
    code, out, err = run(server, "call", "basic")
    assert code == 0 and err == "" and out.startswith("basic: calls take positional arguments")
    assert "add(a, b) - Return a + b." in out
    assert run(server, "help", "basic") == (code, out, err)
    assert run(server, "help")[1].startswith("Available modules: ")


@pytest.mark.parametrize("where", [(), ("call",)])
def test_help_lists_every_exit_status(where):
    code, out, _ = bare(*where, "--help")
    assert code == 0
    statuses = out[out.index("exit status:") :]
    for status in ("0  done", "1  the server answered", "2  usage", "3  the server could not"):
        assert status in statuses


def test_usage_mistakes_exit_2_and_say_so(server):
    code, out, err = run(server, "call")
    assert code == 2 and out == "" and "the following arguments are required: module" in err


def test_version_is_modservers(server):
    from modserver import __version__

    assert bare("--version") == (0, f"modserver-client {__version__}\n", "")


def test_lease_take_show_renew_release_from_the_command_line(server):
    code, out, err = run(server, "lease", "take", "basic", "30")
    assert code == 0 and err == "" and json.loads(out)["holder"] == "127.0.0.1"
    assert json.loads(run(server, "--json", "lease", "show")[1])["basic"]["holder"] == "127.0.0.1"
    assert json.loads(run(server, "lease", "renew", "basic", "60")[1])["seconds_left"] == 60
    assert run(server, "lease", "release", "basic") == (0, "Released the lease on basic\n", "")
    assert run(server, "lease", "show", "basic") == (0, "null\n", "")
    code, out, err = run(server, "lease", "release", "basic")
    assert code == 1 and err.startswith("error: BadRequest: 127.0.0.1 holds no lease on basic")


def test_lease_mistakes_exit_2(server):
    code, _, err = run(server, "lease", "take", "basic")
    assert code == 2 and "lease take needs a module and a number of seconds" in err
