"""Watches: one instrument read for every watcher, against everyone polling.

    python benchmarks/watch.py                       # 100 watchers, 10 Hz, 10 s each phase
    python benchmarks/watch.py --clients 100 --seconds 10 --stall 60

Three figures, measured in one run against one server (``counting`` test module):

1. **100 watchers of one reading at 10 Hz.**  ``--clients`` connections
   watch ``stamp()`` (which returns ``time.time()`` as it returns) every
   0.1 s, all read by one selector loop.  Reported: how many times the
   module was called per second (should be ~10, not 10 x clients), how
   many of those values each watcher received, and p50/p99 of the time from
   the module's return to a watcher's receipt.
2. **Server CPU for that load, against polling.**  The server process's
   CPU seconds (user + system, from /proc) per wall second during phase 1,
   and during ``--clients`` threads each calling ``stamp()`` themselves
   every 0.1 s (a hello and a request per call, as MATLAB and the original
   client do); the ratio.
3. **A watcher that stops reading.**  One watcher of a 64 KB reading at
   10 Hz never reads for ``--stall`` seconds; the server's RSS is sampled
   every second: first, max, last.  The server keeps only the latest value
   for it (and disconnects it after 60 s of not reading).

Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.helpers import ServerProcess, call, wait_for  # noqa: E402

TICK = 1 / 100  # os.sysconf("SC_CLK_TCK") is 100 on Linux


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK  # utime, stime


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def served(srv) -> int:
    """The module's calls answered so far (from _status: it does not wait in the module's line)."""
    return srv.module_status("bench")["calls_served"]


def open_watch(port: int, request: dict, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b'{"name": "_watch"}\n' + json.dumps(request).encode() + b"\n")
    return sock


def watchers(srv, clients: int, seconds: float) -> dict:
    request = {"module": "bench", "function": "stamp", "every": 0.1}
    socks = [open_watch(srv.port, request) for _ in range(clients)]
    selector = selectors.DefaultSelector()
    buffers = {}
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        buffers[sock] = b""
    got = {sock: [] for sock in socks}
    latencies: list[float] = []

    def pump(until: float, record: bool) -> None:
        while time.time() < until:
            for key, _ in selector.select(timeout=0.05):
                data = key.fileobj.recv(65536)
                now = time.time()
                buffers[key.fileobj] += data
                *lines, buffers[key.fileobj] = buffers[key.fileobj].split(b"\n")
                for line in lines:
                    message = json.loads(line)
                    if "value" in message and record:
                        got[key.fileobj].append(message["value"])
                        latencies.append(now - message["value"])

    pump(time.time() + 1.5, record=False)  # every watcher acked and receiving
    pid = srv.process.pid
    first, cpu0, start = served(srv), cpu_seconds(pid), time.time()
    pump(start + seconds, record=True)
    wall, cpu1, last = time.time() - start, cpu_seconds(pid), served(srv)
    for sock in socks:
        sock.close()
    selector.close()
    polls = last - first
    per_watcher = [len(values) for values in got.values()]
    distinct = len({v for values in got.values() for v in values})
    latencies.sort()
    return {
        "module_calls_per_s": polls / wall,
        "distinct_values": distinct,
        "values_per_watcher_min": min(per_watcher),
        "values_per_watcher_median": statistics.median(per_watcher),
        "latency_p50_ms": 1000 * latencies[len(latencies) // 2],
        "latency_p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
        "server_cpu_per_s": (cpu1 - cpu0) / wall,
    }


def pollers(srv, clients: int, seconds: float) -> dict:
    stop = threading.Event()
    counts = [0] * clients
    failures = [0] * clients

    def client(i: int) -> None:
        next_at = time.time()
        while not stop.is_set():
            try:
                reply = call(srv.port, "bench", "stamp")
                if reply["error"]:
                    failures[i] += 1
                else:
                    counts[i] += 1
            except OSError:
                failures[i] += 1
            next_at += 0.1
            delay = next_at - time.time()
            if delay > 0:
                stop.wait(delay)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)  # warm up (a measurement window, not synchronisation)
    pid = srv.process.pid
    first, cpu0, start = served(srv), cpu_seconds(pid), time.time()
    ok0, failed0 = sum(counts), sum(failures)
    time.sleep(seconds)
    wall, cpu1, last = time.time() - start, cpu_seconds(pid), served(srv)
    ok, failed = sum(counts) - ok0, sum(failures) - failed0
    stop.set()
    for thread in threads:
        thread.join(10)
    return {
        "module_calls_per_s": (last - first) / wall,
        "client_replies_ok_per_s": ok / wall,
        "client_failures_per_s": failed / wall,
        "server_cpu_per_s": (cpu1 - cpu0) / wall,
    }


def stalled(srv, seconds: float) -> dict:
    request = {"module": "bench", "function": "stamp_blob", "args": [65536], "every": 0.1}
    before = served(srv)
    sock = open_watch(srv.port, request, rcvbuf=4096)
    pid = srv.process.pid
    samples = []
    start = time.time()
    while time.time() - start < seconds:
        samples.append(rss_kb(pid))
        time.sleep(1.0)  # a sampling interval, not synchronisation
    polls = served(srv) - before
    sock.close()
    return {
        "rss_kb_first": samples[0],
        "rss_kb_max": max(samples),
        "rss_kb_last": samples[-1],
        "rss_growth_kb": samples[-1] - samples[0],
        "module_calls_during_stall": polls,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0, help="each of phases 1 and 2")
    parser.add_argument("--stall", type=float, default=60.0, help="phase 3's seconds")
    options = parser.parse_args()
    entry = {
        "module": "counting",
        "entry": "Counting",
        "min_period": 0.1,
        "queue_limit": 1000,
        "queue_share": 1000,
    }
    with tempfile.TemporaryDirectory() as where:
        args = ("--no-access-log", "--max-connections-per-address", "1000")
        srv = ServerProcess(Path(where), {"bench": entry}, args).start()
        with srv:
            wait_for(lambda: srv.module_status("bench")["state"] == "ready", what="ready")
            watched = watchers(srv, options.clients, options.seconds)
            polled = pollers(srv, options.clients, options.seconds)
            stall = stalled(srv, options.stall) if options.stall > 0 else {}
    print(f"{options.clients} watchers of one reading at 10 Hz, {options.seconds:g} s:")
    for key, value in watched.items():
        print(f"  {key:28s} {value:10.3f}")
    print(f"{options.clients} clients polling the same reading at 10 Hz, {options.seconds:g} s:")
    for key, value in polled.items():
        print(f"  {key:28s} {value:10.3f}")
    ratio = polled["server_cpu_per_s"] / max(watched["server_cpu_per_s"], 1e-9)
    print(f"  server CPU, polling / watching: {ratio:.1f}x")
    if stall:
        print(f"one watcher not reading a 64 KB reading at 10 Hz for {options.stall:g} s:")
        for key, value in stall.items():
            print(f"  {key:28s} {value:10d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
