"""Sharing a module: another client's wait while one floods, and what turns cost.

    python benchmarks/turns.py                        # this checkout, arrival order vs turns
    python benchmarks/turns.py --baseline ../main     # also a checkout of an older server

Two figures, each measured in one run against its baseline:

- **B's wait while A floods.**  Client A (127.0.0.2) queues ``--flood``
  calls of ``sleep(--call-seconds)`` on one module; once they wait, client
  B (127.0.0.3) makes one call and times it.  Repeated ``--rounds`` times
  with the module's ``"order": "arrival"`` (ModuleServer's way: B waits
  for everything ahead of it) and ``"turns"`` (the default): p50 and max.
- **What a kept call costs.**  One keep-alive session makes ``--calls``
  calls of ``echo(3)``; the p50 round trip, alternating between the
  servers compared ``--repeats`` times (``"arrival"`` and ``"turns"`` here,
  or the ``--baseline`` checkout and this one), medians of the p50s.

Linux only for the flood (it needs 127.0.0.2 and 127.0.0.3).
"""

from __future__ import annotations

import argparse
import os
import statistics
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


def b_waits(order: str, rounds: int, flood: int, seconds: float) -> list[float]:
    waits = []
    with server(order) as srv:
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
    for order in ("arrival", "turns"):
        waits = b_waits(order, args.rounds, args.flood, args.call_seconds)
        print(
            f"  {order:8s} p50 {statistics.median(waits) * 1000:7.1f} ms   "
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
