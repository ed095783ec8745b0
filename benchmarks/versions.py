"""The small keep-alive call, this checkout against another revision, alternately.

    python benchmarks/versions.py 21b52f1            # 7 rounds
    python benchmarks/versions.py 21b52f1 --rounds 3 --calls 1000

Each round starts ``twistd -n modserver`` from each checkout in turn (the
order swaps every round, so drift on a shared machine falls on both), at
the default log level (an access line per call, as an operator runs it),
and times a fresh-connection hello and then ``--calls`` keep-alive
``echo(1)`` calls on that connection.  The other revision is exported with
``git archive`` into a temporary directory and put first on PYTHONPATH, so
its server and worker code run (checked before the first round: each
server's ``modserver`` package must come from its own tree); the bench
module is this checkout's.  ``--log-level warn`` leaves the access lines
out.  ``--interleave 100`` runs both servers in each round at once and
alternates blocks of 100 calls between them: on a loaded machine, where
one server's round can meet twice the other's load, both then meet the
same.
Printed: each round's p50 per checkout, then the median of the rounds and
their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from run import HERE, Connection, ModServer, wait_for


def export(revision: str, into: Path) -> Path:
    """``revision`` of this repository as plain files under ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(HERE.parent), "archive", "--format=tar", revision],
        check=True,
        capture_output=True,
    ).stdout
    target = into / revision
    target.mkdir()
    with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def imported_from(source: Path | None) -> Path:
    """Where a server started with ``source`` first on PYTHONPATH (None: this
    checkout's environment) imports the ``modserver`` package from."""
    env = None if source is None else {**os.environ, "PYTHONPATH": str(source)}
    with tempfile.TemporaryDirectory() as cwd:  # twistd runs in a directory of its own
        found = subprocess.run(
            [sys.executable, "-c", "import modserver; print(modserver.__file__)"],
            env=env,
            cwd=cwd,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    return Path(found.strip()).resolve().parent.parent


def check_sources(other: Path) -> None:
    """Each server must run its own checkout's code, or the comparison means nothing."""
    for source, expected in ((other, other), (None, HERE.parent)):
        found = imported_from(source)
        if found != expected.resolve():
            raise SystemExit(f"a server meant to run {expected} would import modserver from {found}")


def keep_alive_round(source: Path | None, calls: int, log_level: str) -> dict:
    server = ModServer({"bench": "bench_module"}, log_level=log_level, source=source)
    try:
        wait_for(server.ready, what="the bench module")
        conn = Connection(server.port)
        started = time.perf_counter()
        conn.send({"name": "bench"})
        conn.receive()
        hello = time.perf_counter() - started
        cpu = cpu_seconds(server.pid)
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            conn.send({"function": "echo", "args": [1], "keep_alive": True})
            assert conn.receive() == 1
            times.append(time.perf_counter() - started)
        cpu = (cpu_seconds(server.pid) - cpu) / calls
        conn.close()
        return {"hello": hello, "p50": statistics.median(times), "cpu": cpu}
    finally:
        server.stop()


ECHO = {"function": "echo", "args": [1], "keep_alive": True}


def interleaved_round(sources: dict, calls: int, log_level: str, block: int) -> dict:
    """Both servers up at once; ``block`` calls on one connection, then on the
    other, and so on: a load that comes and goes falls on both alike."""
    servers, conns, hellos = {}, {}, {}
    try:
        for name, source in sources.items():
            servers[name] = ModServer({"bench": "bench_module"}, log_level=log_level, source=source)
        for name, server in servers.items():
            wait_for(server.ready, what="the bench module")
            conns[name] = Connection(server.port)
            started = time.perf_counter()
            conns[name].send({"name": "bench"})
            conns[name].receive()
            hellos[name] = time.perf_counter() - started
        times = {name: [] for name in servers}
        cpu = dict.fromkeys(servers, 0.0)
        for _ in range(0, calls, block):
            for name, conn in conns.items():
                before = cpu_seconds(servers[name].pid)
                for _ in range(block):
                    started = time.perf_counter()
                    conn.send(ECHO)
                    assert conn.receive() == 1
                    times[name].append(time.perf_counter() - started)
                cpu[name] += cpu_seconds(servers[name].pid) - before
        return {
            name: {
                "hello": hellos[name],
                "p50": statistics.median(times[name]),
                "cpu": cpu[name] / len(times[name]),
            }
            for name in servers
        }
    finally:
        for conn in conns.values():
            conn.close()
        for server in servers.values():
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revision", help="the other revision (a commit, tag or branch)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--log-level", default="info", help="the servers' --log-level")
    parser.add_argument(
        "--interleave",
        type=int,
        default=0,
        metavar="N",
        help="run both servers at once, alternating blocks of N calls (default: one "
        "server after the other)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        other = export(args.revision, Path(tmp))
        check_sources(other)
        names = {args.revision: other, "this checkout": None}
        p50s: dict[str, list[float]] = {name: [] for name in names}
        cpus: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(args.rounds):
            order = list(names) if round_ % 2 == 0 else list(reversed(names))
            if args.interleave:
                sources = {name: names[name] for name in order}
                both = interleaved_round(sources, args.calls, args.log_level, args.interleave)
            for name in order:
                if args.interleave:
                    result = both[name]
                else:
                    result = keep_alive_round(names[name], args.calls, args.log_level)
                p50s[name].append(result["p50"])
                cpus[name].append(result["cpu"])
                print(
                    f"round {round_ + 1}  {name:<16} keep-alive p50 {result['p50'] * 1e6:7.0f} µs"
                    f"  server CPU {result['cpu'] * 1e6:5.0f} µs a call"
                    f"  (hello {result['hello'] * 1e3:.1f} ms)",
                    flush=True,
                )
        medians = {name: statistics.median(values) for name, values in p50s.items()}
        print()
        for name, value in medians.items():
            print(
                f"median of {args.rounds} rounds  {name:<16} {value * 1e6:7.0f} µs"
                f"  server CPU {statistics.median(cpus[name]) * 1e6:5.0f} µs a call"
            )
        print(f"ratio this/other: {medians['this checkout'] / medians[args.revision]:.2f}")


if __name__ == "__main__":
    main()
