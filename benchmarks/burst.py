"""Peak memory of the server under a burst of large requests.

    python benchmarks/burst.py                  # 50 concurrent 20 MB requests
    python benchmarks/burst.py --clients 50 --megabytes 20 --budget 256M

Starts a real ``twistd modserver`` and sends every request at once, each on
its own connection.  Prints how many were served and how many refused with
Busy (past --max-held-requests), the server's RSS before, its peak (VmHWM)
and after.  Linux only (it reads /proc).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import ServerProcess, call  # noqa: E402


def memory_mb(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as status:
        return int(re.search(rf"{field}:\s+(\d+) kB", status.read()).group(1)) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--megabytes", type=float, default=20)
    parser.add_argument(
        "--budget", default=None, help="--max-held-requests (default: the server's)"
    )
    args = parser.parse_args()
    extra = ("--max-held-requests", args.budget) if args.budget else ()
    with tempfile.TemporaryDirectory() as where:
        config = {"counting": ["counting", "Counting", None]}
        server = ServerProcess(Path(where), config, ("--no-access-log", *extra)).start()
        try:
            pid = server.process.pid
            before = memory_mb(pid, "VmRSS")
            payload = "x" * int(args.megabytes * 1_000_000)
            outcomes = []

            def send():
                reply = call(server.port, "counting", "echo", payload, plain=True)
                outcomes.append("served" if reply["response"] == payload else reply["response"])

            threads = [threading.Thread(target=send) for _ in range(args.clients)]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(600)
            seconds = time.monotonic() - started
            peak, after = memory_mb(pid, "VmHWM"), memory_mb(pid, "VmRSS")
        finally:
            server.stop()
    served = outcomes.count("served")
    busy = sum(1 for o in outcomes if o != "served" and o.startswith("Busy:"))
    other = len(outcomes) - served - busy
    print(
        f"{args.clients} x {args.megabytes:g} MB requests in {seconds:.1f} s: "
        f"{served} served, {busy} Busy, {other} other"
    )
    print(f"server RSS: {before:.0f} MB before, peak {peak:.0f} MB, {after:.0f} MB after")
    return 0 if other == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
