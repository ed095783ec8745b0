"""Chaos, bounded: random calls on four modules for about 20 s while workers are
SIGKILLed and module files rewritten.  Every call gets exactly one reply (the
right value or a clear error) within its client timeout, and nothing is left
running after SIGTERM.  benchmarks/soak.py runs the same for minutes.
"""

from __future__ import annotations

import pytest

from tests.chaos import ChaosRun, chaos_config
from tests.helpers import GRACEFUL_STOP, ServerProcess, pid_alive, stopped_gracefully, wait_for

pytestmark = pytest.mark.usefixtures("platform_mode")

SECONDS = {"native": 20.0, "portable": 8.0}


def test_every_call_gets_one_clear_reply_while_workers_die_and_reload(tmp_path, platform_mode):
    config = chaos_config(tmp_path, modules=4)
    srv = ServerProcess(tmp_path, config, ("--no-access-log",))
    with srv.start():
        run = ChaosRun(srv, tmp_path, list(config))
        tally = run.run(SECONDS[platform_mode])
        print(tally.summary())
        assert tally.lost == [], tally.summary()
        assert tally.ok > 100 and tally.kills >= 5 and tally.rewrites >= 1, tally.summary()
        pids = run.pids | {m["pid"] for m in srv.status()["modules"].values() if m["pid"]}
        assert stopped_gracefully(srv.stop(GRACEFUL_STOP))
    wait_for(lambda: not any(pid_alive(pid) for pid in pids), timeout=10, what="no worker left")
