"""modserver's benchmarks, each against a floor measured in the same run.

    python benchmarks/run.py             # the table (about three minutes)
    python benchmarks/run.py --quick     # fewer repeats (a minute)
    python benchmarks/run.py --json      # the figures as JSON

A real ``twistd modserver`` serves a bench module; floor.py serves the same
module with the least a server of this protocol can do (one process, the
module in-process, urllib and json).  The client decodes every reply in
full, as real clients must.  Latencies are medians (p50) and p99 of many
calls; throughputs are medians of repeated runs, shown with their range.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from modserver.wire import codec as wire  # noqa: E402

BENCH = HERE / "bench_module.py"
MB = 1_000_000


# Servers ---------------------------------------------------------------------------------


def twistd() -> list[str]:
    script = Path(sys.executable).parent / "twistd"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def wait_for(condition, timeout: float = 60.0, what: str = "it"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.005)
    raise RuntimeError(f"timed out waiting for {what}")


class ModServer:
    """``twistd -n modserver`` with bench modules in a directory of its own."""

    name = "modserver"

    def __init__(
        self,
        modules: dict[str, str],
        extra: tuple[str, ...] = (),
        log_level: str = "warn",
        source: Path | None = None,
    ) -> None:
        self.dir = tempfile.TemporaryDirectory()
        self.root = Path(self.dir.name)
        (self.root / "bench_module.py").write_text(BENCH.read_text())
        (self.root / "reloadable.py").write_text(BENCH.read_text())
        config = {name: [source, "Bench", None] for name, source in modules.items()}
        (self.root / "server.config").write_text(json.dumps(config))
        self.log = self.root / "server.log"
        self.started = time.perf_counter()
        env = None
        if source is not None:  # another checkout's modserver package (benchmarks/versions.py)
            env = {**os.environ, "PYTHONPATH": str(source)}
        self.process = subprocess.Popen(
            [
                *twistd(),
                "-n",
                "--pidfile=",
                "modserver",
                "--config",
                str(self.root / "server.config"),
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--log-level",
                log_level,
                *extra,
            ],
            cwd=self.root,
            env=env,
            stdout=open(self.log, "wb"),
            stderr=subprocess.STDOUT,
        )
        match = wait_for(
            lambda: re.search(r"listening on 127\.0\.0\.1:(\d+)", self.log.read_text()),
            what="modserver to listen",
        )
        self.port = int(match.group(1))
        self.pid = self.process.pid

    def ready(self) -> bool:
        status = request(self.port, {"name": "_status"})
        return all(m["state"] == "ready" for m in status["modules"].values())

    def worker_pid(self, module: str) -> int:
        return request(self.port, {"name": "_status." + module})["modules"][module]["pid"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.dir.cleanup()


class Floor:
    """floor.py serving the same bench module."""

    name = "floor"

    def __init__(self, modules: list[str]) -> None:
        specs = [f"{BENCH}:Bench:{name}" for name in modules]
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "floor.py"), "0", *specs],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()
        self.port = int(line.rsplit(":", 1)[1])
        self.pid = self.process.pid

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


# A client that decodes everything -------------------------------------------------------


class Connection:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rest = b""

    def send(self, message: dict) -> None:
        self.sock.sendall(wire.quote_plus(json.dumps(message).encode()) + b"\n")

    def receive(self):
        chunks, data = [], self.rest
        while b"\n" not in data:
            if data:
                chunks.append(data)
            data = self.sock.recv(4 * 1024 * 1024)
            if not data:
                raise ConnectionError("closed")
        end = data.index(b"\n")
        chunks.append(data[:end])
        self.rest = data[end + 1 :]
        reply = json.loads(wire.unquote_plus(b"".join(chunks)))
        if reply["error"]:
            raise RuntimeError(reply["response"])
        return reply["response"]

    def close(self) -> None:
        self.sock.close()


def request(port: int, hello: dict):
    conn = Connection(port)
    try:
        conn.send(hello)
        return conn.receive()
    finally:
        conn.close()


def com(port: int, module: str, function: str, *args):
    """A call on a new connection: what every ModuleServer client does."""
    conn = Connection(port)
    try:
        conn.send({"name": module})
        conn.receive()
        conn.send({"function": function, "args": list(args), "keep_alive": False})
        return conn.receive()
    finally:
        conn.close()


# Measurements ---------------------------------------------------------------------------


def samples(fn, repeat: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def latency(values: list[float]) -> dict:
    ordered = sorted(values)
    return {
        "p50": statistics.median(ordered),
        "p99": ordered[int(len(ordered) * 0.99) - 1],
        "n": len(ordered),
        "unit": "s",
    }


def throughput(size: int, times: list[float]) -> dict:
    rates = sorted(size / t / MB for t in times)
    return {
        "median": statistics.median(rates),
        "low": rates[0],
        "high": rates[-1],
        "n": len(rates),
        "unit": "MB/s",
    }


def bench_latencies(target, repeat: int) -> dict:
    port = target.port
    result = {
        "ping": latency(samples(lambda: request(port, {"name": "_ping"}), repeat)),
        "com_new_connection": latency(samples(lambda: com(port, "bench", "noop"), repeat)),
    }
    conn = Connection(port)
    conn.send({"name": "bench"})
    conn.receive()

    def keep_alive():
        conn.send({"function": "noop", "args": [], "keep_alive": True})
        conn.receive()

    result["com_keep_alive"] = latency(samples(keep_alive, repeat))
    conn.close()
    return result


def bench_replies(target, sizes: list[int], repeat: int) -> dict:
    result = {}
    for size in sizes:
        com(target.port, "bench", "blob", size)  # made once, in the module
        runs = repeat if size < 50 * MB else max(3, repeat // 2)
        result[f"reply_{size // MB}MB"] = throughput(
            size, samples(lambda s=size: com(target.port, "bench", "blob", s), runs, warmup=1)
        )
    com(target.port, "bench", "float_list", 1_000_000)
    times = samples(lambda: com(target.port, "bench", "float_list", 1_000_000), repeat, warmup=1)
    result["floats_1M"] = {**latency(times), "p99": max(times)}
    return result


def calls_per_second(port: int, modules: list[str], seconds: float) -> float:
    """Each thread makes new-connection calls to its module for ``seconds``."""
    counts = [0] * len(modules)
    stop = time.monotonic() + seconds

    def client(i: int, module: str) -> None:
        while time.monotonic() < stop:
            com(port, module, "noop")
            counts[i] += 1

    threads = [threading.Thread(target=client, args=(i, m)) for i, m in enumerate(modules)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / seconds


def bench_concurrency(target, seconds: float) -> dict:
    return {
        "threads8_one_module": {
            "rate": calls_per_second(target.port, ["bench"] * 8, seconds),
            "unit": "calls/s",
        },
        "threads8_two_modules": {
            "rate": calls_per_second(target.port, ["bench", "bench2"] * 4, seconds),
            "unit": "calls/s",
        },
    }


def rss_kb(pid: int, field: str = "VmRSS") -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def bench_memory(target, worker_pid: int | None) -> dict:
    """Idle RSS (of a fresh server), and its peak RSS growth while a 100 MB reply passes."""
    idle = rss_kb(target.pid) or 0
    result = {"server_idle_rss_MB": idle / 1024}
    if worker_pid is not None:
        result["worker_idle_rss_MB"] = (rss_kb(worker_pid) or 0) / 1024
    for _ in range(2):  # the first also makes the payload inside the module
        assert len(com(target.port, "bench2", "blob", 100 * MB)) == 100 * MB
    peak = rss_kb(target.pid, "VmHWM") or 0
    result["rss_growth_100MB_reply_MB"] = max(0, peak - idle) / 1024
    return result


def bench_respawn(server: ModServer, repeat: int) -> dict:
    """SIGKILL a worker; time until a new-connection call succeeds again."""
    times = []
    for i in range(repeat):
        module = f"respawn{i}"  # a different module each time: each is a first death
        pid = server.worker_pid(module)
        started = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        while True:
            try:
                if com(server.port, module, "pid") != pid:
                    break
            except RuntimeError:
                pass  # the call in flight when the worker died
        times.append(time.perf_counter() - started)
    return latency(times) | {"p99": max(times)}


def bench_reload(server: ModServer, repeat: int) -> dict:
    """Save a changed module file; time until a call answers from the new code."""
    path = server.root / "reloadable.py"
    times = []
    for edit in range(1, repeat + 1):
        text = re.sub(r"VERSION = \d+", f"VERSION = {edit}", path.read_text())
        started = time.perf_counter()
        path.write_text(text)
        while com(server.port, "reloadable", "version") != edit:
            pass
        times.append(time.perf_counter() - started)
        time.sleep(0.1 + 0.05 * edit)  # spread the saves over the poll interval
    return latency(times) | {"p99": max(times)}


def bench_fifty() -> dict:
    """From starting the server to 50 modules ready."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        server = ModServer({f"m{i:02d}": "bench_module" for i in range(50)})
        try:
            wait_for(server.ready, what="50 modules")
            times.append(time.perf_counter() - started)
        finally:
            server.stop()
    return latency(times) | {"p99": max(times)}


def bench_codec(size: int = 10 * MB) -> dict:
    """The fast paths against urllib, on a reply of floats (many bytes to escape)."""
    values = [i * 1.2345678901 for i in range(size // 20)]
    text = json.dumps({"response": values, "error": False, "traceback": ""})
    data = text.encode()
    encoded = wire.quote_plus(data)
    assert encoded == urllib.parse.quote_plus(text).encode()
    assert wire.unquote_plus(encoded) == urllib.parse.unquote_plus(encoded.decode())
    result = {}
    for name, fast, slow in (
        ("quote_plus", lambda: wire.quote_plus(data), lambda: urllib.parse.quote_plus(text)),
        (
            "unquote_plus",
            lambda: wire.unquote_plus(encoded),
            lambda: urllib.parse.unquote_plus(encoded.decode()),
        ),
    ):
        fast_s = statistics.median(samples(fast, 5, warmup=1))
        slow_s = statistics.median(samples(slow, 3, warmup=1))
        result[name] = {
            "fast": len(data) / fast_s / MB,
            "urllib": len(data) / slow_s / MB,
            "unit": "MB/s",
        }
    return result


def bench_line_receiver(size: int = 16 * 1024 * 1024, piece: int = 65536) -> dict:
    """A long request line arriving in socket-sized pieces: ours against LineReceiver."""
    from twisted.internet.testing import StringTransport
    from twisted.protocols.basic import LineReceiver

    from modserver.net.lines import ChunkedLineReceiver

    class Ours(ChunkedLineReceiver):
        MAX_LENGTH = size * 2

        def lineReceived(self, line):
            self.got = len(line)

    class Twisteds(LineReceiver):
        delimiter = b"\n"
        MAX_LENGTH = size * 2

        def lineReceived(self, line):
            self.got = len(line)

    data = b"y" * size + b"\n"
    pieces = [data[i : i + piece] for i in range(0, len(data), piece)]
    result = {}
    for name, cls in (("chunked", Ours), ("LineReceiver", Twisteds)):

        def feed(cls=cls):
            receiver = cls()
            receiver.makeConnection(StringTransport())
            for p in pieces:
                receiver.dataReceived(p)
            assert receiver.got == size

        result[name] = size / statistics.median(samples(feed, 3, warmup=1)) / MB
    result["unit"] = "MB/s"
    return result


# The table ---------------------------------------------------------------------------------

ROWS = [
    # (key, label, kind, target)  kind: lat (lower is better), rate (higher), value
    ("ping", "_ping", "lat", None),
    ("com_new_connection", "com, new connection", "lat", "<= 1.5x floor"),
    ("com_keep_alive", "com, keep-alive", "lat", "<= 2x floor"),
    ("reply_1MB", "1 MB reply", "rate", None),
    ("reply_10MB", "10 MB reply", "rate", ">= 100 MB/s, >= 4x floor"),
    ("reply_100MB", "100 MB reply", "rate", "works"),
    ("floats_1M", "1,000,000 floats", "lat", "<= 1 s"),
    ("threads8_one_module", "8 threads, one module", "calls", None),
    ("threads8_two_modules", "8 threads, two modules", "calls", None),
    ("respawn", "SIGKILL to next good reply", "lat", "<= 0.5 s"),
    ("reload", "save to new code's reply", "lat", "<= 1 s"),
    ("fifty_ready", "start to 50 modules ready", "lat", "<= 3 s"),
    ("worker_idle_rss_MB", "idle worker RSS", "mb", "<= 15 MB"),
    ("server_idle_rss_MB", "idle server RSS", "mb", None),
    ("rss_growth_100MB_reply_MB", "server RSS growth, 100 MB reply", "mb", "<= 300 MB"),
]


def show(kind: str, value) -> str:
    if value is None:
        return "-"
    if kind == "lat":
        p50 = value["p50"]
        text = f"{p50 * 1e3:.3f} ms" if p50 < 0.1 else f"{p50:.3f} s"
        p99 = value["p99"]
        return text + (f" (p99 {p99 * 1e3:.3f} ms)" if p99 < 0.1 else f" (max {p99:.3f} s)")
    if kind == "rate":
        return f"{value['median']:.0f} MB/s ({value['low']:.0f}-{value['high']:.0f})"
    if kind == "calls":
        return f"{value['rate']:.0f} calls/s"
    return f"{value:.1f} MB"


def ratio(kind: str, ours, floor) -> str:
    if ours is None or floor is None:
        return ""
    if kind == "lat":
        return f"x{ours['p50'] / floor['p50']:.2f}"
    if kind == "rate":
        return f"x{ours['median'] / floor['median']:.2f}"
    if kind == "calls":
        return f"x{ours['rate'] / floor['rate']:.2f}"
    return f"x{ours / floor:.2f}" if floor else ""


def table(results: dict) -> str:
    ours, floor = results["modserver"], results["floor"]
    lines = [f"{'figure':<34}{'modserver':<30}{'floor':<30}{'ratio':<8}target", "-" * 120]
    for key, label, kind, target in ROWS:
        lines.append(
            f"{label:<34}{show(kind, ours.get(key)):<30}{show(kind, floor.get(key)):<30}"
            f"{ratio(kind, ours.get(key), floor.get(key)):<8}{target or ''}"
        )
    codec = results["codec"]
    lines.append("")
    for name in ("quote_plus", "unquote_plus"):
        c = codec[name]
        lines.append(
            f"{name + ' (10 MB of floats)':<34}{c['fast']:.0f} MB/s{'':<20}"
            f"urllib {c['urllib']:.0f} MB/s{'':<13}x{c['fast'] / c['urllib']:.1f}"
            f"{'':<3}>= 10x urllib"
        )
    line = results["line_receiver"]
    lines.append(
        f"{'16 MB request line':<34}{line['chunked']:.0f} MB/s{'':<19}"
        f"LineReceiver {line['LineReceiver']:.0f} MB/s{'':<6}"
        f"x{line['chunked'] / line['LineReceiver']:.0f}"
    )
    m = results["machine"]
    lines.append("")
    lines.append(
        f"{m['cpus']} CPUs, {m['processor']}, Python {m['python']}, {m['system']}; "
        f"{m['seconds']:.0f} s"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    repeat = 150 if args.quick else 600
    runs = 3 if args.quick else 7
    started = time.perf_counter()
    results = {"modserver": {}, "floor": {}}

    respawn = {f"respawn{i}": "bench_module" for i in range(5)}
    server = ModServer(
        {"bench": "bench_module", "bench2": "bench_module", "reloadable": "reloadable", **respawn}
    )
    floor = Floor(["bench", "bench2"])
    try:
        wait_for(server.ready, what="the bench modules")
        results["modserver"].update(bench_memory(server, server.worker_pid("respawn0")))
        results["floor"].update(bench_memory(floor, None))
        for target, into in ((server, results["modserver"]), (floor, results["floor"])):
            into.update(bench_latencies(target, repeat))
            into.update(bench_replies(target, [1 * MB, 10 * MB, 100 * MB], runs))
            into.update(bench_concurrency(target, 2.0 if args.quick else 4.0))
        results["modserver"]["respawn"] = bench_respawn(server, 5)
        results["modserver"]["reload"] = bench_reload(server, 5 if args.quick else 9)
    finally:
        server.stop()
        floor.stop()
    results["modserver"]["fifty_ready"] = bench_fifty()
    results["codec"] = bench_codec()
    results["line_receiver"] = bench_line_receiver()
    results["machine"] = {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "system": platform.platform(terse=True),
        "seconds": time.perf_counter() - started,
    }
    print(json.dumps(results, indent=2) if args.json else table(results))


if __name__ == "__main__":
    main()
