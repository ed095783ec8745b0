"""The numbers per module, /metrics and the status page's controls, on a real server.

Controls are checked here with raw HTTP requests (what another site, a
script or a non-administrator could send); the page's own buttons are
clicked in a real browser in test_status_page.py.  On Linux all of
127.0.0.0/8 is this computer: with ``--admin-allow 127.0.0.1``, a socket
bound to 127.0.0.2 is a client that is not an administrator.
"""

from __future__ import annotations

import http.client
import json
import re
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import (
    HARD_KILL_EXIT,
    ServerProcess,
    call,
    kill_hard,
    needs_second_loopback,
    response,
    wait_for,
)

CONFIG = {
    "life": {"module": "lifecycle", "entry": "Life", "timeout": 1.5, "queue_limit": 7},
    "basic": ["basic", "Basic", None],
}
OTHER = "127.0.0.2"
linux_only = pytest.mark.skipif(
    sys.platform != "linux", reason="needs all of 127.0.0.0/8 on loopback (Linux)"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("numbers")
    args = ("--http", "tcp:0:interface=127.0.0.1", "--admin-allow", "127.0.0.1")
    with ServerProcess(directory, CONFIG, args).start() as srv:
        match = wait_for(
            lambda: re.search(r"status page on http://127\.0\.0\.1:(\d+)/", srv.log()),
            what="the status page",
        )
        srv.http_port = int(match.group(1))
        yield srv


def request(srv, method, path, body=b"", headers=None, source=None):
    """One HTTP request to the status page: ``(status, headers, body text)``."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", srv.http_port, timeout=10, source_address=(source, 0) if source else None
    )
    try:
        connection.request(method, path, body=body, headers=headers or {})
        reply = connection.getresponse()
        return reply.status, reply.headers, reply.read().decode()
    finally:
        connection.close()


def page_token(srv) -> str:
    _, _, page = request(srv, "GET", "/")
    return re.search(r'<meta name="modserver-token" content="([^"]+)">', page).group(1)


def from_the_page(srv, token, **changes) -> dict:
    """The headers the page's own buttons send (Chromium's), with ``changes``."""
    headers = {
        "Origin": f"http://127.0.0.1:{srv.http_port}",
        "Content-Type": "application/json",
        "X-Modserver-Token": token,
    }
    headers.update(changes)
    return {k: v for k, v in headers.items() if v is not None}


RESTART_LIFE = json.dumps({"action": "restart", "module": "life"}).encode()


# 1. Numbers in _status --------------------------------------------------------------------


def test_status_counts_calls_errors_and_timeouts_with_latency_percentiles(server):
    before = server.module_status("life")
    assert response(call(server.port, "life", "sleep", 0.2)) == 0.2
    assert call(server.port, "life", "no_such_function")["error"] is True
    timed_out = call(server.port, "life", "hang")  # the module's timeout: 1.5 s
    assert timed_out["response"].startswith("Timeout: life.hang did not answer within 1.5 s")
    server.wait_state("life", "ready")
    life = server.module_status("life")
    assert life["calls"] - before["calls"] == 3
    assert life["errors"] - before["errors"] == 2
    assert life["timeouts"] - before["timeouts"] == 1
    assert life["outcomes"]["timeout"] >= 1 and life["outcomes"]["ok"] >= 1
    assert life["latency"]["p99"] >= 1.5  # the timed-out call
    assert 0 < life["latency"]["p50"] <= 1.5
    assert (life["timeout"], life["queue_limit"]) == (1.5, 7)
    last = life["restart_history"][-1]
    assert last["cause"] == "timeout" and last["detail"] == "hang() ran over 1.5 s"


def test_a_killed_worker_is_in_the_restart_history_with_how_it_ended(server):
    pid = server.module_status("basic")["pid"]
    kill_hard(pid)
    wait_for(lambda: server.module_status("basic")["pid"] not in (None, pid), what="a new worker")
    last = server.module_status("basic")["restart_history"][-1]
    assert last["cause"] == "died" and HARD_KILL_EXIT in last["detail"]


def test_an_invalid_config_on_disk_is_a_visible_warning_until_fixed(server):
    good = server.config_path.read_text()
    try:
        server.config_path.write_text(good.replace("{", "{ oops", 1))
        problem = wait_for(
            lambda: server.status()["server"]["config_error"], what="the config error"
        )
        assert "not valid JSON" in problem and "running modules are unchanged" in problem
        _, _, page = request(server, "GET", "/")
        assert 'class="config-error"' in page and "not valid JSON" in page
        assert metric_value(scrape(server), "modserver_config_valid") == 0
    finally:
        server.config_path.write_text(good)
    wait_for(lambda: server.status()["server"]["config_error"] is None, what="the warning to go")


# 2. /metrics ------------------------------------------------------------------------------------


def scrape(srv) -> dict:
    status, headers, text = request(srv, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(text)}


def metric_value(families, sample_name, **labels):
    for family in families.values():
        for sample in family.samples:
            if sample.name == sample_name and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                return sample.value
    raise AssertionError(f"no sample {sample_name} {labels}")


def test_metrics_parse_with_prometheus_clients_own_parser(server):
    before = scrape(server)
    ok_before = metric_value(before, "modserver_calls_total", module="basic", outcome="ok")
    count_before = metric_value(before, "modserver_call_duration_seconds_count", module="basic")
    for _ in range(3):
        assert response(call(server.port, "basic", "add", 1, 2)) == 3
    assert call(server.port, "basic", "boom")["error"] is True
    families = scrape(server)
    assert families["modserver_calls"].type == "counter"
    assert families["modserver_call_duration_seconds"].type == "histogram"
    assert metric_value(families, "modserver_calls_total", module="basic", outcome="ok") == (
        ok_before + 3
    )
    assert metric_value(families, "modserver_calls_total", module="basic", outcome="error") >= 1
    count = metric_value(families, "modserver_call_duration_seconds_count", module="basic")
    assert count == count_before + 4
    assert (
        metric_value(families, "modserver_call_duration_seconds_bucket", module="basic", le="+Inf")
        == count
    )
    assert metric_value(families, "modserver_worker_up", module="basic") == 1
    assert metric_value(families, "modserver_module_state", module="basic", state="ready") == 1
    assert metric_value(families, "modserver_queue_depth", module="basic") == 0
    assert metric_value(families, "modserver_queue_limit", module="life") == 7
    assert metric_value(families, "modserver_call_timeout_seconds", module="life") == 1.5
    assert metric_value(families, "modserver_client_connections_accepted_total") >= 4
    assert metric_value(families, "modserver_client_connections") >= 0
    assert metric_value(families, "modserver_info", version=server.status()["server"]["version"])
    assert metric_value(families, "modserver_config_valid") == 1
    assert "modserver_worker_restarts" in families


def test_metrics_count_restarts_by_cause(server):
    before = scrape(server)
    died = metric_value(before, "modserver_worker_restarts_total", module="basic", cause="died")
    pid = server.module_status("basic")["pid"]
    kill_hard(pid)
    wait_for(
        lambda: (
            (s := server.module_status("basic"))["pid"] not in (None, pid) and s["state"] == "ready"
        ),
        what="basic to be back",
    )
    after = scrape(server)
    assert (
        metric_value(after, "modserver_worker_restarts_total", module="basic", cause="died")
        == died + 1
    )


def test_metrics_speak_openmetrics_when_asked(server):
    status, headers, text = request(
        server, "GET", "/metrics", headers={"Accept": "application/openmetrics-text"}
    )
    assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")


# 3. Controls ---------------------------------------------------------------------------------


def test_the_page_restarts_a_module_for_an_administrator(server):
    server.wait_state("life", "ready")
    pid = server.module_status("life")["pid"]
    status, _, text = request(
        server, "POST", "/control", RESTART_LIFE, from_the_page(server, page_token(server))
    )
    assert (status, text) == (202, "Restarting life\n")
    wait_for(lambda: server.module_status("life")["pid"] not in (None, pid), what="a new worker")
    last = server.module_status("life")["restart_history"][-1]
    assert last == {
        "time": last["time"],
        "cause": "reload",
        "detail": "requested by the status page (127.0.0.1)",
    }


def test_the_page_rereads_the_config(server):
    body = json.dumps({"action": "reload-config"}).encode()
    status, _, text = request(
        server, "POST", "/control", body, from_the_page(server, page_token(server))
    )
    assert (status, text) == (200, "Reloaded config\n")


def test_an_unknown_module_is_not_found(server):
    body = json.dumps({"action": "restart", "module": "nope"}).encode()
    status, _, text = request(
        server, "POST", "/control", body, from_the_page(server, page_token(server))
    )
    assert status == 404 and 'Failed to find module "nope"' in text


def test_controls_take_only_a_post(server):
    status, headers, text = request(server, "GET", "/control")
    assert status == 405 and headers["Allow"] == "POST"


@pytest.mark.parametrize(
    ("changes", "code", "says"),
    [
        ({"Origin": "http://evil.example"}, 403, "another site"),
        ({"Origin": None}, 403, "another site"),
        ({"Origin": None, "Sec-Fetch-Site": "cross-site"}, 403, "another site"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "application/json"),
        ({"Content-Type": "text/plain"}, 415, "application/json"),
        ({"X-Modserver-Token": None}, 403, "token"),
        ({"X-Modserver-Token": "guessed"}, 403, "token"),
    ],
)
def test_requests_not_from_the_page_are_refused(server, changes, code, says):
    pid = server.module_status("life")["pid"]
    headers = from_the_page(server, page_token(server), **changes)
    status, _, text = request(server, "POST", "/control", RESTART_LIFE, headers)
    assert status == code and says in text
    assert server.module_status("life")["pid"] == pid


def test_a_cross_site_form_post_is_refused(server):
    """What a form on another site makes a lab member's browser send."""
    pid = server.module_status("life")["pid"]
    headers = {
        "Origin": "http://evil.example",
        "Content-Type": "application/x-www-form-urlencoded",
        "Sec-Fetch-Site": "cross-site",
    }
    status, _, _ = request(server, "POST", "/control", b"action=restart&module=life", headers)
    assert status == 403
    assert server.module_status("life")["pid"] == pid


@needs_second_loopback
@linux_only
def test_a_client_that_is_not_an_administrator_gets_no_controls(server):
    status, _, page = request(server, "GET", "/", source=OTHER)
    assert status == 200 and "life" in page
    assert '<meta name="modserver-token"' not in page and 'data-action="restart"' not in page
    headers = from_the_page(server, page_token(server))  # even with the right token
    status, _, text = request(server, "POST", "/control", RESTART_LIFE, headers, source=OTHER)
    assert status == 403
    assert (
        text.startswith("Forbidden: 127.0.0.2 may not restart modules") and "--admin-allow" in text
    )
