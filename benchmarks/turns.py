"""Sharing a module: another client's wait while one floods, and what turns cost.

    python benchmarks/turns.py                        # this checkout, arrival order vs turns
    python benchmarks/turns.py --baseline ../main     # also a checkout of an older server

Two figures, each measured in one run against its baseline:

- **B's wait while A floods.**  Client A (127.0.0.2) queues ``--flood``
  calls of ``sleep(--call-seconds)`` on one module; once they wait, client
  B (127.0.0.3) makes one call and times it.  Repeated ``--rounds`` times
  with the module's ``"order": "arrival"`` (ModuleServer's way: B waits
  for everything ahead of it) and ``"turns"`` (the default), and on the
  ``--baseline`` checkout if given: p50 and max.
- **What a kept call costs.**  One keep-alive session makes ``--calls``
  calls of ``echo(3)``; the p50 round trip, alternating between the
  servers compared ``--repeats`` times (``"arrival"`` and ``"turns"`` here,
  or the ``--baseline`` checkout and this one), medians of the p50s.
  On a busy machine the round trip's noise hides a few microseconds, so
  with ``--baseline`` the supervisor's own time per kept call is measured
  too: its CPU time (so other programs' load counts less), in one
  process, with the test suite's fake worker (tests/fakes.py) answering at
  once, no sockets; each checkout in its own process, alternating.

Linux only for the flood (it needs 127.0.0.2 and 127.0.0.3).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.helpers import Connection, ServerProcess, call, wait_for  # noqa: E402

A, B = "127.0.0.2", "127.0.0.3"


@contextmanager
def server(order: str | None, checkout: Path | None = None):
    """A real server for the ``counting`` test module (``order`` None: the server's own)."""
    entry = {"module": "counting", "entry": "Counting"}
    if order is not None:
        entry["order"] = order
    saved = os.environ.get("PYTHONPATH")
    if checkout is not None:
        os.environ["PYTHONPATH"] = str(checkout)  # its modserver before the installed one
    try:
        with tempfile.TemporaryDirectory() as where:
            srv = ServerProcess(Path(where), {"bench": entry}, ("--no-access-log",)).start()
            with srv:
                yield srv
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def b_waits(
    order: str | None, rounds: int, flood: int, seconds: float, checkout: Path | None = None
) -> list[float]:
    waits = []
    with server(order, checkout) as srv:
        for _ in range(rounds):
            threads = [
                threading.Thread(
                    target=call, args=(srv.port, "bench", "sleep", seconds), kwargs={"source": A}
                )
                for _ in range(flood)
            ]
            for thread in threads:
                thread.start()
            wait_for(
                lambda: srv.module_status("bench")["queue"] >= flood - 2,
                what="A's flood to queue",
            )
            started = time.monotonic()
            reply = call(srv.port, "bench", "sleep", 0, source=B)
            waits.append(time.monotonic() - started)
            assert reply["error"] is False, reply
            for thread in threads:
                thread.join(flood * seconds * 4 + 30)
    return waits


def kept_call_p50(srv, calls: int) -> float:
    with Connection(srv.port) as conn:
        conn.send({"name": "bench"})
        assert conn.reply()["response"] == "ack"
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            conn.send({"function": "echo", "args": [3], "keep_alive": True})
            reply = conn.reply()
            times.append(time.perf_counter() - started)
            assert reply["response"] == 3, reply
    return statistics.median(times)


# Runs in a checkout (its modserver and tests.fakes): microseconds of the
# supervisor's CPU time per kept call, the median of 20 batches.
SUPERVISOR_TIME = """
import statistics, time
from tests.fakes import RecordingSink, make_call, make_supervisor
supervisor, reactor, _ = make_supervisor()
supervisor.start()
reactor.last.ready()
sink = RecordingSink()
body = b'{"response": 3, "error": false, "traceback": ""}'
request_id, batches = 0, []
for batch in range(21):
    started = time.process_time()
    for _ in range(2000):
        supervisor.submit(make_call(sink, function="echo", keep_alive=True))
        request_id += 1
        reactor.last.replies(request_id, body)
    batches.append((time.process_time() - started) / 2000)
    sink.events.clear()
    reactor.last.transport.written.clear()
print(statistics.median(batches[1:]) * 1e6)
"""


def supervisor_time(checkout: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(checkout))
    result = subprocess.run(
        [sys.executable, "-c", SUPERVISOR_TIME],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return float(result.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--flood", type=int, default=20, help="A's calls per round")
    parser.add_argument("--call-seconds", type=float, default=0.1)
    parser.add_argument("--calls", type=int, default=3000, help="kept calls per measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="a checkout of the server to compare")
    args = parser.parse_args()

    print(
        f"B's wait for one call while A floods {args.flood} x sleep({args.call_seconds:g}) "
        f"({args.rounds} rounds)"
    )
    compared_waits = {"arrival": ("arrival", None), "turns": ("turns", None)}
    if args.baseline is not None:
        compared_waits = {"baseline": (None, args.baseline.resolve()), **compared_waits}
    for name, (order, checkout) in compared_waits.items():
        waits = b_waits(order, args.rounds, args.flood, args.call_seconds, checkout)
        print(
            f"  {name:8s} p50 {statistics.median(waits) * 1000:7.1f} ms   "
            f"max {max(waits) * 1000:7.1f} ms"
        )

    if args.baseline is not None:
        compared = {"baseline": (None, args.baseline.resolve()), "this": (None, None)}
    else:
        compared = {"arrival": ("arrival", None), "turns": ("turns", None)}
    p50s: dict[str, list[float]] = {name: [] for name in compared}
    for _ in range(args.repeats):
        for name, (order, checkout) in compared.items():
            with server(order, checkout) as srv:
                kept_call_p50(srv, 200)  # warm up
                p50s[name].append(kept_call_p50(srv, args.calls))
    print(f"Kept-call round trip, p50 of {args.calls} calls, median of {args.repeats} runs")
    for name, values in p50s.items():
        print(
            f"  {name:8s} {statistics.median(values) * 1e6:6.1f} us   "
            f"(runs {min(values) * 1e6:.1f}-{max(values) * 1e6:.1f})"
        )
    first, second = (statistics.median(v) for v in p50s.values())
    print(f"  ratio {second / first:.3f}")
    if args.baseline is None:
        return 0
    times: dict[str, list[float]] = {"baseline": [], "this": []}
    for _ in range(args.repeats):
        times["baseline"].append(supervisor_time(args.baseline.resolve()))
        times["this"].append(supervisor_time(HERE.parent))
    print(f"Supervisor CPU time per kept call (fake worker, no sockets), median of {args.repeats}")
    for name, values in times.items():
        print(
            f"  {name:8s} {statistics.median(values):6.1f} us   "
            f"(runs {min(values):.1f}-{max(values):.1f})"
        )
    base, this = (statistics.median(v) for v in times.values())
    print(f"  ratio {this / base:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
