"""Never wedged, with real processes: each of the ways a server was wedged, shown gone.

1. (crash loops and killed workers: test_e2e_restarts.py, in both platform modes)
2. a server at its file limit still respawns workers;
3. connections are limited in total and per address, with a clear
   refusal, and listeners have a long backlog;
4. floods of large requests stay within a memory budget;
5. one client cannot lock others out of an instrument, and the requests
   of a client that is gone are withdrawn (plain JSON ones too);
6. malformed messages get one BadRequest, never an unhandled error;
7. SIGHUP re-reads the config and reopens the logs instead of killing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.parse

import pytest

from tests.helpers import (
    ON_WINDOWS,
    Connection,
    ServerProcess,
    call,
    encode,
    hello,
    kill_hard,
    modserver_command,
    needs_second_loopback,
    response,
    timed,
    wait_for,
)

LIFE = ["lifecycle", "Life", None]
LOOP = ["crash_soon", "CrashSoon", None]
COUNTING = ["counting", "Counting", None]
OTHER = "127.0.0.2"

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="uses /proc, resource limits or SIGHUP"
)


def start(tmp_path, config, *args) -> ServerProcess:
    return ServerProcess(tmp_path, config, args).start()


# 2. At the file limit ----------------------------------------------------------------------


def limited_command(limit: int, srv: ServerProcess) -> list[str]:
    """The server's command, run with an open-file limit of ``limit`` (soft and hard)."""
    setup = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit})); "
        "os.execvp(sys.argv[1], sys.argv[1:])"
    )
    server = [
        *modserver_command(),
        "--config",
        str(srv.config_path),
        "--listen",
        "tcp:0:interface=127.0.0.1",
    ]
    return [sys.executable, "-c", setup, *server]


@linux_only
def test_a_server_at_its_file_limit_refuses_clients_and_still_respawns_workers(tmp_path):
    srv = ServerProcess(tmp_path, {"life": LIFE, "basic": ["basic", "Basic", None]})
    with srv.start(command=limited_command(128, srv)):
        assert "Limits: 48 connections" in srv.log()  # 128, less 64 + 8 per module
        pid = srv.module_status("life")["pid"]
        idle = [Connection(srv.port) for _ in range(150)]  # far more than it can hold
        busy = []
        for conn in idle[48:]:  # past the limit: one Busy line each, then closed
            conn.sock.settimeout(5)
            try:
                busy.append(conn.read_line())
            except (OSError, ConnectionError):
                pass  # past the refusals under way too: closed without a word
        assert busy and all(line.startswith(b"%7B%22response%22%3A+%22Busy") for line in busy)
        kill_hard(pid)
        wait_for(
            lambda: srv.log().count("[life#info] ready (pid") >= 2,
            what="the worker respawned while the server was full",
        )
        for conn in idle:
            conn.close()
        wait_for(lambda: hello(srv.port, "_ping")["error"] is False, what="room again")
        assert srv.module_status("life")["pid"] != pid
        assert response(call(srv.port, "life", "version")) == 1
        assert "Too many open files" not in srv.log()


# 3. Connection limits and the backlog -------------------------------------------------------


@needs_second_loopback
def test_connections_past_the_per_address_limit_get_one_busy_line(tmp_path):
    args = ("--max-connections-per-address", "20", "--allow", "loopback")
    with start(tmp_path, {"basic": ["basic", "Basic", None]}, *args) as srv:
        held = [Connection(srv.port) for _ in range(20)]
        try:
            with Connection(srv.port) as refused:
                line = refused.read_line()
                assert refused.is_closed()
            assert json.loads(urllib.parse.unquote_plus(line.decode())) == {
                "response": "Busy: 127.0.0.1 has 20 connections open, the limit for one "
                "address (--max-connections-per-address); close some first",
                "error": True,
                "traceback": "Busy: 127.0.0.1 has 20 connections open, the limit for one "
                "address (--max-connections-per-address); close some first\n",
            }
            assert response(hello(srv.port, "_ping", source=OTHER))[0] == OTHER
        finally:
            for conn in held:
                conn.close()
        wait_for(lambda: hello(srv.port, "_ping")["error"] is False, what="room again")


@linux_only
def test_listeners_have_a_long_backlog(tmp_path):
    with start(tmp_path, {}) as srv:
        out = subprocess.run(
            ["ss", "-ltnH", f"sport = :{srv.port}"], capture_output=True, text=True, timeout=10
        )
        if out.returncode != 0:
            pytest.skip("ss (iproute2) is not available")
        assert out.stdout.split()[2] == "1024"  # Send-Q of a listener: its backlog


# 4. Memory --------------------------------------------------------------------------------------


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        match = re.search(r"VmHWM:\s+(\d+) kB", status.read())
    return int(match.group(1)) / 1024


@linux_only
def test_a_burst_of_large_requests_stays_within_the_byte_budget(tmp_path):
    args = ("--max-held-requests", "64M")
    with start(tmp_path, {"counting": COUNTING}, *args) as srv:
        before = peak_rss_mb(srv.process.pid)
        payload = "x" * (16 * 1024 * 1024)
        results = []

        def send():
            results.append(call(srv.port, "counting", "echo", payload, plain=True)["response"])

        threads = [threading.Thread(target=send) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert len(results) == 12
        refused = [r for r in results if isinstance(r, str) and r.startswith("Busy: the server")]
        served = [r for r in results if r == payload]
        assert refused and served and len(refused) + len(served) == 12
        growth = peak_rss_mb(srv.process.pid) - before
        assert growth < 400, f"the server grew by {growth:.0f} MB"


# 5. Fairness, and clients that left ------------------------------------------------------


@needs_second_loopback
def test_one_client_flooding_a_module_does_not_lock_out_another(tmp_path):
    config = {"counting": {"module": "counting", "entry": "Counting", "queue_limit": 8}}
    with start(tmp_path, config, "--allow", "loopback") as srv:
        running = Connection(srv.port)
        running.send({"name": "counting"}, True)
        response(running.reply(True))
        running.send({"function": "sleep", "args": [2.0]}, True)
        srv.wait_state("counting", "busy")
        flood, answers = [], []
        for _ in range(10):
            conn = Connection(srv.port)
            conn.send({"name": "counting"}, True)
            response(conn.reply(True))
            conn.send({"function": "mark"}, True)
            flood.append(conn)
        wait_for(lambda: srv.module_status("counting")["queue"] == 6, what="six waiting")
        reply, seconds = timed(call, srv.port, "counting", "count", plain=True, source=OTHER)
        assert reply["error"] is False  # the other client got in
        for conn in flood:
            answers.append(conn.reply(True)["response"])
            conn.close()
        running.close()
        busy = [a for a in answers if isinstance(a, str) and a.startswith("Busy: 127.0.0.1")]
        assert len(busy) == 4  # 6 of the 8 places for one client


def test_a_plain_client_that_left_has_its_waiting_request_withdrawn(tmp_path):
    with start(tmp_path, {"counting": COUNTING}) as srv:
        running = Connection(srv.port)
        running.send({"name": "counting"}, True)
        response(running.reply(True))
        running.send({"function": "sleep", "args": [2.0]}, True)
        srv.wait_state("counting", "busy")
        gone = Connection(srv.port)
        gone.send({"name": "counting"}, True)
        response(gone.reply(True))
        gone.send({"function": "mark"}, True)
        wait_for(lambda: srv.module_status("counting")["queue"] == 1, what="mark waiting")
        gone.sock.close()  # the whole program is gone, not just its sending side
        wait_for(lambda: "mark() dropped (the client left)" in srv.log(), what="the withdrawal")
        assert srv.module_status("counting")["queue"] == 0
        assert response(running.reply(True)) == 2.0
        assert response(call(srv.port, "counting", "count")) == 0  # mark never ran


def test_a_plain_client_that_only_closed_its_sending_side_gets_its_reply(tmp_path):
    with start(tmp_path, {"counting": COUNTING}) as srv:
        running = Connection(srv.port)
        running.send({"name": "counting"}, True)
        response(running.reply(True))
        running.send({"function": "sleep", "args": [1.5]}, True)
        srv.wait_state("counting", "busy")
        with socket.create_connection(("127.0.0.1", srv.port), timeout=15) as sock:
            sock.sendall(encode({"name": "counting"}, True) + encode({"function": "mark"}, True))
            sock.shutdown(socket.SHUT_WR)  # as printf ... | nc -N does
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        ack, mark = data.split(b"\n")[:2]
        assert json.loads(ack)["response"] == "ack"
        assert json.loads(mark) == {"response": 1, "error": False, "traceback": ""}
        assert response(running.reply(True)) == 1.5


# 6. Malformed messages -------------------------------------------------------------------------


def test_deep_nesting_huge_numbers_and_nan_get_one_bad_request(tmp_path):
    with start(tmp_path, {"counting": COUNTING}) as srv:
        deep = "[" * 10000 + "]" * 10000
        for line in (
            '{"name": ' + deep + "}",
            '{"name": ' + "9" * 100000 + "}",
        ):
            with Connection(srv.port) as conn:
                conn.send_raw(line.encode() + b"\n")
                reply = json.loads(conn.read_line())
                assert reply["response"].startswith("BadRequest: ")
                assert conn.is_closed()
        for request in (
            '{"function": "echo", "args": [' + deep + "]}",
            '{"function": "echo", "args": [1], "timeout": NaN}',
            '{"function": "echo", "args": [1], "timeout": Infinity}',
        ):
            with Connection(srv.port) as conn:
                conn.send({"name": "counting"}, True)
                response(conn.reply(True))
                conn.send_raw(request.encode() + b"\n")
                reply = json.loads(conn.read_line())
                assert reply["response"].startswith("BadRequest: "), reply["response"]
        assert response(call(srv.port, "counting", "count")) == 0
        assert "Unhandled Error" not in srv.log() and "Traceback" not in srv.log()


# 7. SIGHUP ---------------------------------------------------------------------------------------


@pytest.mark.skipif(ON_WINDOWS, reason="Windows has no SIGHUP")
def test_sighup_rereads_the_config_and_reopens_the_json_log(tmp_path):
    json_log = tmp_path / "server.json"
    args = ("--poll-interval", "3600", "--json-log", str(json_log))
    with start(tmp_path, {"basic": ["basic", "Basic", None]}, *args) as srv:
        srv.write_config({"basic": ["basic", "Basic", None], "more": COUNTING})
        json_log.rename(tmp_path / "server.json.old")  # as logrotate does
        srv.process.send_signal(signal.SIGHUP)
        wait_for(
            lambda: response(hello(srv.port, "_get_modules")) == ["basic", "more"],
            what="the config re-read",
        )
        assert srv.process.poll() is None  # still serving
        wait_for(lambda: json_log.exists(), what="a new JSON log")
        wait_for(lambda: "SIGHUP" in json_log.read_text(), what="the new log written")
        assert "SIGHUP: reopened the log files; re-reading the config" in srv.log()
    assert srv.process.returncode in (0, -signal.SIGTERM)
    assert os.path.exists(tmp_path / "server.json.old")
