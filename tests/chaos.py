"""A chaos run: random calls on several modules while workers are killed and files rewritten.

Used by tests/test_chaos.py (about 20 s) and benchmarks/soak.py (minutes).
Every call must get exactly one reply within its client timeout: the right
value, or a clear error (one of the refusals and failures PROTOCOL.md
names). A call that times out, a connection closed without a reply, or a
wrong value is *lost*.
"""

from __future__ import annotations

import collections
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from modserver.client import Client, ClientError, ServerError
from tests.helpers import MODULES_DIR, kill_hard

# Errors that are clear answers in a run where workers die and reload.
CLEAR = {"WorkerDied", "Unavailable", "Busy", "Timeout", "WorkerStopped", "LoadError"}
CLIENT_TIMEOUT = 5.0


def chaos_config(directory: Path, modules: int) -> dict:
    """Copy the chaos module once per module (each its own file to rewrite)."""
    source = (MODULES_DIR / "chaos_module.py").read_text()
    config = {}
    for index in range(modules):
        name = f"chaos{index}"
        (directory / f"{name}.py").write_text(source)
        config[name] = {"module": name, "entry": "Chaos", "timeout": 5}
    return config


@dataclass
class Tally:
    """What the clients saw."""

    calls: int = 0
    ok: int = 0
    errors: collections.Counter = field(default_factory=collections.Counter)
    lost: list = field(default_factory=list)
    kills: int = 0
    rewrites: int = 0
    slowest: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, outcome: str, seconds: float, detail: str = "") -> None:
        with self.lock:
            self.calls += 1
            self.slowest = max(self.slowest, seconds)
            if outcome == "ok":
                self.ok += 1
            elif outcome == "lost":
                self.lost.append(detail)
            else:
                self.errors[outcome] += 1

    def summary(self) -> str:
        errors = ", ".join(f"{kind} {count}" for kind, count in sorted(self.errors.items()))
        return (
            f"{self.calls} calls: {self.ok} ok, {sum(self.errors.values())} clear errors "
            f"({errors or 'none'}), {len(self.lost)} lost; {self.kills} workers killed, "
            f"{self.rewrites} files rewritten; slowest reply {self.slowest:.2f} s"
        )


class ChaosRun:
    """Clients, a killer and a rewriter against one server, for ``seconds``."""

    def __init__(
        self,
        server,
        directory: Path,
        modules: list[str],
        seed: int = 1,
        kill_every: tuple[float, float] = (0.3, 1.5),
    ) -> None:
        self.server = server
        self.kill_every = kill_every  # seconds between two kills, at random in this range
        self.directory = directory
        self.modules = modules
        self.tally = Tally()
        self.pids: set[int] = set()
        self._stop = threading.Event()
        self._random = random.Random(seed)

    def run(self, seconds: float, clients: int = 6) -> Tally:
        threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]
        threads += [threading.Thread(target=self._killer), threading.Thread(target=self._rewriter)]
        for thread in threads:
            thread.start()
        self._stop.wait(seconds)
        self._stop.set()
        for thread in threads:
            thread.join(CLIENT_TIMEOUT + 5)
        return self.tally

    def _client(self, index: int) -> None:
        lab = Client("127.0.0.1", self.server.port, timeout=CLIENT_TIMEOUT)
        chooser = random.Random(index)
        while not self._stop.is_set():
            module = chooser.choice(self.modules)
            value = chooser.choice([index, "é" * chooser.randint(0, 2000), [1.5, None, True]])
            if chooser.random() < 0.3:
                function, args = "slow", (value, chooser.uniform(0.01, 0.3))
            else:
                function, args = "echo", (value,)
            started = time.monotonic()
            try:
                result = lab.com(module, function, *args)
            except ServerError as exc:
                seconds = time.monotonic() - started
                outcome = exc.kind if exc.kind in CLEAR else "lost"
                self.tally.record(outcome, seconds, exc.reason)
                self._stop.wait(0.1)  # as a script would, before trying again
                continue
            except ClientError as exc:
                self.tally.record("lost", time.monotonic() - started, str(exc))
                continue
            seconds = time.monotonic() - started
            if result == value:
                self.tally.record("ok", seconds)
            else:
                self.tally.record("lost", seconds, f"{function} returned {result!r}")

    def _killer(self) -> None:
        while not self._stop.wait(self._random.uniform(*self.kill_every)):
            try:
                status = self.server.status()
            except (OSError, AssertionError, ValueError):
                continue
            pids = [m["pid"] for m in status["modules"].values() if m["pid"]]
            self.pids.update(pids)
            if pids:
                try:
                    kill_hard(self._random.choice(pids))
                    self.tally.kills += 1
                except ProcessLookupError:
                    pass

    def _rewriter(self) -> None:
        edit = 0
        while not self._stop.wait(self._random.uniform(2.0, 4.0)):
            edit += 1
            module = self._random.choice(self.modules)
            path = self.directory / f"{module}.py"
            text = path.read_text()
            fresh = path.with_suffix(".tmp")
            fresh.write_text(
                text.replace(f"EDIT = {edit - 1}", f"EDIT = {edit}", 1)
                if f"EDIT = {edit - 1}" in text
                else text + f"\n# edit {edit}\n"
            )
            os.replace(fresh, path)  # whole, as an editor saves
            self.tally.rewrites += 1
