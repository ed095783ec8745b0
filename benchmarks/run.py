"""Benchmarks: start a real modserver with a bench module and time it end to end.

    python benchmarks/run.py            # a table
    python benchmarks/run.py --json     # machine-readable

Every figure is a median over repeated runs, with the spread shown, measured
by a client that decodes each reply as a real client must.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from modserver import wire  # noqa: E402


def twistd() -> list[str]:
    script = Path(sys.executable).parent / "twistd"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class Server:
    """``twistd -n modserver`` serving the bench module on an ephemeral port."""

    def __init__(self) -> None:
        self.dir = tempfile.TemporaryDirectory()
        root = self.root = Path(self.dir.name)
        (root / "bench_module.py").write_text((HERE / "bench_module.py").read_text())
        config = {
            "bench": ["bench_module", "Bench", None],
            "bench2": ["bench_module", "Bench", None],
        }
        (root / "server.config").write_text(json.dumps(config))
        self.log = root / "server.log"
        self.process = subprocess.Popen(
            [
                *twistd(),
                "-n",
                "--pidfile=",
                "modserver",
                "--config",
                str(root / "server.config"),
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--log-level",
                "warn",
            ],
            cwd=root,
            stdout=open(self.log, "wb"),
            stderr=subprocess.STDOUT,
        )
        self.port = self._wait_port()
        self._wait_ready()

    def _wait_port(self) -> int:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            match = re.search(r"listening on 127\.0\.0\.1:(\d+)", self.log.read_text())
            if match:
                return int(match.group(1))
            time.sleep(0.02)
        raise RuntimeError("server did not start:\n" + self.log.read_text())

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status = request(self.port, {"name": "_status"})
            if all(m["state"] == "ready" for m in status["modules"].values()):
                return
            time.sleep(0.02)
        raise RuntimeError("modules did not become ready")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(20)
        self.dir.cleanup()


class Client:
    """A blocking client that decodes every reply fully."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = bytearray()

    def send(self, message: dict) -> None:
        self.sock.sendall(wire.quote_plus(json.dumps(message).encode()) + b"\n")

    def receive(self):
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 1]
                reply = json.loads(wire.unquote_plus(line))
                if reply["error"]:
                    raise RuntimeError(reply["response"])
                return reply["response"]
            chunk = self.sock.recv(4 * 1024 * 1024)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def request(port: int, hello: dict):
    client = Client(port)
    try:
        client.send(hello)
        return client.receive()
    finally:
        client.close()


def com(port: int, module: str, function: str, *args):
    """A new-connection call, as the original clients make every call."""
    client = Client(port)
    try:
        client.send({"name": module})
        client.receive()
        client.send({"function": function, "args": list(args), "keep_alive": False})
        return client.receive()
    finally:
        client.close()


def timings(fn, repeat: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return samples


def summary(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "min": ordered[0],
        "n": len(ordered),
    }


def bench_latency(port: int, repeat: int) -> dict:
    results = {
        "ping": summary(timings(lambda: request(port, {"name": "_ping"}), repeat)),
        "com_new_connection": summary(timings(lambda: com(port, "bench", "noop"), repeat)),
    }
    client = Client(port)
    client.send({"name": "bench"})
    client.receive()

    def keep_alive_call():
        client.send({"function": "noop", "args": [], "keep_alive": True})
        client.receive()

    results["com_keep_alive"] = summary(timings(keep_alive_call, repeat))
    client.close()
    return results


def bench_bulk(port: int, size: int, repeat: int) -> dict:
    samples = timings(lambda: com(port, "bench", "blob", size), repeat, warmup=1)
    result = summary(samples)
    result["mb_per_s"] = size / result["p50"] / 1e6
    result["mb_per_s_spread"] = [size / max(samples) / 1e6, size / min(samples) / 1e6]
    return result


def bench_line_receiver(size: int = 16 * 1024 * 1024, piece: int = 65536) -> dict:
    """A long request line arriving in socket-sized pieces: ours against LineReceiver."""
    from twisted.internet.testing import StringTransport
    from twisted.protocols.basic import LineReceiver

    from modserver.lines import ChunkedLineReceiver

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
        samples = []
        for _ in range(3):
            receiver = cls()
            receiver.makeConnection(StringTransport())
            started = time.perf_counter()
            for p in pieces:
                receiver.dataReceived(p)
            samples.append(time.perf_counter() - started)
            assert receiver.got == size
        result[name] = size / statistics.median(samples) / 1e6
    result["ratio"] = result["chunked"] / result["LineReceiver"]
    return result


def bench_respawn(server: Server, repeat: int) -> dict:
    """SIGKILL a worker, then time until a new-connection call succeeds again."""
    samples = []
    for _ in range(repeat):
        pid = com(server.port, "bench2", "pid")
        started = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        while True:
            try:
                if com(server.port, "bench2", "pid") != pid:
                    break
            except RuntimeError:
                pass  # the call in flight when the worker died
        samples.append(time.perf_counter() - started)
        time.sleep(11)  # stay up past the backoff's stable time: each kill is a "first" death
    return summary(samples)


def bench_reload(server: Server, repeat: int) -> dict:
    """Save a changed module file, then time until a call answers from the new code."""
    path = server.root / "bench_module.py"
    samples = []
    for edit in range(1, repeat + 1):
        text = re.sub(r"VERSION = \d+", f"VERSION = {edit}", path.read_text())
        started = time.perf_counter()
        path.write_text(text)
        while com(server.port, "bench", "version") != edit:
            pass
        samples.append(time.perf_counter() - started)
    return summary(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--repeat", type=int, default=300, help="samples per latency figure")
    parser.add_argument(
        "--lifecycle",
        action="store_true",
        help="also time worker respawn and module reload (slow: ~1 min)",
    )
    args = parser.parse_args()
    server = Server()
    try:
        results = bench_latency(server.port, args.repeat)
        results["reply_10MB"] = bench_bulk(server.port, 10_000_000, 9)
        if args.lifecycle:
            results["respawn_after_sigkill"] = bench_respawn(server, 5)
            results["reload_after_save"] = bench_reload(server, 9)
    finally:
        server.stop()
    results["request_line_16MB"] = bench_line_receiver()
    results["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'figure':<24}{'p50':>12}{'p99':>12}{'min':>12}")
    for name in ("ping", "com_new_connection", "com_keep_alive"):
        r = results[name]
        print(
            f"{name:<24}{r['p50'] * 1e3:>10.3f}ms{r['p99'] * 1e3:>10.3f}ms{r['min'] * 1e3:>10.3f}ms"
        )
    r = results["reply_10MB"]
    low, high = r["mb_per_s_spread"]
    print(
        f"{'reply_10MB':<24}{r['mb_per_s']:>9.0f}MB/s  (range {low:.0f}-{high:.0f} MB/s"
        f" over {r['n']} runs)"
    )
    for name in ("respawn_after_sigkill", "reload_after_save"):
        if name in results:
            r = results[name]
            print(
                f"{name:<24}{r['p50'] * 1e3:>10.1f}ms{r['p99'] * 1e3:>10.1f}ms"
                f"{r['min'] * 1e3:>10.1f}ms  (n={r['n']})"
            )
    r = results["request_line_16MB"]
    print(
        f"{'request_line_16MB':<24}{r['chunked']:>9.0f}MB/s  (Twisted's LineReceiver "
        f"{r['LineReceiver']:.0f} MB/s: x{r['ratio']:.1f})"
    )


if __name__ == "__main__":
    main()
