"""Test helpers: a real server in a subprocess, and raw wire clients.

Clients speak bytes on a plain socket, exactly as existing clients do, so
the tests see what a MATLAB or Python client would see.  Every socket has a
timeout and every wait has a deadline: a broken server fails a test, it
never hangs the run.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from modserver.worker import platforms
from tests import wine

MODULES_DIR = Path(__file__).parent / "modules"
SOCKET_TIMEOUT = 15.0 * wine.SLOWER

ON_WINDOWS = os.name == "nt"
# Ending a process at once: SIGKILL; on Windows os.kill is TerminateProcess.
HARD_KILL = signal.SIGTERM if ON_WINDOWS else signal.SIGKILL
# How a worker ended that way is described.
HARD_KILL_EXIT = "exit code 15" if ON_WINDOWS else "signal 9 (SIGKILL)"
# Asking the server to stop: SIGTERM; on Windows, where twistd stops on
# SIGBREAK, Ctrl-Break to its process group.
GRACEFUL_STOP = signal.CTRL_BREAK_EVENT if ON_WINDOWS else signal.SIGTERM


def stopped_gracefully(code: int, sig: int = GRACEFUL_STOP) -> bool:
    """Whether ``code`` is how a server ends after a graceful stop by ``sig``.

    twistd exits 0, or re-raises the signal it stopped on: on Windows
    ``os.kill`` then ends it with the signal's number as its exit code
    (SIGBREAK for Ctrl-Break, SIGINT for Ctrl-C).
    """
    if ON_WINDOWS:
        return code in (0, signal.SIGBREAK, signal.SIGINT)
    return code in (0, -sig)


def twistd_command() -> list[str]:
    """How to run twistd with this interpreter's environment: its ``twistd``
    script, as users run it (``Scripts\\twistd.exe`` on Windows)."""
    script = Path(sysconfig.get_path("scripts")) / ("twistd.exe" if ON_WINDOWS else "twistd")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; run()"]


# twistd in the foreground, without a pid file (on Windows it writes none and
# has no --pidfile option).
TWISTD_FOREGROUND = ["-n"] if ON_WINDOWS else ["-n", "--pidfile="]


def modserver_command() -> list[str]:
    """``twistd -n modserver`` in the foreground, without a pid file."""
    return [*twistd_command(), *TWISTD_FOREGROUND, "modserver"]


def wait_for(condition, timeout: float = 15.0, interval: float = 0.02, what: str = "condition"):
    """Poll ``condition()`` until it returns a true value; fail after ``timeout``
    (longer under Wine: ``wine.SLOWER``)."""
    timeout *= wine.SLOWER
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def encode(obj, plain: bool = False) -> bytes:
    text = json.dumps(obj)
    return (text if plain else urllib.parse.quote_plus(text)).encode() + b"\n"


def decode(line: bytes, plain: bool = False):
    text = line.decode() if plain else urllib.parse.unquote_plus(line.decode())
    return json.loads(text)


class Connection:
    """One raw client connection; ``source``: the local address to connect from
    (on Linux every 127.x.y.z is this computer, so 127.0.0.2 is "another client")."""

    def __init__(self, port: int, host: str = "127.0.0.1", source: str | None = None) -> None:
        self.sock = socket.create_connection(
            (host, port), timeout=SOCKET_TIMEOUT, source_address=(source, 0) if source else None
        )
        self._buffer = b""

    def send(self, obj, plain: bool = False) -> None:
        self.sock.sendall(encode(obj, plain))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_line(self) -> bytes:
        while b"\n" not in self._buffer:
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError(f"connection closed; partial data {self._buffer[:200]!r}")
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def reply(self, plain: bool = False) -> dict:
        return decode(self.read_line(), plain)

    def is_closed(self, timeout: float = SOCKET_TIMEOUT) -> bool:
        """True once the server has closed the connection (waits up to ``timeout``)."""
        if self._buffer:
            return False
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(SOCKET_TIMEOUT)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def hello(port: int, name, plain: bool = False, source: str | None = None) -> dict:
    """Send a hello that the server answers and then closes."""
    with Connection(port, source=source) as conn:
        conn.send({"name": name}, plain)
        reply = conn.reply(plain)
        assert conn.is_closed(), "the server did not close the connection after its reply"
        return reply


def call(
    port: int, module: str, function, *args, plain: bool = False, source=None, **fields
) -> dict:
    """One hello + request, the way the original client's ``com`` does it."""
    with Connection(port, source=source) as conn:
        conn.send({"name": module}, plain)
        ack = conn.reply(plain)
        if ack["error"]:
            return ack
        assert ack["response"] == "ack", ack
        request = {"function": function, "args": list(args), "keep_alive": False}
        request.update(fields)
        conn.send(request, plain)
        return conn.reply(plain)


def response(reply: dict):
    """The response of a successful reply (an error reply fails the test)."""
    assert reply["error"] is False, f"{reply['response']}\n{reply['traceback']}"
    assert reply["traceback"] == ""
    return reply["response"]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class ServerProcess:
    """``twistd -n modserver`` in a subprocess with its own config and modules."""

    def __init__(self, directory: Path, config: dict | None, args: tuple[str, ...] = ()) -> None:
        self.directory = directory
        self.config_path = directory / "server.config"
        self.log_path = directory / "server.log"
        self.args = args
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        for module in MODULES_DIR.glob("*.py"):
            shutil.copy(module, directory / module.name)
        if config is not None:
            self.write_config(config)

    def write_config(self, config: dict) -> None:
        self.config_path.write_text(json.dumps(config, indent=2))

    def start(
        self,
        wait_ready: bool = True,
        command: list[str] | None = None,
        cwd: Path | None = None,
        port: int | None = None,
    ) -> ServerProcess:
        """Run the server: twistd on our config, or ``command`` if given.

        ``port``: where the command was told to listen; by default the
        server listens on a free port, found in its log.
        """
        if command is None:
            command = [
                *modserver_command(),
                "--config",
                str(self.config_path),
                "--listen",
                "tcp:0:interface=127.0.0.1",
                *self.args,
            ]
        self._log = open(self.log_path, "ab")
        self.cwd = cwd or self.directory
        self.process = wine.popen(
            command,
            cwd=self.cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Windows: a group of its own, so that Ctrl-Break reaches only the server.
            # (Not under Wine, where Ctrl-Break is a SIGINT to the server alone
            # and a new group would ignore it as Windows ignores Ctrl-C there.)
            creationflags=0
            if wine.UNDER_WINE
            else getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0),
            # A test run started in the background (`cmd &`) ignores SIGINT, and
            # so would the server: give it Ctrl-C as a terminal would.
            preexec_fn=None if ON_WINDOWS else _default_sigint,
        )
        try:
            try:
                if port is None:
                    found = wait_for(self._listening, what="the server to listen")
                    self.port = int(found.group(1))
                else:
                    wait_for(
                        lambda: f"listening on 127.0.0.1:{port}" in self.log(),
                        what="the server to listen",
                    )
                    self.port = port
            except AssertionError as exc:
                if "exited early" in str(exc):
                    raise
                raise AssertionError(f"{exc}; its log so far:\n{self.log()}") from None
            if wait_ready:
                self.wait_settled()
        except BaseException:
            self.stop(HARD_KILL)  # no `with` block will run to stop it
            raise
        return self

    def _listening(self):
        if self.process.poll() is not None:
            raise AssertionError(f"the server exited early:\n{self.log()}")
        return re.search(r"listening on 127\.0\.0\.1:(\d+)", self.log())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def status(self, module: str | None = None) -> dict:
        name = "_status" if module is None else f"_status.{module}"
        return response(hello(self.port, name, plain=True))

    def module_status(self, module: str) -> dict:
        return self.status(module)["modules"][module]

    def wait_settled(self, timeout: float = 20.0) -> dict:
        """Wait until no module is starting or stopping."""

        def settled():
            status = self.status()
            states = {m["state"] for m in status["modules"].values()}
            return status if states <= {"ready", "failed", "busy", "backoff"} else None

        return wait_for(settled, timeout, what="every module to be ready or failed")

    def wait_state(self, module: str, state: str, timeout: float = 20.0) -> dict:
        return wait_for(
            lambda: (s := self.module_status(module))["state"] == state and s,
            timeout,
            what=f"{module} to be {state}",
        )

    def stop(self, sig: int = GRACEFUL_STOP, timeout: float = 20.0) -> int:
        timeout *= wine.SLOWER
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        if not (sig == GRACEFUL_STOP and wine.UNDER_WINE and wine.ctrl_break(str(self.cwd))):
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            log = self.log()
            raise AssertionError(f"the server did not stop within {timeout} s:\n{log}") from None
        finally:
            self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stop()


def _can_bind(address: str) -> bool:
    try:
        with socket.socket() as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True


# Another client on this computer: Linux serves all of 127.0.0.0/8, so a
# socket bound to 127.0.0.2 is "someone else" to a server that admits only
# 127.0.0.1.  macOS (and a Windows without it) has only 127.0.0.1.
SECOND_LOOPBACK = "127.0.0.2"
needs_second_loopback = pytest.mark.skipif(
    not _can_bind(SECOND_LOOPBACK),
    reason="this system cannot bind 127.0.0.2, which plays a second client's address",
)


THIRD_LOOPBACK = "127.0.0.3"
needs_two_more_loopbacks = pytest.mark.skipif(
    not (_can_bind(SECOND_LOOPBACK) and _can_bind(THIRD_LOOPBACK)),
    reason="this system cannot bind 127.0.0.2 and 127.0.0.3, which play two other clients",
)


def timed(fn, *args, **kwargs):
    """``(fn(*args, **kwargs), the seconds it took)``."""
    started = time.monotonic()
    result = fn(*args, **kwargs)
    return result, time.monotonic() - started


def free_port() -> int:
    """A TCP port nothing listens on just now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


pid_alive = platforms.process_exists


def kill_hard(pid: int) -> None:
    """End process ``pid`` at once, as a crash or Task Manager would."""
    os.kill(pid, HARD_KILL)


def needs_proc(what: str) -> None:
    """Skip where there is no Linux /proc to read ``what`` from."""
    # (Wine shows Linux's /proc to Windows programs, but not their own processes.)
    if not (sys.platform.startswith("linux") and os.path.exists("/proc/self/status")):
        pytest.skip(f"reading {what} needs Linux's /proc")


class Relay:
    """A TCP relay to ``port`` that keeps every byte it passes, both ways.

    It shows what an eavesdropper on the network would see of a session.
    """

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.seen = bytearray()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ)
        peers: dict[socket.socket, socket.socket] = {}
        while not self._stop.is_set():
            for key, _ in selector.select(0.05):
                sock = key.fileobj
                if sock is self._listener:
                    client, _ = sock.accept()
                    server = socket.create_connection(("127.0.0.1", self.upstream))
                    peers[client], peers[server] = server, client
                    selector.register(client, selectors.EVENT_READ)
                    selector.register(server, selectors.EVENT_READ)
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                other = peers[sock]
                if data:
                    self.seen += data
                    other.sendall(data)
                    continue
                for each in (sock, other):
                    if each in peers:
                        selector.unregister(each)
                        peers.pop(each).close()
        for each in list(peers):
            each.close()
        self._listener.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
