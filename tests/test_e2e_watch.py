"""Watches against a real server: shared polls, bad input, vanishing watchers, a killed worker."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from modserver.client import Client, ServerError
from tests.helpers import HARD_KILL, Connection, ServerProcess, call, decode, response, wait_for

COUNTING = {"module": "counting", "entry": "Counting", "min_period": 0.05}


@pytest.fixture
def srv(tmp_path):
    private = {**COUNTING, "allow": ["192.0.2.1"]}  # nobody here
    with ServerProcess(tmp_path, {"counting": COUNTING, "private": private}).start() as server:
        yield server


def start_watch(port, request, plain=True):
    conn = Connection(port)
    conn.send({"name": "_watch"}, plain)
    assert decode(conn.read_line(), plain)["response"] == "ack"
    conn.send(request, plain)
    return conn


def values(conn, n, plain=True):
    return [decode(conn.read_line(), plain) for _ in range(n)]


def test_two_watchers_share_one_poll(srv):
    request = {"module": "counting", "function": "mark", "every": 0.1}
    with start_watch(srv.port, request) as a, start_watch(srv.port, request, plain=False) as b:
        got_a = [m["value"] for m in values(a, 10)]
        got_b = [m["value"] for m in values(b, 10, plain=False)]
        (reading,) = srv.module_status("counting")["readings"]
        assert reading["watchers"] == 2 and reading["period"] == 0.1
    # mark() counts its calls: with one poll for both watchers, each sees every
    # count in turn (no gaps), and both see the same ones.
    assert got_a == list(range(got_a[0], got_a[0] + 10))
    assert got_b == list(range(got_b[0], got_b[0] + 10))
    assert set(got_a) & set(got_b)


def test_a_value_line_is_time_and_value(srv):
    with start_watch(
        srv.port, {"module": "counting", "function": "echo", "args": [2.5], "every": 0.2}
    ) as conn:
        (line,) = values(conn, 1)
        assert set(line) == {"time", "value"} and line["value"] == 2.5
        assert isinstance(line["time"], float)
        conn.send({"stop": True}, plain=True)
        assert conn.is_closed()


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        ({"module": "counting", "function": "mark", "every": 0}, 'BadRequest: "every" must be'),
        ({"module": "counting", "function": "mark", "every": -1}, 'BadRequest: "every" must'),
        ({"module": "counting", "function": "mark", "every": 1e12}, 'BadRequest: "every"'),
        ({"module": "counting", "function": "mark"}, 'BadRequest: "every" must be a number'),
        ({"module": "nosuch", "function": "mark", "every": 1}, "BadRequest: nosuch does not"),
        (
            {"module": "counting", "function": "nope", "every": 1},
            "BadRequest: counting has no function",
        ),
        ({"module": "private", "function": "mark", "every": 1}, "Forbidden: 127.0.0.1 may not"),
    ],
)
def test_bad_input_gets_one_clear_error(srv, request_, reason):
    with start_watch(srv.port, request_) as conn:
        reply = decode(conn.read_line(), True)
        assert reply["error"] is True
        assert reply["response"].startswith(reason), reply
        assert reply["traceback"]
        assert conn.is_closed()


def test_nan_period_is_refused(srv):
    with start_watch(srv.port, {"module": "counting", "function": "mark", "every": None}) as c:
        assert decode(c.read_line(), True)["response"].startswith('BadRequest: "every"')
    conn = Connection(srv.port)
    conn.send({"name": "_watch"}, plain=True)
    conn.read_line()
    conn.send_raw(b'{"module": "counting", "function": "mark", "every": NaN}\n')
    assert decode(conn.read_line(), True)["response"].startswith('BadRequest: "every"')
    conn.close()


def test_a_watcher_that_vanishes_ends_its_reading(srv):
    conn = start_watch(srv.port, {"module": "counting", "function": "mark", "every": 0.05})
    values(conn, 3)
    conn.close()
    wait_for(lambda: srv.module_status("counting")["readings"] == [], what="the reading to end")
    first = response(call(srv.port, "counting", "count"))
    # Polls have stopped: the count moves no more (beyond one poll under way).
    wait_for(lambda: response(call(srv.port, "counting", "count")) <= first + 1)


def test_worker_killed_while_watched_told_once_then_values_again(srv):
    # A slow reading: a poll is nearly always under way when the worker is killed.
    request = {"module": "counting", "function": "sleep", "args": [0.3], "every": 0.05}
    with start_watch(srv.port, request) as w:
        values(w, 1)
        os.kill(srv.module_status("counting")["pid"], HARD_KILL)
        seen = []
        for _ in range(50):  # bounded: a few lines at most are expected
            seen.append(decode(w.read_line(), True))
            if "value" in seen[-1] and any("error" in s for s in seen):
                break
        errors = [s["error"] for s in seen if "error" in s]
        assert len(errors) == 1, seen
        assert errors[0].split(":")[0] in ("WorkerDied", "Unavailable"), errors
        assert [m["value"] for m in values(w, 2)] == [0.3, 0.3]  # values again


# The Python client and the command line ----------------------------------------------


def test_client_watch_is_a_closable_iterator(srv):
    client = Client("127.0.0.1", srv.port)
    got = []
    with client.watch("counting", "echo", 4.5, every=0.1) as watch:
        for t, value in watch:
            got.append((t, value))
            if len(got) == 3:
                break
    assert [v for _, v in got] == [4.5, 4.5, 4.5]
    assert got[0][0] < got[1][0] < got[2][0]
    wait_for(lambda: srv.module_status("counting")["readings"] == [], what="the watch to end")


def test_client_watch_raises_one_clear_error_for_a_mistake(srv):
    client = Client("127.0.0.1", srv.port)
    with pytest.raises(ServerError, match='BadRequest: "every" must be a positive'):
        next(iter(client.watch("counting", "mark", every=0)))
    with pytest.raises(ServerError, match="BadRequest: counting has no function"):
        next(iter(client.watch("counting", "nope", every=1)))


def test_cli_watch_prints_timestamped_values_and_csv(srv):
    base = [sys.executable, "-m", "modserver.client", "--port", str(srv.port), "watch"]
    plain = subprocess.run(
        [*base, "counting", "echo", "2.5", "--every", "0.1", "--count", "3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert len(lines) == 3
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} 2\.5", line) for line in lines)
    csv = subprocess.run(
        [*base, "counting", "echo", "7", "--every", "0.1", "--count", "2", "--csv"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert csv.returncode == 0, csv.stderr
    rows = csv.stdout.splitlines()
    assert rows[0] == "time,value,error"
    assert [row.split(",")[1:] for row in rows[1:]] == [["7", ""], ["7", ""]]


# Values a module publishes itself ----------------------------------------------------


def test_a_module_publishes_from_its_own_thread(tmp_path):
    config = {"pub": {"module": "publisher", "entry": "Publisher"}}
    with ServerProcess(tmp_path, config).start() as srv:
        with start_watch(srv.port, {"module": "pub", "published": "count"}) as w:
            got = [m["value"] for m in values(w, 5)]
            assert got == sorted(got) and len(set(got)) == 5  # each one, in order
            (reading,) = srv.module_status("pub")["readings"]
            assert reading["reading"] == "pub.@count()" and reading["polls"] == 0
        with start_watch(srv.port, {"module": "pub", "published": "note"}) as w:
            wait_for(lambda: srv.module_status("pub")["readings"], what="the watch")
            assert response(call(srv.port, "pub", "publish_now", "note", [1, 2])) is True
            assert values(w, 1)[0]["value"] == [1, 2]
        assert "cannot be published as JSON" in response(call(srv.port, "pub", "publish_bad"))


# Readings named in the config: /metrics and the status page ---------------------------


def test_config_readings_are_watched_from_start_and_exported(tmp_path):
    config = {
        "counting": {
            **COUNTING,
            "readings": {
                "marks": {"function": "mark", "every": 0.1},
                "power": {"function": "echo", "args": [2.5], "every": 0.2},
                "label": {"function": "echo", "args": ["text"], "every": 0.2},
            },
        }
    }
    args = ("--http", "tcp:0:interface=127.0.0.1")
    with ServerProcess(tmp_path, config, args).start() as srv:
        port = int(
            wait_for(
                lambda: re.search(r"status page on http://127\.0\.0\.1:(\d+)/", srv.log()),
                what="the status page",
            ).group(1)
        )

        def get(path):
            url = f"http://127.0.0.1:{port}{path}"
            with urllib.request.urlopen(url, timeout=10) as reply:
                return reply.read().decode()

        def samples():
            families = text_string_to_metric_families(get("/metrics"))
            return {
                (s.name, s.labels.get("reading")): s.value
                for family in families
                for s in family.samples
                if s.name.startswith("modserver_reading")
            }

        found = wait_for(
            lambda: (lambda s: s if s.get(("modserver_reading", "marks"), 0) >= 3 else None)(
                samples()
            ),
            what="the marks reading to be exported",
        )
        assert found[("modserver_reading", "power")] == 2.5
        assert ("modserver_reading", "label") not in found  # not a number
        now = time.time()
        for name in ("marks", "power", "label"):
            assert now - 30 < found[("modserver_reading_last_good_time_seconds", name)] <= now
        page = get("/")
        assert "<h2>Readings</h2>" in page and ">power</td>" in page
        (marks,) = [r for r in srv.module_status("counting")["readings"] if r["name"] == "marks"]
        assert marks["watchers"] == 0 and marks["age"] < 30
        # A client's _latest reads the server's own reading, without a call.
        with Connection(srv.port) as conn:
            conn.send({"name": "_latest"}, plain=True)
            conn.read_line()
            conn.send({"function": "counting.echo", "args": [2.5]}, plain=True)
            assert decode(conn.read_line(), True)["response"]["value"] == 2.5


# Limits, against a real server --------------------------------------------------------


def test_a_stuck_watcher_is_disconnected_with_a_reason_and_others_go_on(tmp_path):
    args = ("--watch-stuck-limit", "2", "--max-watches-per-client", "3")
    with ServerProcess(tmp_path, {"counting": COUNTING}, args).start() as srv:
        big = {"module": "counting", "function": "stamp_blob", "args": [65536], "every": 0.05}
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.settimeout(30)
        stuck.connect(("127.0.0.1", srv.port))
        stuck.sendall(b'{"name": "_watch"}\n' + json.dumps(big).encode() + b"\n")
        with start_watch(srv.port, {"module": "counting", "function": "mark", "every": 0.1}) as ok:
            # The stuck one is ended within a few seconds; the other watcher goes on.
            wait_for(
                lambda: "read nothing for 2 s" in srv.log(),
                timeout=30,
                what="the stuck watcher to be ended",
            )
            values(ok, 3)
            assert len(srv.module_status("counting")["readings"]) == 1
        # What the stuck client finds when it reads at last: values, then the reason, then EOF.
        data = b""
        while True:
            chunk = stuck.recv(1 << 20)
            if not chunk:
                break
            data += chunk
        stuck.close()
        last = json.loads(data.rstrip(b"\n").rsplit(b"\n", 1)[-1])
        assert last["error"] is True
        assert last["response"].startswith("Busy: this watcher read nothing for 2 s")


def test_watches_per_client_are_limited(tmp_path):
    args = ("--max-watches-per-client", "2")
    with ServerProcess(tmp_path, {"counting": COUNTING}, args).start() as srv:
        request = {"module": "counting", "function": "echo", "args": [1], "every": 1}
        with start_watch(srv.port, request) as a, start_watch(srv.port, request) as b:
            values(a, 1), values(b, 1)
            with start_watch(srv.port, request) as c:
                reply = decode(c.read_line(), True)
                assert reply["error"] is True
                assert reply["response"].startswith("Busy: 127.0.0.1 holds its limit of 2")


def test_a_plain_client_that_half_closes_keeps_watching(srv):
    with Connection(srv.port) as conn:
        request = {"module": "counting", "function": "echo", "args": [3], "every": 0.1}
        conn.send_raw(b'{"name": "_watch"}\n' + json.dumps(request).encode() + b"\n")
        conn.sock.shutdown(socket.SHUT_WR)  # as nc -N does
        assert decode(conn.read_line(), True)["response"] == "ack"
        assert [m["value"] for m in values(conn, 3)] == [3, 3, 3]
