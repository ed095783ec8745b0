"""modserver-client: outputs and exit statuses against a real server."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from modserver import client
from tests.helpers import ServerProcess, free_port, wait_for

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


def test_status_is_a_short_table_for_people_and_json_for_programs(server):
    code, out, err = run(server, "status")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) < 10
    assert re.fullmatch(r"modserver: modserver \S+, up \d+\w.*, 2 modules, 1 connection", lines[0])
    assert lines[1].split() == list(client.STATUS_COLUMNS)
    assert client.STATUS_COLUMNS[:3] == ("MODULE", "STATE", "PID")
    assert lines[2].split()[:2] in (["basic", "ready"], ["basic", "busy"])
    assert lines[3].split()[:2] == ["broken", "failed"]
    assert lines[-1].startswith("  broken: LoadError: broken failed to load: ModuleNotFoundError")
    code, out, _ = run(server, "status", "basic")
    assert code == 0 and "1 module," in out and "broken" not in out
    code, out, _ = run(server, "--json", "status", "basic")
    assert json.loads(out)["modules"]["basic"]["state"] in ("ready", "busy")
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
    assert code == 2 and out == ""
    assert err.splitlines()[-1].endswith("the following arguments are required: module")


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


# Waiting as long as the server will ---------------------------------------------------


def test_a_hanging_call_gets_the_servers_timeout_and_the_next_call_its_answer(tmp_path):
    config = {"pm": {"module": "lifecycle", "entry": "Life", "timeout": 5}}
    with ServerProcess(tmp_path, config).start() as srv:
        where = ["--host", "127.0.0.1", "--port", str(srv.port)]
        hanging = subprocess.Popen(
            [*command(), *where, "call", "pm", "hang"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(lambda: srv.module_status("pm")["current_call"], what="the hanging call")
            code, out, err = run(srv, "call", "pm", "sleep", "0.1")  # waits its turn
            assert (code, out, err) == (0, "0.1\n", "")
            out, err = hanging.communicate(timeout=30)
        finally:
            hanging.kill()
        assert hanging.returncode == 1 and out == ""
        assert err.startswith("error: Timeout: pm.hang did not answer within 5 s; its worker")
        code, _, err = run(srv, "--timeout", "0.5", "call", "pm", "hang")  # given: it wins
        assert code == 3 and "within 0.5 s" in err and "--timeout SECONDS" in err


@pytest.mark.parametrize(
    "option, message",
    [
        (("--timeout", "-1"), "argument --timeout: '-1' is not a positive number of seconds"),
        (("--timeout", "nan"), "argument --timeout: 'nan' is not a positive number of seconds"),
        (("--port", "99999"), "argument --port: '99999' is not a port number (1 to 65535)"),
        (("--port", "0"), "argument --port: '0' is not a port number (1 to 65535)"),
    ],
)
def test_impossible_timeouts_and_ports_are_usage_errors(option, message):
    code, out, err = bare(*option, "ping")
    assert code == 2 and out == "" and err.rstrip().endswith(message)
    assert "Traceback" not in err
