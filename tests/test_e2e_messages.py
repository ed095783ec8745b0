"""What the server says, with real processes: to people at a terminal, about
arguments, about a module that cannot load, a failing __exit__, and which
files it watches."""

from __future__ import annotations

import re

import pytest

from tests.helpers import Connection, ServerProcess, call, hello, response, wait_for

CONFIG = {
    "basic": ["basic", "Basic", None],
    "crasher": ["dies_loading", "Never", None],
    "exiting": ["bad_exit", "BadExit", None],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory, platform_mode):
    with ServerProcess(tmp_path_factory.mktemp("messages"), CONFIG).start() as srv:
        yield srv


def test_a_line_typed_into_telnet_gets_a_readable_plain_reply(server):
    with Connection(server.port) as conn:
        conn.send_raw(b"hello there\r\n")
        line = conn.read_line()
        assert line.startswith(b'{"response": "BadRequest: \'hello there\' is neither JSON')
        assert conn.is_closed()


def test_too_many_arguments_are_counted_as_the_client_gave_them(server):
    reply = call(server.port, "basic", "add", 1, 2, 3)
    assert reply["response"] == "TypeError: basic.add(a, b) takes 2 arguments but 3 were given"
    assert reply["traceback"] == reply["response"] + "\n"
    reply = call(server.port, "basic", "add", 1)
    assert reply["response"] == "TypeError: basic.add(a, b) takes 2 arguments but 1 was given"


def test_a_type_error_inside_the_method_is_left_as_it_was(server):
    reply = call(server.port, "basic", "add", 1, "x")
    assert reply["response"].startswith("TypeError: unsupported operand type(s) for +")
    assert "in add" in reply["traceback"]


def test_a_module_that_dies_while_loading_shows_its_last_output_once(server):
    wait_for(
        lambda: server.module_status("crasher")["restarts"] >= 3,
        timeout=30,
        what="a few attempts to load",
    )
    reply = hello(server.port, "crasher")
    assert reply["response"].startswith("WorkerDied: the worker of crasher died while loading")
    assert reply["traceback"].count("dies_loading: the vendor library crashed") == 1


def test_a_failing_exit_is_logged_under_the_modules_name_with_its_frames(server):
    assert response(hello(server.port, "_reload_exiting")) == 'Reloaded "exiting"'
    found = wait_for(
        lambda: re.search(
            r"\[exiting#error\] bad_exit: BadExit\.__exit__ failed: "
            r"RuntimeError: the stage did not park\n((?:\t.*\n|    .*\n)+)",
            server.log(),
        ),
        what="the __exit__ failure in the log",
    )
    trace = found.group(1)
    assert "bad_exit.py" in trace and "in __exit__" in trace and "in _park" in trace
    assert "worker.py" not in trace and "__main__" not in found.group(0)


def test_packages_reached_through_pythonpath_are_not_watched_as_the_users_files(tmp_path):
    vendor = tmp_path / "vendor"
    serial = vendor / "fakeserial"
    serial.mkdir(parents=True)
    parts = [f"part{i}" for i in range(9)]
    (serial / "__init__.py").write_text("".join(f"from . import {p}\n" for p in parts))
    for part in parts:
        (serial / f"{part}.py").write_text("BAUD = 9600\n")
    labmods = vendor / "labmods"  # the lab's own modules, also on that PYTHONPATH
    labmods.mkdir()
    (labmods / "__init__.py").write_text("")
    (labmods / "stage.py").write_text("import fakeserial\n\n\nclass Stage:\n    pass\n")
    (tmp_path / "serial_user.py").write_text("import fakeserial\n\n\nclass User:\n    pass\n")
    env = {"PYTHONPATH": str(vendor)}
    config = {
        "user": {"module": "serial_user", "entry": "User", "env": env},
        "stage": {"module": "labmods.stage", "entry": "Stage", "env": env},
    }
    with ServerProcess(tmp_path, config).start() as srv:
        user, stage = srv.module_status("user"), srv.module_status("stage")
        assert user["state"] == "ready" and stage["state"] == "ready"
        assert user["files"] == [str(tmp_path / "serial_user.py")]
        assert stage["files"] == [str(labmods / "__init__.py"), str(labmods / "stage.py")]
