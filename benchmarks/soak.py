"""A chaos soak: tests/test_chaos.py's run for minutes instead of seconds.

    python benchmarks/soak.py                   # 5 minutes, 6 clients, 4 modules
    python benchmarks/soak.py --seconds 60 --portable

A real ``twistd modserver`` serves four modules while clients make random
calls, a killer SIGKILLs a random worker every 0.3-1.5 s (--kill-every) and a rewriter
saves a module file every 2-4 s.  It prints calls, ok, clear errors and
lost (a call with no reply within its 5 s client timeout, or a wrong
value): lost must be 0.  Exit status 1 if any was lost, or if anything of
the server outlived its SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.chaos import ChaosRun, chaos_config  # noqa: E402
from tests.helpers import GRACEFUL_STOP, ServerProcess, pid_alive, wait_for  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--modules", type=int, default=4)
    parser.add_argument("--portable", action="store_true", help="MODSERVER_PLATFORM=portable")
    parser.add_argument(
        "--kill-every",
        nargs=2,
        type=float,
        default=(0.3, 1.5),
        metavar=("MIN", "MAX"),
        help="seconds between two worker kills, at random between MIN and MAX (0.3 1.5)",
    )
    args = parser.parse_args()
    if args.portable:
        os.environ["MODSERVER_PLATFORM"] = "portable"
    with tempfile.TemporaryDirectory() as where:
        directory = Path(where)
        config = chaos_config(directory, args.modules)
        server = ServerProcess(directory, config, ("--no-access-log",)).start()
        started = time.monotonic()
        try:
            run = ChaosRun(server, directory, list(config), kill_every=tuple(args.kill_every))
            tally = run.run(args.seconds, clients=args.clients)
            pids = run.pids | {m["pid"] for m in server.status()["modules"].values() if m["pid"]}
        finally:
            code = server.stop(GRACEFUL_STOP)
        left = []
        try:
            wait_for(lambda: not any(pid_alive(pid) for pid in pids), timeout=10, what="exit")
        except AssertionError:
            left = [pid for pid in pids if pid_alive(pid)]
        print(
            f"soak of {time.monotonic() - started:.0f} s, {args.clients} clients, "
            f"{args.modules} modules{' (portable)' if args.portable else ''}"
        )
        print(tally.summary())
        print(f"server exit status {code}; processes left after SIGTERM: {left or 'none'}")
        for reason in tally.lost[:10]:
            print("  lost:", reason)
    return 1 if tally.lost or left else 0


if __name__ == "__main__":
    sys.exit(main())
