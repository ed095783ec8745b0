"""Sharing an instrument, against a real server: fair turns and leases.

Clients come from 127.0.0.2 and 127.0.0.3 (on Linux all of 127.0.0.0/8 is
this computer), so the server sees three different clients; 127.0.0.1 is
the administrator.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.request

import pytest

from modserver.client import Client, ServerError
from tests.helpers import (
    SECOND_LOOPBACK,
    THIRD_LOOPBACK,
    Connection,
    ServerProcess,
    call,
    hello,
    needs_two_more_loopbacks,
    response,
    timed,
    wait_for,
)

pytestmark = needs_two_more_loopbacks

A, B = SECOND_LOOPBACK, THIRD_LOOPBACK
BASIC = {"module": "basic", "entry": "Basic"}
BUSY = re.compile(r"^Busy: basic is leased by 127\.0\.0\.2 until \d\d:\d\d:\d\d \((\d+) s left\)$")


def in_thread(fn, *args, **kwargs) -> tuple[threading.Thread, list]:
    results: list = []
    thread = threading.Thread(target=lambda: results.append(fn(*args, **kwargs)), daemon=True)
    thread.start()
    return thread, results


# Turns ----------------------------------------------------------------------------------------


def test_a_flood_from_one_address_leaves_another_served_within_one_call(tmp_path):
    with ServerProcess(tmp_path, {"basic": BASIC}).start() as srv:
        flood = [in_thread(call, srv.port, "basic", "sleep", 0.5, source=A) for _ in range(16)]
        wait_for(lambda: srv.module_status("basic")["queue"] >= 12, what="A's flood to queue")
        waiting = srv.module_status("basic")["waiting_by_client"]
        assert waiting[A] >= 12
        reply, seconds = timed(call, srv.port, "basic", "add", 1, 2, source=B)
        assert response(reply) == 3
        # In arrival order B would wait for the 12+ calls ahead of it: 6 s or more.
        assert seconds < 3.0, f"B waited {seconds:.2f} s behind A's flood"
        # On the server, from arrival to reply: the rest of A's call running, then B's.
        served = wait_for(
            lambda: re.search(r"127\.0\.0\.3 add\(\) ok in ([\d.]+) ms", srv.log()),
            what="B's access line",
        )
        assert float(served.group(1)) < 500 + 300, "B waited longer than one of A's calls"
        for thread, results in flood:
            thread.join(30)
            assert results and results[0]["error"] is False


def keep_alive_loop(port: int, stop: threading.Event, replies: list) -> None:
    with Connection(port, source=A) as conn:
        conn.send({"name": "basic"})
        assert conn.reply()["response"] == "ack"
        while not stop.is_set():
            conn.send({"function": "sleep", "args": [0.05], "keep_alive": True})
            replies.append(response(conn.reply()))


def test_a_keep_alive_loop_gives_way_after_its_hold(tmp_path):
    config = {"basic": {**BASIC, "keep_alive_hold": 1.0}}
    with ServerProcess(tmp_path, config).start() as srv:
        stop, replies = threading.Event(), []
        loop = threading.Thread(target=keep_alive_loop, args=(srv.port, stop, replies))
        loop.start()
        try:
            wait_for(lambda: len(replies) >= 3, what="A's keep-alive loop to run")
            reply, seconds = timed(call, srv.port, "basic", "add", 1, 2, source=B)
            assert response(reply) == 3
            assert 0.9 <= seconds < 4.0, f"B waited {seconds:.2f} s for A's session"
            served = len(replies)
            wait_for(lambda: len(replies) > served, what="A's session to go on")
        finally:
            stop.set()
            loop.join(20)
        assert "127.0.0.2's keep-alive session gives way to others after 1 s" in srv.log()


# Leases -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    config = {"basic": {**BASIC, "max_lease": 120}}
    args = ("--admin-allow", "127.0.0.1")
    with ServerProcess(tmp_path_factory.mktemp("leases"), config, args).start() as server:
        yield server


def lease(srv, operation, *args, source=None, **fields):
    return call(srv.port, "_lease", operation, *args, source=source, **fields)


def add_from(srv, source):
    return call(srv.port, "basic", "add", 1, 2, source=source)


def test_a_lease_refuses_another_address_with_its_holder_and_time_left(srv):
    taken = response(lease(srv, "take", "basic", 30, source=A))
    assert taken["holder"] == A and taken["seconds_left"] == 30
    refused = add_from(srv, B)
    assert refused["error"] is True
    left = int(BUSY.match(refused["response"]).group(1))
    assert 25 <= left <= 30
    assert response(add_from(srv, A)) == 3  # the holder's calls run
    status = srv.module_status("basic")["lease"]
    assert status["holder"] == A and 0 < status["seconds_left"] <= 30
    not_yours = lease(srv, "release", "basic", source=B)
    assert not_yours["response"].startswith("Forbidden: basic is leased by 127.0.0.2, not by")
    assert response(lease(srv, "release", "basic", source=A)) == "Released the lease on basic"
    assert response(add_from(srv, B)) == 3
    log = srv.log()
    assert "lease taken by 127.0.0.2 for 30 s" in log
    assert "lease of 127.0.0.2 released by 127.0.0.2" in log


def test_a_lease_expires(srv):
    response(lease(srv, "take", "basic", 1, source=A))
    assert BUSY.match(add_from(srv, B)["response"])
    wait_for(lambda: add_from(srv, B)["error"] is False, what="the lease to expire")
    wait_for(lambda: "lease of 127.0.0.2 expired (lost)" in srv.log(), what="the log line")
    late = lease(srv, "renew", "basic", 10, source=A)
    assert re.match(
        r"BadRequest: 127\.0\.0\.2 holds no lease on basic to renew \(it expired at "
        r"\d\d:\d\d:\d\d\); take a new one",
        late["response"],
    )


def test_an_administrator_breaks_a_lease(srv):
    response(lease(srv, "take", "basic", 60, source=A))
    refused = lease(srv, "break", "basic", source=B)
    assert refused["response"].startswith("Forbidden: 127.0.0.3 may not break the lease on basic")
    assert response(lease(srv, "break", "basic")) == "Broke 127.0.0.2's lease on basic"
    assert response(add_from(srv, B)) == 3
    assert "lease of 127.0.0.2 broken by 127.0.0.1" in srv.log()


def test_a_waiting_taker_gets_the_lease_when_it_is_released(srv):
    response(lease(srv, "take", "basic", 60, source=A))
    thread, results = in_thread(lease, srv, "take", "basic", 30, 15, source=B)
    wait_for(lambda: srv.module_status("basic")["lease_waiting"] == [B], what="B to wait for it")
    response(lease(srv, "release", "basic", source=A))
    thread.join(15)
    assert response(results[0])["holder"] == B
    assert add_from(srv, A)["response"].startswith("Busy: basic is leased by 127.0.0.3")
    response(lease(srv, "release", "basic", source=B))


def test_a_call_that_asks_waits_for_the_lease_within_its_timeout(srv):
    response(lease(srv, "take", "basic", 60, source=A))
    thread, results = in_thread(
        call, srv.port, "basic", "add", 1, 2, source=B, lease_wait=True, timeout=15
    )
    wait_for(lambda: srv.module_status("basic")["queue"] == 1, what="B's call to wait")
    response(lease(srv, "release", "basic", source=A))
    thread.join(15)
    assert response(results[0]) == 3


def test_a_lease_survives_a_reload_of_its_module(srv):
    response(lease(srv, "take", "basic", 60, source=A))
    pid = srv.module_status("basic")["pid"]
    assert response(hello(srv.port, "_reload_basic")) == 'Reloaded "basic"'
    assert srv.module_status("basic")["pid"] != pid
    assert BUSY.match(add_from(srv, B)["response"])
    response(lease(srv, "release", "basic", source=A))


@pytest.mark.parametrize(
    "args, message",
    [
        (["basic", 0], "BadRequest: the lease needs a positive number of seconds, not 0"),
        (["basic", -3], "BadRequest: the lease needs a positive number of seconds, not -3"),
        (["basic", 1e9], "BadRequest: 1e+09 s is longer than basic grants"),
        (["nosuch", 10], "BadRequest: nosuch does not exist (case matters)"),
    ],
)
def test_bad_lease_requests_get_one_clear_error(srv, args, message):
    reply = lease(srv, "take", *args, source=B)
    assert reply["error"] is True and reply["response"].startswith(message)


def test_a_nan_duration_is_refused(srv):
    with Connection(srv.port, source=B) as conn:
        conn.send({"name": "_lease"})
        assert conn.reply()["response"] == "ack"
        conn.send_raw(b'{"function": "take", "args": ["basic", NaN]}\n')
        answer = conn.reply(plain=True)
    assert answer["response"] == (
        "BadRequest: the lease needs a positive number of seconds, not nan"
    )


def test_the_python_context_manager_releases_the_lease_on_an_exception(srv):
    client = Client("127.0.0.1", srv.port, timeout=10)
    with pytest.raises(RuntimeError, match="scan failed"):
        with client.lease("basic", seconds=30, wait=5) as held:
            assert held.info["holder"] == "127.0.0.1"
            assert add_from(srv, B)["response"].startswith("Busy: basic is leased by 127.0.0.1")
            raise RuntimeError("scan failed")
    assert client.lease_request("show", "basic") is None
    assert response(add_from(srv, B)) == 3


def test_the_python_context_manager_renews_in_the_background(srv):
    client = Client("127.0.0.1", srv.port, timeout=10)
    with client.lease("basic", seconds=1.5) as held:
        wait_for(lambda: "lease renewed by 127.0.0.1 for 1.5 s" in srv.log(), what="a renewal")
        assert held.lost is None
        assert client.lease_request("show", "basic")["holder"] == "127.0.0.1"
    with pytest.raises(ServerError, match="BadRequest: 127.0.0.1 holds no lease on basic"):
        client.lease_request("release", "basic")


def test_leases_and_waiting_lines_show_in_status_json_and_metrics(tmp_path):
    args = ("--http", "tcp:0:interface=127.0.0.1")
    with ServerProcess(tmp_path, {"basic": BASIC}, args).start() as srv:
        url = wait_for(
            lambda: re.search(r"status page on (http://127\.0\.0\.1:\d+/)", srv.log()),
            what="the status page",
        ).group(1)
        response(lease(srv, "take", "basic", 60, source=A))
        thread, _ = in_thread(
            call, srv.port, "basic", "add", 1, 2, source=B, lease_wait=True, timeout=15
        )
        wait_for(lambda: srv.module_status("basic")["queue"] == 1, what="B's call to wait")
        with urllib.request.urlopen(url + "status.json", timeout=10) as page:
            module = json.load(page)["modules"]["basic"]
        assert module["lease"]["holder"] == A and module["waiting_by_client"] == {B: 1}
        with urllib.request.urlopen(url + "metrics", timeout=10) as page:
            metrics = page.read().decode()
        assert 'modserver_lease_held{holder="127.0.0.2",module="basic"} 1.0' in metrics
        assert re.search(r'modserver_lease_seconds_left\{module="basic"\} \d', metrics)
        assert 'modserver_queue_waiting{client="127.0.0.3",module="basic"} 1.0' in metrics
        response(lease(srv, "release", "basic", source=A))
        thread.join(15)
