"""Arrays through modserver: binary segments against today's JSON path and a bare relay.

    python benchmarks/arrays.py            # the table (about a minute)
    python benchmarks/arrays.py --json

A real ``twistd modserver`` serves benchmarks/bench_module.py.  The client
is modserver.client.Client, which ends with numpy arrays in hand: with
binary segments (its default when numpy imports), and with binary=False
(the JSON path every client had before; the list it returns is made an
array, as a user would).  The bare relay is the most a relaying server can
do here: one Python process copying from a pipe (another process writing
the bytes) to a socket, the client reading them into an array.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import textwrap
import time

import numpy
from run import MB, ModServer, rss_kb, samples, wait_for

from modserver.client import Client

# The bare relay: copies its stdin (a 1 MB pipe) to a socket, 1 MB at a time.
RELAY = textwrap.dedent(
    """
    import fcntl, os, socket, sys
    try:
        fcntl.fcntl(0, 1031, 1 << 20)  # F_SETPIPE_SZ: a 1 MB pipe, as modserver's workers use
    except OSError:
        pass
    sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    while True:
        data = os.read(0, 1 << 20)
        if not data:
            break
        sock.sendall(data)
    sock.close()
    """
)
PRODUCER = "import sys; sys.stdout.buffer.write(b'x' * int(sys.argv[1]))"


def bare_relay(size: int) -> float:
    """Seconds for ``size`` bytes: producer | relay -> socket -> an array in hand
    (timed from the relay's connection, so its start-up is not counted)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    producer = subprocess.Popen([sys.executable, "-c", PRODUCER, str(size)], stdout=subprocess.PIPE)
    relay = subprocess.Popen([sys.executable, "-c", RELAY, str(port)], stdin=producer.stdout)
    producer.stdout.close()
    conn, _ = listener.accept()
    started = time.perf_counter()  # both processes are up: from here on, only copying
    buffer = bytearray(size)
    view, have = memoryview(buffer), 0
    while have < size:
        got = conn.recv_into(view[have:])
        if not got:
            break
        have += got
    numpy.frombuffer(buffer, dtype=numpy.uint8)
    elapsed = time.perf_counter() - started
    conn.close()
    listener.close()
    relay.wait(30)
    producer.wait(30)
    assert have == size
    return elapsed


def rate(size: int, times: list[float]) -> dict:
    rates = sorted(size / t / MB for t in times)
    return {"median": statistics.median(rates), "low": rates[0], "high": rates[-1], "unit": "MB/s"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    repeat = args.repeat
    results = {}

    server = ModServer({"bench": "bench_module"})
    try:
        wait_for(server.ready, what="the bench module")
        binary = Client("127.0.0.1", server.port, timeout=120)
        plain = Client("127.0.0.1", server.port, timeout=120, binary=False)
        assert binary.binary

        # Server memory first, on a fresh server: its peak during 100 MB array replies.
        idle = rss_kb(server.pid) or 0
        for _ in range(2):  # the first also makes the array in the module
            assert binary.com("bench", "array", 100 * MB // 8).nbytes == 100 * MB
        peak = rss_kb(server.pid, "VmHWM") or 0
        results["server_idle_rss_MB"] = idle / 1024
        results["rss_growth_100MB_array_MB"] = max(0, peak - idle) / 1024

        n = 1_000_000
        binary.com("bench", "array", n)
        fast = samples(lambda: binary.com("bench", "array", n), repeat * 3, warmup=2)
        slow = samples(
            lambda: numpy.array(plain.com("bench", "array", n), dtype=numpy.float64),
            repeat,
            warmup=1,
        )
        results["floats_1M_binary_s"] = statistics.median(fast)
        results["floats_1M_json_s"] = statistics.median(slow)
        results["floats_1M_speedup"] = statistics.median(slow) / statistics.median(fast)

        size = 80 * MB
        binary.com("bench", "array", size // 8)
        results["reply_80MB_array"] = rate(
            size, samples(lambda: binary.com("bench", "array", size // 8), repeat, warmup=1)
        )
        results["reply_80MB_bare_relay"] = rate(size, [bare_relay(size) for _ in range(repeat)])
        results["reply_80MB_vs_relay"] = (
            results["reply_80MB_array"]["median"] / results["reply_80MB_bare_relay"]["median"]
        )

        with binary.session("bench") as session:
            session.frame()
            frames, started = 0, time.perf_counter()
            while time.perf_counter() - started < 3.0:
                frame = session.frame()
                frames += 1
            elapsed = time.perf_counter() - started
        assert frame.shape == (2048, 2048) and frame.dtype == numpy.uint16
        results["frames_2048x2048_u16_fps"] = frames / elapsed

        argument = numpy.arange(10 * MB // 8, dtype=numpy.float64)
        with binary.session("bench") as session:
            assert session.take(argument) == argument.nbytes
            times = samples(lambda: session.take(argument), repeat * 2, warmup=1)
        results["argument_10MB_float64"] = rate(argument.nbytes, times)
    finally:
        server.stop()

    if args.json:
        print(json.dumps(results, indent=2))
        return
    r = results
    rows = [
        ("1,000,000 float64 reply, binary", f"{r['floats_1M_binary_s'] * 1e3:.1f} ms", ""),
        ("1,000,000 float64 reply, JSON path", f"{r['floats_1M_json_s'] * 1e3:.1f} ms", ""),
        ("  speed-up", f"x{r['floats_1M_speedup']:.1f}", ">= 30x"),
        ("80 MB array reply", _rate(r["reply_80MB_array"]), ""),
        ("80 MB through a bare relay", _rate(r["reply_80MB_bare_relay"]), ""),
        ("  array reply / bare relay", f"x{r['reply_80MB_vs_relay']:.2f}", ">= 0.5"),
        (
            "2048x2048 uint16 frames, keep-alive",
            f"{r['frames_2048x2048_u16_fps']:.1f} fps",
            ">= 30",
        ),
        ("10 MB float64 argument", _rate(r["argument_10MB_float64"]), ">= 200 MB/s"),
        (
            "server RSS growth, 100 MB array reply",
            f"{r['rss_growth_100MB_array_MB']:.1f} MB",
            "<= 2 MB",
        ),
        ("idle server RSS", f"{r['server_idle_rss_MB']:.1f} MB", ""),
    ]
    for label, value, target in rows:
        print(f"{label:<40}{value:<28}{target}")


def _rate(value: dict) -> str:
    return f"{value['median']:.0f} MB/s ({value['low']:.0f}-{value['high']:.0f})"


if __name__ == "__main__":
    main()
