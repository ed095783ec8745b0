"""How soon a server started on one lab PC is seen from another, and how soon it leaves.

    python benchmarks/discovery.py             # 5 runs (about a minute); needs root
    python benchmarks/discovery.py --runs 10 --json

Two "PCs" are network namespaces joined by a veth pair (as in
tests/test_discovery_netns.py).  Each run starts ``twistd modserver`` in
namespace A and measures, from the moment it is started:

- ``seen``: a browser already watching in namespace B hears the
  announcement (python-zeroconf's ServiceBrowser, as the status page and
  Lab use);
- ``discover``: ``modserver-client discover``, run in namespace B right
  after the start and again until it lists the server, prints it;

and, from the moment the server is sent SIGTERM:

- ``gone``: the watching browser hears the goodbye;
- ``exit``: the server process has exited.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from modserver.lab import discovery  # noqa: E402
from tests.netns import LabNetwork  # noqa: E402

NAME = "bench-pc"
WATCHER = """
import json, sys, time
from modserver.lab import discovery
def news(name, gone):
    print(json.dumps({"at": time.time(), "name": name, "gone": gone}), flush=True)
browser = discovery.Browser(on_change=news)
print(json.dumps({"ready": True}), flush=True)
sys.stdin.read()
browser.close()
"""


def twistd() -> list[str]:
    script = Path(sys.executable).parent / "twistd"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def modserver_client() -> list[str]:
    script = Path(sys.executable).parent / "modserver-client"
    return [str(script)] if script.exists() else [sys.executable, "-m", "modserver.client"]


class Watcher:
    """A browser in namespace B; ``wait(gone)`` returns when news of our server came."""

    def __init__(self, lab: LabNetwork, host: str) -> None:
        self.process = subprocess.Popen(
            lab.command(host, sys.executable, "-c", WATCHER),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.events: list[dict] = []
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for(lambda e: e.get("ready"))

    def _read(self) -> None:
        for line in self.process.stdout:
            with self.changed:
                self.events.append(json.loads(line))
                self.changed.notify_all()

    def wait_for(self, match, timeout: float = 60.0) -> dict:
        with self.changed:
            found = self.changed.wait_for(
                lambda: next((e for e in self.events if match(e)), None), timeout
            )
        if not found:
            raise RuntimeError("the watching browser heard nothing in time")
        self.events.remove(found)
        return found

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(30)


def ours(gone: bool):
    return lambda e: e.get("name", "").startswith(f"{NAME} on ") and e["gone"] is gone


def discover_until_listed(lab: LabNetwork, host: str, deadline: float) -> tuple[float, int]:
    """Run discover until it lists the server: when it printed it, and how many runs."""
    runs = 0
    while time.time() < deadline:
        runs += 1
        result = lab.run(host, *modserver_client(), "--json", "discover")
        listed = [s["instance"] for s in json.loads(result.stdout or "[]")]
        if any(instance.startswith(f"{NAME} on ") for instance in listed):
            return time.time(), runs
    raise RuntimeError("discover never listed the server")


def one_run(lab: LabNetwork, watcher: Watcher, directory: Path) -> dict:
    a, b = lab.hosts
    command = lab.command(
        a,
        *twistd(),
        "-n",
        "--pidfile=",
        "modserver",
        "--name",
        NAME,
        "--listen",
        "tcp:36577",
    )
    log = open(directory / "server.log", "ab")
    started = time.time()
    server = subprocess.Popen(command, cwd=directory, stdout=log, stderr=subprocess.STDOUT)
    try:
        listed, runs = discover_until_listed(lab, b, started + 60)
        seen = watcher.wait_for(ours(gone=False))["at"]
        stopped = time.time()
        server.send_signal(signal.SIGTERM)
        gone = watcher.wait_for(ours(gone=True))["at"]
        server.wait(30)
        exited = time.time()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
        log.close()
    return {
        "seen": seen - started,
        "discover": listed - started,
        "discover_runs": runs,
        "gone": gone - stopped,
        "exit": exited - stopped,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    options = parser.parse_args()
    reason = LabNetwork.unavailable()
    if reason:
        sys.exit(f"benchmarks/discovery.py: {reason}")
    lab = LabNetwork().create()
    directory = Path(tempfile.mkdtemp(prefix="modserver-discovery-"))
    try:
        watcher = Watcher(lab, lab.hosts[1])
        try:
            runs = [one_run(lab, watcher, directory) for _ in range(options.runs)]
        finally:
            watcher.close()
    finally:
        lab.close()
        shutil.rmtree(directory, ignore_errors=True)
    if options.json:
        print(json.dumps(runs))
        return 0
    print(f"{options.runs} runs; discover listens {discovery.DEFAULT_WAIT:g} s each time")
    print(f"{'':44} {'median':>8} {'min':>8} {'max':>8}")
    rows = [
        ("start -> seen by a watching browser", "seen"),
        ("start -> listed by discover", "discover"),
        ("SIGTERM -> goodbye heard by the browser", "gone"),
        ("SIGTERM -> server exited", "exit"),
    ]
    for label, key in rows:
        values = [run[key] for run in runs]
        print(
            f"{label:44} {statistics.median(values):7.2f}s {min(values):7.2f}s {max(values):7.2f}s"
        )
    print("discover runs until listed: " + ", ".join(str(r["discover_runs"]) for r in runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
