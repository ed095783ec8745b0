"""Module lifecycle with real processes: crashes, hangs, hot reload, config changes, stops.

Where a test must show that something did *not* happen (a touch that
changes nothing, a config error logged once), it waits for a later event
that proves the poller has looked again, instead of sleeping.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.helpers import (
    HARD_KILL,
    HARD_KILL_EXIT,
    ON_WINDOWS,
    Connection,
    ServerProcess,
    call,
    hello,
    kill_hard,
    pid_alive,
    response,
    wait_for,
)

# Each test runs on this system's platform layer and on the portable one.
pytestmark = pytest.mark.usefixtures("platform_mode")

LIFE = ["lifecycle", "Life", None]
MARKER_SOURCE = "class Marker:\n    def value(self):\n        return {!r}\n"


def start(tmp_path, config, *args):
    return ServerProcess(tmp_path, config, args).start()


def rewrite(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def restarted(srv, module, old_pid):
    status = srv.module_status(module)
    return status["state"] == "ready" and status["pid"] not in (None, old_pid)


def prove_a_poll_happened(srv, module="marker"):
    """Change the marker module and wait for its restart: the poller has looked."""
    pid = srv.module_status(module)["pid"]
    path = srv.directory / "marker_module.py"
    path.write_text(MARKER_SOURCE.format(time.monotonic()))
    wait_for(lambda: restarted(srv, module, pid), what="the marker module to reload")


def with_marker(config):
    config = dict(config)
    config["marker"] = ["marker_module", "Marker", None]
    return config


def open_call(port, module, function, *args, **fields):
    """Send a request and return the connection, whose reply is read later."""
    conn = Connection(port)
    conn.send({"name": module}, True)
    assert response(conn.reply(True)) == "ack"
    conn.send({"function": function, "args": list(args), **fields}, True)
    return conn


@pytest.fixture
def marker_dir(tmp_path):
    (tmp_path / "marker_module.py").write_text(MARKER_SOURCE.format("first"))
    return tmp_path


# Deaths ------------------------------------------------------------------------------


def test_kill_9_mid_call_is_answered_within_a_second_and_waiting_calls_get_a_new_worker(tmp_path):
    with start(tmp_path, {"life": LIFE}) as srv:
        pid = srv.module_status("life")["pid"]
        in_flight = open_call(srv.port, "life", "sleep", 30)
        srv.wait_state("life", "busy")
        waiting = open_call(srv.port, "life", "version")
        wait_for(lambda: srv.module_status("life")["queue"] == 1, what="a waiting call")
        killed = time.monotonic()
        kill_hard(pid)
        reply = in_flight.reply(True)
        assert time.monotonic() - killed < 1.0
        assert reply["error"] is True
        assert reply["response"] == (
            f"WorkerDied: the worker of life died during sleep() ({HARD_KILL_EXIT})"
        )
        assert response(waiting.reply(True)) == 1
        status = srv.module_status("life")
        assert status["pid"] != pid and status["restarts"] == 1
        assert status["last_exit"] == HARD_KILL_EXIT


if ON_WINDOWS:
    SEGFAULT = (
        "exit code 0xC0000005 (access violation)",
        "Windows fatal exception: access violation",
    )
else:
    SEGFAULT = ("signal 11 (SIGSEGV)", "Fatal Python error: Segmentation fault")


@pytest.mark.parametrize(
    "method, args, how, output",
    [("die", [5], "exit code 5", "about to exit with 5"), ("segfault", [], *SEGFAULT)],
)
def test_a_worker_that_dies_in_a_call_is_named_and_respawned(tmp_path, method, args, how, output):
    with start(tmp_path, {"life": LIFE}) as srv:
        reply = call(srv.port, "life", method, *args)
        assert reply["error"] is True
        assert reply["response"] == f"WorkerDied: the worker of life died during {method}() ({how})"
        assert output in reply["traceback"]
        assert response(call(srv.port, "life", "version")) == 1


def test_a_module_in_a_crash_loop_backs_off_and_keeps_being_retried(tmp_path):
    with start(tmp_path, {"loop": ["crash_soon", "CrashSoon", None]}) as srv:
        status = wait_for(
            lambda: (
                (s := srv.module_status("loop"))["restarts"] >= 3 and s["state"] == "backoff" and s
            ),
            timeout=20,
            interval=0.01,
            what="the third death",
        )
        assert status["restart_in"] > 1.0  # deaths 1, 2, 3: waits 0, 1, 2 s
        assert status["last_exit"] == "exit code 9"
        wait_for(lambda: srv.module_status("loop")["restarts"] >= 4, timeout=20, what="a retry")
        log = srv.log()
        assert "[loop#error] worker died unexpectedly (exit code 9); restarting now" in log
        assert "[loop#error] worker died unexpectedly (exit code 9); restarting in 1 s" in log
        assert "[loop#error] worker died unexpectedly (exit code 9); restarting in 2 s" in log


# Hung calls ----------------------------------------------------------------------------


def test_a_hung_call_times_out_and_the_next_client_gets_a_new_worker(tmp_path):
    config = {"life": {"module": "lifecycle", "entry": "Life", "timeout": 1}}
    with start(tmp_path, config) as srv:
        pid = srv.module_status("life")["pid"]
        started = time.monotonic()
        reply = call(srv.port, "life", "hang")
        assert 0.9 <= time.monotonic() - started < 3
        assert reply["error"] is True
        assert reply["response"].startswith("Timeout: life.hang did not answer within 1 s")
        wait_for(lambda: not pid_alive(pid), what="the hung worker to be killed")
        assert response(call(srv.port, "life", "pid")) != pid


def test_a_per_request_timeout(tmp_path):
    with start(tmp_path, {"life": LIFE}) as srv:
        reply = call(srv.port, "life", "hang", timeout=0.5)
        assert reply["response"].startswith("Timeout: life.hang did not answer within 0.5 s")
        assert response(call(srv.port, "life", "version")) == 1


def test_reload_of_a_stuck_module_stops_it_after_the_grace_period(tmp_path):
    with start(tmp_path, {"life": LIFE}, "--stop-grace", "1") as srv:
        pid = srv.module_status("life")["pid"]
        stuck = open_call(srv.port, "life", "hang")
        srv.wait_state("life", "busy")
        started = time.monotonic()
        assert response(hello(srv.port, "_reload_life")) == 'Reloaded "life"'
        assert 1.0 <= time.monotonic() - started < 8
        reply = stuck.reply(True)
        assert reply["error"] is True and "life" in reply["response"]
        assert srv.module_status("life")["pid"] != pid


# Load failures ----------------------------------------------------------------------------


def test_an_import_error_is_retried_when_the_file_is_fixed_not_in_a_loop(tmp_path):
    broken = "class Fixme:\n    def ok(self)\n        return 'fixed'\n"
    (tmp_path / "fixme.py").write_text(broken)
    with start(tmp_path, {"fixme": ["fixme", "Fixme", None]}) as srv:
        reply = hello(srv.port, "fixme")
        assert reply["error"] is True and "SyntaxError" in reply["response"]
        assert srv.module_status("fixme")["state"] == "failed"
        (tmp_path / "fixme.py").write_text(broken.replace("def ok(self)", "def ok(self):"))
        srv.wait_state("fixme", "ready", timeout=10)
        assert response(call(srv.port, "fixme", "ok")) == "fixed"
        assert srv.log().count("[fixme#info] starting worker") == 2


def test_a_failed_module_is_retried_on_reload_and_on_a_config_change(tmp_path):
    with start(tmp_path, {"bad": ["bad_init", "BadInit", None]}) as srv:
        assert srv.module_status("bad")["state"] == "failed"
        reply = hello(srv.port, "_reload_bad")
        assert reply["error"] is True and "instrument not found" in reply["response"]
        assert srv.log().count("[bad#info] starting worker") == 2
        srv.write_config({"bad": ["basic", "Basic", None]})
        srv.wait_state("bad", "ready", timeout=10)
        assert response(call(srv.port, "bad", "add", 1, 1)) == 2


# Hot reload of module code -------------------------------------------------------------


def test_saving_a_module_file_reloads_it(tmp_path):
    with start(tmp_path, {"life": LIFE}) as srv:
        pid = srv.module_status("life")["pid"]
        assert response(call(srv.port, "life", "version")) == 1
        rewrite(tmp_path / "lifecycle.py", "VERSION = 1", "VERSION = 2")
        wait_for(
            lambda: response(call(srv.port, "life", "version")) == 2,
            timeout=10,
            what="the new code",
        )
        status = srv.module_status("life")
        assert status["pid"] != pid and status["restarts"] == 1
        assert "lifecycle.py changed; reloading" in srv.log()  # now, or once idle


def test_a_change_saved_during_a_call_takes_effect_right_after_it(tmp_path):
    with start(tmp_path, {"life": LIFE}) as srv:
        in_flight = open_call(srv.port, "life", "sleep", 2)
        srv.wait_state("life", "busy")
        rewrite(tmp_path / "lifecycle.py", "VERSION = 1", "VERSION = 2")
        wait_for(
            lambda: "lifecycle.py changed; reloading once idle" in srv.log(),
            what="the change to be seen",
        )
        waiting = open_call(srv.port, "life", "version")
        assert response(in_flight.reply(True)) == 2
        assert response(waiting.reply(True)) == 2  # served by the new code


def test_a_keep_alive_session_is_not_interrupted_by_a_reload(tmp_path):
    with start(tmp_path, {"life": LIFE}, "--keepalive-timeout", "30") as srv:
        session = open_call(srv.port, "life", "pid", keep_alive=True)
        pid = response(session.reply(True))
        rewrite(tmp_path / "lifecycle.py", "VERSION = 1", "VERSION = 2")
        wait_for(
            lambda: "lifecycle.py changed; reloading once idle" in srv.log(),
            what="the change to be seen",
        )
        for _ in range(3):
            session.send({"function": "version", "keep_alive": True}, True)
            assert response(session.reply(True)) == 1
        session.send({"function": "pid"}, True)
        assert response(session.reply(True)) == pid
        wait_for(lambda: response(call(srv.port, "life", "version")) == 2, what="the new code")


def test_a_touch_that_changes_nothing_does_not_reload(marker_dir):
    with start(marker_dir, with_marker({"life": LIFE})) as srv:
        pid = srv.module_status("life")["pid"]
        path = marker_dir / "lifecycle.py"
        content = path.read_bytes()
        os.utime(path)
        path.write_bytes(content)  # an editor saving unchanged text
        prove_a_poll_happened(srv)
        assert srv.module_status("life")["pid"] == pid
        assert "lifecycle.py changed" not in srv.log()


def test_extra_watched_paths_reload_the_module(tmp_path):
    (tmp_path / "settings.ini").write_text("gain = 1\n")
    config = {"life": {"module": "lifecycle", "entry": "Life", "watch": "settings.ini"}}
    with start(tmp_path, config) as srv:
        pid = srv.module_status("life")["pid"]
        (tmp_path / "settings.ini").write_text("gain = 2\n")
        wait_for(lambda: restarted(srv, "life", pid), what="a reload")


# Hot reload of the config -----------------------------------------------------------------


def test_config_changes_add_change_and_remove_modules_and_leave_the_rest(tmp_path):
    config = {"keep": LIFE, "change": LIFE, "remove": LIFE}
    with start(tmp_path, config) as srv:
        pids = {name: srv.module_status(name)["pid"] for name in config}
        in_flight = open_call(srv.port, "remove", "sleep", 1.5)
        srv.wait_state("remove", "busy")
        srv.write_config(
            {
                "keep": LIFE,
                "change": {"module": "lifecycle", "entry": "Life", "timeout": 60},
                "added": LIFE,
            }
        )
        wait_for(
            lambda: response(hello(srv.port, "_get_modules")) == ["keep", "change", "added"],
            what="the new config",
        )
        assert response(in_flight.reply(True)) == 1.5  # the removed module finished its call
        wait_for(lambda: restarted(srv, "change", pids["change"]), what="change to restart")
        srv.wait_state("added", "ready")
        assert srv.module_status("keep")["pid"] == pids["keep"]
        wait_for(lambda: not pid_alive(pids["remove"]), what="the removed worker to exit")
        assert hello(srv.port, "remove")["error"] is True


def test_garbage_in_the_config_changes_nothing_and_is_logged_once(marker_dir):
    config = with_marker({"life": LIFE})
    with start(marker_dir, config) as srv:
        pid = srv.module_status("life")["pid"]
        srv.config_path.write_text('{"life": ["lifecycle", "Life", null],')
        wait_for(lambda: "is not valid JSON" in srv.log(), what="the error in the log")
        prove_a_poll_happened(srv)
        prove_a_poll_happened(srv)
        assert srv.log().count("is not valid JSON") == 1
        assert srv.module_status("life")["pid"] == pid
        assert response(hello(srv.port, "_get_modules")) == ["life", "marker"]
        reply = hello(srv.port, "_reload_")
        assert reply["error"] is True and reply["response"].startswith("ConfigError: ")
        srv.write_config({**config, "life2": LIFE})
        wait_for(lambda: "life2" in response(hello(srv.port, "_get_modules")), what="life2")
        srv.wait_state("life2", "ready")


def test_a_config_briefly_missing_changes_nothing(marker_dir):
    config = with_marker({"life": LIFE})
    with start(marker_dir, config) as srv:
        pid = srv.module_status("life")["pid"]
        srv.config_path.unlink()
        wait_for(lambda: "is missing" in srv.log(), what="the missing config to be noticed")
        prove_a_poll_happened(srv)
        srv.write_config(config)
        prove_a_poll_happened(srv)
        assert srv.log().count("is missing") == 1
        assert srv.module_status("life")["pid"] == pid


def test_reload_forces_a_config_reread(tmp_path):
    with start(tmp_path, {"life": LIFE}, "--poll-interval", "3600") as srv:
        srv.write_config({"life": LIFE, "more": LIFE})
        assert response(hello(srv.port, "_reload_")) == "Reloaded config"
        assert response(hello(srv.port, "_get_modules")) == ["life", "more"]


# Stops -----------------------------------------------------------------------------------


def test_grandchildren_die_with_their_worker(tmp_path, needs_children_ended):
    with start(tmp_path, {"life": LIFE}) as srv:
        child = response(call(srv.port, "life", "spawn_child"))
        kill_hard(srv.module_status("life")["pid"])
        wait_for(lambda: not pid_alive(child), what="the worker's child to die with it")
        srv.wait_state("life", "ready")
        child = response(call(srv.port, "life", "spawn_child"))
    wait_for(lambda: not pid_alive(child), what="the child to die when the server stopped")


def test_nothing_survives_the_server_being_killed(tmp_path, needs_children_ended):
    srv = start(tmp_path, {"life": LIFE, "busy": LIFE})
    child = response(call(srv.port, "life", "spawn_child"))
    workers = [srv.module_status(name)["pid"] for name in ("life", "busy")]
    stuck = open_call(srv.port, "busy", "hang")
    srv.wait_state("busy", "busy")
    srv.stop(HARD_KILL)
    stuck.close()
    wait_for(
        lambda: not any(pid_alive(p) for p in [*workers, child]),
        timeout=2,
        what="every worker and child to exit",
    )


def test_status_shows_the_call_in_progress_and_for_how_long(tmp_path):
    with start(tmp_path, {"life": LIFE}) as srv:
        conn = open_call(srv.port, "life", "sleep", 1)
        status = wait_for(
            lambda: (c := srv.module_status("life")["current_call"]) and c["seconds"] > 0.2 and c,
            what="the call to show",
        )
        assert status["function"] == "sleep" and status["client"] == "127.0.0.1"
        assert response(conn.reply(True)) == 1
        after = srv.module_status("life")
        assert after["current_call"] is None and after["calls_served"] == 1
        assert after["uptime"] > 0 and after["restarts"] == 0


# Platform layers ---------------------------------------------------------------------


def test_workers_run_on_the_platform_layer_the_server_chose(tmp_path, platform_mode):
    """Portable mode (MODSERVER_PLATFORM=portable) reaches the workers too."""
    with start(tmp_path, {"life": LIFE}) as srv:
        pid = srv.module_status("life")["pid"]
        threads = response(call(srv.port, "life", "threads"))
        if platform_mode == "portable" or ON_WINDOWS:
            assert "channel" in threads and "hangup" not in threads  # a reader thread
        else:
            assert "hangup" in threads and "channel" not in threads  # poll()
        if not ON_WINDOWS:
            assert (os.getpgid(pid) == pid) is (platform_mode == "native")
        portable_noted = "MODSERVER_PLATFORM=portable" in srv.log()
        assert portable_noted is (platform_mode == "portable")
