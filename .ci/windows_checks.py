"""The server under Wine, called from Linux: what a Windows lab PC would do.

Run by .ci/windows (standard library only, on Linux's Python): starts
``Scripts\\twistd.exe -n modserver`` under Wine with a module that reports on
its own process, then checks, over 127.0.0.1 as any client would: calls and
errors; that every worker is in a Job Object; a call past its timeout, a
``taskkill /F`` and a Linux ``kill -9`` of a worker (each restarted, and what
the worker started ended with it); a native crash described by its exit
code; module and config reloads; a graceful stop (``__exit__`` ran, nothing
left); a hard kill of the server (every worker and what it started end:
the Job Objects are killed on close); and, with ``--venv``, that a server
run from a virtual environment gives its workers that environment.

Every wait has a bound; a failed check prints the server's log and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

MODULE = '''\
import ctypes
import os
import subprocess
import sys
import time
from ctypes import wintypes

VERSION = 1
MARK = os.environ.get("CHECK_MARK", "")
kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
kernel32.GetCurrentProcess.restype = wintypes.HANDLE
kernel32.IsProcessInJob.argtypes = [wintypes.HANDLE, wintypes.HANDLE, ctypes.POINTER(wintypes.BOOL)]
kernel32.OpenProcess.restype = wintypes.HANDLE
kernel32.OpenProcess.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.DWORD]
kernel32.GetExitCodeProcess.argtypes = [wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD)]
kernel32.CloseHandle.argtypes = [wintypes.HANDLE]


class Check:
    def __init__(self):
        self.name = os.environ.get("CHECK_NAME", "wcheck")

    def version(self):
        return VERSION

    def pid(self):
        return os.getpid()

    def prefix(self):
        return sys.prefix

    def modserver_from(self):
        """Where the server's modserver package is, as the worker's sys.path has it."""
        import importlib.util

        return importlib.util.find_spec("modserver").origin

    def in_job(self):
        inside = wintypes.BOOL()
        if not kernel32.IsProcessInJob(kernel32.GetCurrentProcess(), None, ctypes.byref(inside)):
            raise ctypes.WinError(ctypes.get_last_error())
        return bool(inside.value)

    def spawn_child(self):
        """A long-lived child, as vendor tools start them."""
        for attempt in range(3):
            try:
                child = subprocess.Popen(
                    [sys.executable, "-c", "import time; time.sleep(300)  # " + MARK],
                    creationflags=subprocess.CREATE_NO_WINDOW,
                )
                return child.pid
            except OSError as exc:
                # Wine-only: now and then Wine 8 fails to start a process
                # (ERROR_INTERNAL_ERROR, its child died starting up); try again.
                if getattr(exc, "winerror", None) != 1359 or attempt == 2:
                    raise

    def alive(self, pid):
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        try:
            code = wintypes.DWORD()
            kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
            return code.value == 259  # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)

    def hang(self):
        while True:
            time.sleep(1)

    def crash(self):
        import faulthandler

        faulthandler._read_null()  # an access violation in C code

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        with open(os.path.join(os.path.dirname(__file__), "exited-" + self.name), "w") as out:
            out.write(str(os.getpid()))
'''


class Failed(Exception):
    pass


def windows_path(path: Path) -> str:
    return "Z:" + str(path.resolve()).replace("/", "\\")


def wine_processes():
    """``(unix pid, command line)`` of every process (Wine shows Windows command lines)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            yield int(entry), raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()


def wait_for(condition, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Failed(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def exchange(port: int, *messages, timeout: float = 30.0):
    """Plain-JSON lines to the server; the replies, one per message."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        replies, buffer = [], b""
        for message in messages:
            sock.sendall(json.dumps(message).encode() + b"\n")
            while b"\n" not in buffer:
                data = sock.recv(1 << 16)
                if not data:
                    raise Failed(f"connection closed before a reply to {message}")
                buffer += data
            line, _, buffer = buffer.partition(b"\n")
            replies.append(json.loads(line))
            if replies[-1]["error"]:
                break  # the server closes the connection after an error
        return replies


class Server:
    def __init__(self, twistd: str, work: Path, port: int, mark: str, before=()) -> None:
        self.twistd, self.work, self.port, self.mark = twistd, work, port, mark
        self.before = list(before)  # arguments before twistd's own
        self.output: list[str] = []
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = dict(os.environ, CHECK_MARK=self.mark)
        # Wine-only: pipes for the standard handles (Wine 8 takes no regular file).
        self.process = subprocess.Popen(
            [
                "wine",
                self.twistd,
                *self.before,
                "-n",
                "modserver",
                "--config",
                windows_path(self.work / "server.config"),
                "--port",
                str(self.port),
            ],
            cwd=self.work,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()
        wait_for(self._listening, "the server to listen", 90)

    def _listening(self) -> bool:
        if f"listening on 127.0.0.1:{self.port}" in self.log():
            return True
        if self.process.poll() is not None:
            raise Failed(f"the server exited (status {self.process.returncode}) before listening")
        return False

    def _read(self, process) -> None:
        for line in process.stdout:
            if process is self.process:  # not what an earlier run's wineserver still writes
                self.output.append(line.decode("utf-8", "replace"))

    def log(self) -> str:
        return "".join(self.output)

    def server_pid(self) -> int:
        """The Unix pid of the server's python.exe (twistd.exe is a launcher)."""
        found = [
            pid
            for pid, line in wine_processes()
            if "server.config" in line
            and windows_path(self.work) in line
            and line.split(" ", 1)[0].lower().endswith("python.exe")
        ]
        if len(found) != 1:
            raise Failed(f"expected one server process, found {found}")
        return found[0]

    def hello(self, name):
        return exchange(self.port, {"name": name})[0]

    def call(self, module: str, function: str, *args, timeout: float = 30.0):
        ack, *reply = exchange(
            self.port, {"name": module}, {"function": function, "args": list(args)}, timeout=timeout
        )
        if ack != {"response": "ack", "error": False, "traceback": ""}:
            raise Failed(f"{module}: no ack: {ack['response']}")
        return reply[0]

    def value(self, module: str, function: str, *args):
        reply = self.call(module, function, *args)
        if reply["error"]:
            raise Failed(f"{module}.{function}{args}: {reply['response']}\n{reply['traceback']}")
        return reply["response"]

    def status(self, module: str) -> dict:
        return self.hello(f"_status.{module}")["response"]["modules"][module]

    def ready_with_new_pid(self, module: str, old: int) -> int:
        def ready():
            status = self.status(module)
            return status["state"] == "ready" and status["pid"] not in (None, old) and status

        return wait_for(ready, f"{module} to be restarted")["pid"]

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


# The workers of these checks, by their command lines' ends (not any worker
# on the machine whose module's name starts with a w).
OUR_WORKERS = ["worker.py wcheck", "worker.py wobserver", "worker.py wthird"]


def leftovers(marks) -> list:
    return [(pid, line) for pid, line in wine_processes() if any(m in line for m in marks)]


def wait_until_gone(marks, what: str, timeout: float = 60.0) -> None:
    """Wine may take a while to end a process under load; a bound, then what is left."""
    try:
        wait_for(lambda: not leftovers(marks), what, timeout)
    except Failed as exc:
        raise Failed(f"{exc}; still there: {leftovers(marks)}") from None


def checks(server: Server, twistd: str) -> None:
    ping = server.hello(None)["response"]
    assert ping[0] == "127.0.0.1", ping
    yield "ping, from Linux to the server under Wine"

    assert server.value("wcheck", "version") == 1
    bad = server.call("wcheck", "no_such_function")
    assert bad["error"] and bad["traceback"], bad
    status = server.hello("_status")["response"]
    assert {"wcheck", "wobserver"} <= set(status["modules"]), status
    yield "calls, an error reply with its traceback, _status"

    assert server.value("wcheck", "in_job") is True
    assert server.value("wobserver", "in_job") is True
    yield "every worker is in a Job Object"

    pid = server.value("wcheck", "pid")
    child = server.value("wcheck", "spawn_child")
    reply = server.call("wcheck", "hang")
    assert reply["error"] and reply["response"].startswith("Timeout: wcheck.hang"), reply
    server.ready_with_new_pid("wcheck", pid)
    wait_for(lambda: not server.value("wobserver", "alive", child), "the worker's child to end")
    yield "a call past its timeout: worker killed with its child, restarted"

    pid = server.value("wcheck", "pid")
    child = server.value("wcheck", "spawn_child")
    taskkill = subprocess.run(
        ["wine", "taskkill", "/F", "/PID", str(pid)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=60,
    )
    assert b"terminated" in taskkill.stdout.lower() or taskkill.returncode == 0, taskkill.stdout
    server.ready_with_new_pid("wcheck", pid)
    wait_for(lambda: not server.value("wobserver", "alive", child), "the worker's child to end")
    yield "taskkill /F of a worker: restarted, its child ended"

    pid = server.value("wcheck", "pid")
    worker = [p for p, line in wine_processes() if line.endswith("worker.py wcheck")]
    assert len(worker) == 1, worker
    os.kill(worker[0], signal.SIGKILL)
    server.ready_with_new_pid("wcheck", pid)
    yield f"Linux kill -9 of a worker: restarted ({server.status('wcheck')['last_exit']})"

    reply = server.call("wcheck", "crash")
    assert reply["response"] == (
        "WorkerDied: the worker of wcheck died during crash() "
        "(exit code 0xC0000005 (access violation))"
    ), reply
    server.ready_with_new_pid("wcheck", None)
    assert server.value("wcheck", "version") == 1
    yield "a native crash: described by its exit code, restarted"

    module = server.work / "wcheck.py"
    module.write_text(MODULE.replace("VERSION = 1", "VERSION = 2"))
    wait_for(lambda: server.value("wcheck", "version") == 2, "the module to reload")
    yield "a saved module reloads"

    config = json.loads((server.work / "server.config").read_text())
    config["wthird"] = {"module": "wcheck", "entry": "Check", "env": {"CHECK_NAME": "wthird"}}
    (server.work / "server.config").write_text(json.dumps(config))
    wait_for(lambda: "wthird" in server.hello("_get_modules")["response"], "the config to reload")
    wait_for(lambda: server.status("wthird")["state"] == "ready", "the new module to start")
    yield "a saved config adds a module"

    for leftover in server.work.glob("exited-*"):  # from the reload's stop
        leftover.unlink()
    # Ctrl-C: Wine turns a Linux SIGINT into the console's Ctrl-C event.
    os.kill(server.server_pid(), signal.SIGINT)
    try:
        code = server.process.wait(30)
    except subprocess.TimeoutExpired:
        raise Failed("the server did not stop within 30 s of Ctrl-C") from None
    exited = sorted(p.name for p in server.work.glob("exited-*"))
    assert exited == ["exited-wcheck", "exited-wobserver", "exited-wthird"], exited
    wait_until_gone([*OUR_WORKERS, server.mark], "every worker to be gone")
    yield f"Ctrl-C: every module's __exit__ ran, nothing left (twistd exit status {code})"

    for leftover in server.work.glob("exited-*"):
        leftover.unlink()
    server.output.clear()
    server.start()
    wait_for(lambda: server.status("wthird")["state"] == "ready", "the modules to start")
    server.value("wcheck", "spawn_child")
    os.kill(server.server_pid(), signal.SIGKILL)
    wait_until_gone([*OUR_WORKERS, server.mark], "every worker and child to end")
    assert not list(server.work.glob("exited-*"))
    yield "a hard kill of the server ends every worker and what they started (kill on close)"


def venv_check(python: str, work: Path, port: int, source: Path) -> str:
    """A server run from a virtual environment gives its workers that environment."""
    venv = work / "venv"

    def run(*args):
        result = subprocess.run(
            ["wine", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=900,
        )
        if result.returncode != 0:
            raise Failed(f"{args} failed:\n{result.stdout.decode(errors='replace')}")

    # virtualenv (the embeddable CPython has no venv module) copies python.exe;
    # the DLLs it needs beside it are the embeddable layout's, not Windows'.
    run(python, "-m", "virtualenv", "--quiet", "--system-site-packages", windows_path(venv))
    home = Path(python.replace("C:\\", os.environ["WINEPREFIX"] + "/drive_c/").replace("\\", "/"))
    for dll in home.parent.glob("*.dll"):
        (venv / "Scripts" / dll.name).write_bytes(dll.read_bytes())
    venv_python = windows_path(venv / "Scripts" / "python.exe")
    run(
        venv_python,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        windows_path(source),
    )
    server = Server(
        venv_python, work, port, "venv", ["-c", "from twisted.scripts.twistd import run; run()"]
    )
    try:
        try:
            server.start()
        except Failed as exc:
            # Wine now and then loses a process start (CreateProcess fails,
            # or the new wineserver is not ready): say so, try once more.
            print(
                f"  (the venv's server did not start: {exc}; its log:\n{server.log()}"
                "  trying once more)",
                flush=True,
            )
            server.stop()
            server.output.clear()
            server.start()
        prefix = server.value("wcheck", "prefix")
        assert prefix.lower() == windows_path(venv).lower(), (prefix, windows_path(venv))
        assert "site-packages" in server.value("wcheck", "modserver_from").lower()
    except (Failed, AssertionError) as exc:
        raise Failed(f"{exc!r}\n--- the venv's server log ---\n{server.log()}") from None
    finally:
        server.stop()
    return f"a server run from a virtual environment gives its workers that environment ({prefix})"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--twistd", required=True, help="twistd.exe, as a Windows path")
    parser.add_argument("--python", required=True, help="python.exe, as a Windows path")
    parser.add_argument("--work", required=True, type=Path, help="a directory for the checks")
    parser.add_argument("--venv", type=Path, help="check a venv too, installing this project")
    options = parser.parse_args()
    work = options.work
    work.mkdir(parents=True, exist_ok=True)
    (work / "wcheck.py").write_text(MODULE)
    (work / "server.config").write_text(
        json.dumps(
            {
                "wcheck": {"module": "wcheck", "entry": "Check", "timeout": 3},
                "wobserver": {
                    "module": "wcheck",
                    "entry": "Check",
                    "env": {"CHECK_NAME": "wobserver"},
                },
            }
        )
    )
    port = free_port()
    mark = f"modserver-wine-check-{os.getpid()}"
    server = Server(options.twistd, work, port, mark)
    started = time.monotonic()
    try:
        server.start()
        for done in checks(server, options.twistd):
            print(f"  ok {time.monotonic() - started:5.1f} s  {done}", flush=True)
    except (Failed, AssertionError, subprocess.SubprocessError) as exc:
        print(f"FAILED: {exc!r}\n--- server log ---\n{server.log()}", file=sys.stderr)
        return 1
    finally:
        server.stop()
    if options.venv:
        (work / "wcheck.py").write_text(MODULE)
        try:
            done = venv_check(options.python, work, free_port(), options.venv)
        except (Failed, subprocess.SubprocessError) as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return 1
        print(f"  ok {time.monotonic() - started:5.1f} s  {done}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
