"""One log for the server and every module: text, JSON, floods, rotation, levels."""

from __future__ import annotations

import json
import statistics
import subprocess
import threading
import time
from pathlib import Path

import pytest
from twisted.logger import eventsFromJSONLogFile

from tests.helpers import ServerProcess, call, needs_proc, response, wait_for

# Each test runs on this system's platform layer and on the portable one.
pytestmark = pytest.mark.usefixtures("platform_mode")

CHATTY = {"chatty": ["chatty", "Chatty", None], "basic": ["basic", "Basic", None]}


def json_events(path: Path) -> list[dict]:
    with open(path) as stream:
        return list(eventsFromJSONLogFile(stream))


def rss_kb(pid: int) -> int:
    needs_proc("memory use")
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server(tmp_path_factory, platform_mode):
    directory = tmp_path_factory.mktemp("logging")
    args = ("--json-log", str(directory / "logs" / "modserver.json"))
    with ServerProcess(directory, CHATTY, args).start() as srv:
        yield srv


def test_module_logging_reaches_the_text_log_under_its_name_with_the_traceback(server):
    assert response(call(server.port, "chatty", "report", "t1")) is True
    log = wait_for(lambda: "lookup failed for t1" in server.log() and server.log(), what="the log")
    assert "[chatty#info] chatty.instrument: measured t1" in log
    lines = log.splitlines()
    at = next(i for i, line in enumerate(lines) if "lookup failed for t1" in line)
    assert "[chatty#error] chatty.instrument: lookup failed for t1" in lines[at]
    assert lines[at + 1] == "\tTraceback (most recent call last):"
    assert any(row.startswith("\tKeyError: 'missing-key-t1'") for row in lines[at + 2 : at + 8])


def test_records_below_the_level_are_not_sent(server):
    assert response(call(server.port, "chatty", "report", "t2")) is True
    wait_for(lambda: "measured t2" in server.log(), what="the info record")
    assert "debug detail for t2" not in server.log()


def test_module_logging_reaches_the_json_log_with_its_fields(server):
    assert response(call(server.port, "chatty", "report", "t3")) is True
    path = server.directory / "logs" / "modserver.json"

    def record():
        for event in json_events(path):
            if event.get("message") == "lookup failed for t3":
                return event
        return None

    event = wait_for(record, what="the JSON record")
    assert event["log_namespace"] == "modserver.module.chatty"
    assert event["module"] == "chatty" and event["logger"] == "chatty.instrument"
    assert event["levelname"] == "ERROR" and event["log_level"].name == "error"
    assert "KeyError: 'missing-key-t3'" in event["exc_text"]
    assert event["module_time"] > 0


def test_print_and_fd1_writes_are_logged_not_lost(server):
    assert response(call(server.port, "chatty", "talk", "t4")) is True
    wait_for(lambda: "[chatty#info] output: print says t4" in server.log(), what="the print")
    assert "[chatty#info] output: fd 1 says t4" in server.log()
    wait_for(lambda: "output: no newline at the end" in server.log(), what="the partial line")
    path = server.directory / "logs" / "modserver.json"
    lines = [e.get("line") for e in json_events(path) if e.get("output")]
    assert "print says t4" in lines and "fd 1 says t4" in lines


def test_each_call_gets_an_access_line(server):
    assert response(call(server.port, "basic", "add", 1, 2)) == 3
    reply = call(server.port, "basic", "boom", "access-check")
    assert reply["error"] is True
    log = wait_for(lambda: "boom() ValueError in" in server.log() and server.log(), what="access")
    assert "[basic#info] 127.0.0.1 add() ok in" in log


def test_status_shows_each_modules_recent_log(server):
    assert response(call(server.port, "chatty", "report", "t5")) is True
    wait_for(
        lambda: any("measured t5" in line for line in server.module_status("chatty")["log"]),
        what="the log tail",
    )


def test_an_output_flood_stalls_nothing_grows_nothing_and_is_reported(server):
    pid = server.process.pid
    before = rss_kb(pid)
    peak = [before]
    latencies = []
    flooding = threading.Event()

    def flood():
        flooding.set()
        try:
            assert response(call(server.port, "chatty", "flood", 100)) == 100
        finally:
            flooding.clear()

    thread = threading.Thread(target=flood)
    thread.start()
    wait_for(flooding.is_set, what="the flood to start")
    while flooding.is_set():
        started = time.monotonic()
        assert response(call(server.port, "basic", "add", 2, 2)) == 4
        latencies.append(time.monotonic() - started)
        peak.append(rss_kb(pid))
    thread.join(60)
    assert len(latencies) >= 5
    assert max(latencies) < 0.5 and statistics.median(latencies) < 0.05
    assert max(peak) - before < 50_000  # kB: nothing buffered per line
    wait_for(
        lambda: "lines (" in server.log() and "were not logged" in server.log(),
        what="the flood report",
    )
    assert "output flood: logging at most" in server.log()


def test_a_log_record_flood_is_limited_in_the_worker_and_reported(server):
    assert response(call(server.port, "chatty", "log_flood", 20_000)) == 20_000
    started = time.monotonic()
    assert response(call(server.port, "basic", "add", 1, 1)) == 2
    assert time.monotonic() - started < 0.5
    wait_for(lambda: "records of chatty were not sent" in server.log(), what="the log flood report")
    assert server.log().count("chatty.instrument: record ") < 5_000


# Options ----------------------------------------------------------------------------


def test_json_log_rotates_at_its_size_and_keeps_its_count(tmp_path):
    path = tmp_path / "rotating.json"
    args = ("--json-log", str(path), "--json-log-size", "4K", "--json-log-count", "3")
    with ServerProcess(tmp_path, {"basic": ["basic", "Basic", None]}, args).start() as srv:
        for i in range(150):
            assert response(call(srv.port, "basic", "add", i, 1)) == i + 1
        wait_for(lambda: (tmp_path / "rotating.json.3").exists(), what="three rotations")
    rotated = sorted(tmp_path.glob("rotating.json.*"))
    assert [p.name for p in rotated] == ["rotating.json.1", "rotating.json.2", "rotating.json.3"]
    for old in rotated:
        assert 4096 <= old.stat().st_size < 4096 + 4096
        assert json_events(old)  # whole records
    assert path.stat().st_size < 4096 + 4096


def test_log_level_warn_leaves_out_info(tmp_path):
    with ServerProcess(tmp_path, CHATTY, ("--log-level", "warn")).start() as srv:
        assert response(call(srv.port, "chatty", "report", "w1")) is True
        wait_for(lambda: "lookup failed for w1" in srv.log(), what="the error record")
        log = srv.log()
    assert "measured w1" not in log and "starting worker" not in log
    ours = [line for line in log.splitlines() if "#info]" in line and "[server#" in line]
    assert all("listening on" in line for line in ours)  # where it listens is always said


def test_access_lines_can_be_switched_off(tmp_path):
    with ServerProcess(tmp_path, CHATTY, ("--no-access-log",)).start() as srv:
        assert response(call(srv.port, "chatty", "report", "a1")) is True
        wait_for(lambda: "lookup failed for a1" in srv.log(), what="the record")
        assert " report() ok in " not in srv.log()


def test_it_runs_under_twist_too(tmp_path):
    """``twist`` logs JSON to a non-terminal stdout, and serves the same way."""
    twist = Path(__import__("sys").executable).parent / "twist"
    if not twist.exists():
        pytest.skip("no twist script next to this interpreter")
    srv = ServerProcess(tmp_path, CHATTY)
    log = open(srv.log_path, "wb")
    srv.process = subprocess.Popen(
        [
            str(twist),
            "modserver",
            "--config",
            str(srv.config_path),
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--json-log",
            str(tmp_path / "j.json"),
        ],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    srv._log = log

    def port_from_json_log():
        for line in srv.log_path.read_text().splitlines():
            event = json.loads(line.lstrip("\x1e")) if line.strip() else {}
            if event.get("log_format") == "listening on {host}:{port}{security}":
                return event["port"]
        return None

    try:
        srv.port = wait_for(port_from_json_log, what="twist to listen")
        srv.wait_settled()
        assert response(call(srv.port, "chatty", "report", "tw")) is True
        wait_for(
            lambda: any(
                e.get("message") == "lookup failed for tw" for e in json_events(tmp_path / "j.json")
            ),
            what="the JSON log",
        )
        assert '"log_namespace": "modserver.module.chatty"' in srv.log()
    finally:
        srv.stop()
