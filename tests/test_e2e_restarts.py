"""Restarts with real processes, natively and in portable mode.

Requests to a module in a crash loop are answered at once instead of
being held through the backoff; a worker killed while serving is back at
once, every time.
"""

from __future__ import annotations

import re

import pytest

from tests.helpers import ServerProcess, call, kill_hard, response, timed, wait_for

pytestmark = pytest.mark.usefixtures("platform_mode")

LIFE = ["lifecycle", "Life", None]
LOOP = ["crash_soon", "CrashSoon", None]


def start(tmp_path, config, *args) -> ServerProcess:
    return ServerProcess(tmp_path, config, args).start()


def test_a_module_in_a_long_backoff_answers_at_once(tmp_path):
    with start(tmp_path, {"loop": LOOP}) as srv:
        wait_for(
            lambda: (
                (s := srv.module_status("loop"))["state"] == "backoff"
                and (s["restart_in"] or 0) > 1.3
            ),
            timeout=20,
            interval=0.01,
            what="a backoff of more than a second",
        )
        reply, seconds = timed(call, srv.port, "loop", "ping")
        assert seconds < 1.0  # not held until the next start
        assert re.fullmatch(
            r"Unavailable: loop is restarting after \d+ crashes; next try in \d+\.\d s",
            reply["response"],
        ), reply["response"]
        assert "exit code 9" in reply["traceback"]


def test_a_worker_killed_while_serving_is_back_at_once_every_time(tmp_path):
    with start(tmp_path, {"life": LIFE}) as srv:
        for _ in range(5):
            pid = response(call(srv.port, "life", "pid"))
            # It has served for a while (a death within a second is a crash loop).
            wait_for(lambda: srv.module_status("life")["uptime"] > 1.2, what="a second up")
            kill_hard(pid)
            wait_for(lambda p=pid: srv.module_status("life")["pid"] != p, what="the death seen")
            reply, seconds = timed(call, srv.port, "life", "version")
            assert response(reply) == 1
            assert seconds < 1.0  # no backoff for a worker that served
        assert srv.module_status("life")["restarts"] == 5
