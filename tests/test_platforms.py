"""The platform layer: POSIX with real processes and signals, the portable mode,
and the Windows worker side with faked Win32 calls (and, run by a Windows
CPython under Wine, .ci/windows, with real ones)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from modserver.worker import platforms
from tests.helpers import ON_WINDOWS, wait_for

posix_only = pytest.mark.skipif(ON_WINDOWS, reason="POSIX calls (process groups, rlimits)")


class RecordingReactor:
    def __init__(self) -> None:
        self.spawned = []

    def spawnProcess(self, protocol, executable, args, env=None, path=None):  # noqa: N802
        self.spawned.append((protocol, executable, args, env, path))
        return "transport"


# Choosing the platform -----------------------------------------------------------------


def test_the_native_platform_is_this_systems():
    chosen = platforms.current({})
    assert chosen.name == ("windows" if ON_WINDOWS else "posix")
    assert platforms.current({platforms.ENV_VAR: "native"}) is chosen  # one per process


def test_portable_mode_is_chosen_by_the_environment():
    chosen = platforms.current({platforms.ENV_VAR: " Portable "})
    assert isinstance(chosen, platforms.Portable) and chosen.name == "portable"


def test_an_unknown_mode_is_refused_with_the_variable_named():
    with pytest.raises(ValueError, match="MODSERVER_PLATFORM=windows is not known"):
        platforms.current({platforms.ENV_VAR: "windows"})


def test_the_portable_mode_is_the_windows_logic_without_win32():
    portable, windows = platforms.Portable(), platforms.Windows()
    for layer in (portable, windows):
        assert layer.terminate_signal is None  # stop by message, then kill
        assert layer.watches_hangups is False  # a reader thread
        assert layer.raise_fd_limit() is None
    assert isinstance(windows, platforms.Portable)
    assert platforms.Posix().terminate_signal == "TERM" and platforms.Posix().watches_hangups


# Spawning and signalling -----------------------------------------------------------------


def test_portable_workers_are_told_the_mode_and_keep_their_environment():
    reactor = RecordingReactor()
    platforms.Portable().spawn(reactor, "proto", "/py", ["/py", "-u"], {"A": "1"}, "/lab")
    ((_, executable, args, env, path),) = reactor.spawned
    assert env == {"A": "1", platforms.ENV_VAR: "portable"}
    assert (executable, args, path) == ("/py", ["/py", "-u"], "/lab")
    platforms.Portable().spawn(reactor, "proto", "/py", ["/py"], None, None)
    assert reactor.spawned[1][3] == {**os.environ, platforms.ENV_VAR: "portable"}


def test_posix_workers_are_spawned_as_asked():
    reactor = RecordingReactor()
    assert platforms.Posix().spawn(reactor, "p", "/py", ["/py"], None, "/lab") == "transport"
    assert reactor.spawned == [("p", "/py", ["/py"], None, "/lab")]


def test_portable_mode_has_no_groups_to_signal():
    assert platforms.Portable().signal_group(os.getpid(), "KILL") is False


@posix_only
def test_a_signal_to_the_group_reaches_the_workers_children():
    leader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time; "
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            "print(child.pid, flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        start_new_session=True,  # a group of its own, as a worker makes with setsid()
    )
    child = int(leader.stdout.readline())
    try:
        assert platforms.Posix().signal_group(leader.pid, "KILL") is True
        leader.wait(10)
        wait_for(lambda: not platforms.process_exists(child), what="the child to die")
    finally:
        leader.kill()
        leader.wait(10)
        leader.stdout.close()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])  # never led a group
    gone.wait(30)
    assert platforms.Posix().signal_group(gone.pid, "KILL") is False


# The hooks for later: file limits and a reload signal ---------------------------------


@posix_only
def test_the_file_limit_is_raised_to_the_hard_limit():
    """In a child process: the test run's own limit stays as it is."""
    script = (
        "import resource, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from modserver.worker import platforms\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))\n"
        "raised = platforms.Posix().raise_fd_limit()\n"
        "print(raised, resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(platforms.__file__))))
    result = subprocess.run(
        [sys.executable, "-c", script, root], capture_output=True, text=True, timeout=30
    )
    raised, now, hard = map(int, result.stdout.split())
    assert raised == now != 64
    assert raised in (hard, platforms.MACOS_OPEN_MAX)  # macOS: an "infinite" hard limit


@posix_only
def test_raising_the_file_limit_never_lowers_it():
    import resource

    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        assert platforms.Posix().raise_fd_limit() >= before[0]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


@posix_only
def test_the_reload_handler_runs_on_sighup():
    previous = signal.getsignal(signal.SIGHUP)
    calls = []
    try:
        assert platforms.Posix().install_reload_handler(lambda: calls.append("reload")) is True
        os.kill(os.getpid(), signal.SIGHUP)
        wait_for(lambda: calls, timeout=5, what="the handler")
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert calls == ["reload"]


def test_without_sighup_no_reload_handler_is_installed():
    previous = signal.getsignal(signal.SIGHUP) if hasattr(signal, "SIGHUP") else None
    assert platforms.Portable().install_reload_handler(lambda: None) is False
    if hasattr(signal, "SIGHUP"):
        assert signal.getsignal(signal.SIGHUP) is previous


# The worker side ------------------------------------------------------------------------


@posix_only
def test_the_hangup_wait_ends_when_the_server_end_closes():
    read_end, write_end = os.pipe()
    done = threading.Event()

    def wait():
        platforms.Posix().wait_for_hangup(read_end)
        done.set()

    threading.Thread(target=wait, daemon=True).start()
    try:
        assert not done.wait(0.05)  # nothing closed yet
        os.close(write_end)
        assert done.wait(5)
    finally:
        os.close(read_end)


class FakeCrt:
    """msvcrt, faked: there is no Windows here."""

    def __init__(self) -> None:
        self.modes = {}

    def setmode(self, fd, mode):
        self.modes[fd] = mode

    def get_osfhandle(self, fd):
        return 1000 + fd


class FakeKernel32:
    """kernel32's SetStdHandle, faked: there is no Windows here."""

    def __init__(self) -> None:
        self.std = {}

    def SetStdHandle(self, which, handle):  # noqa: N802 - Win32's name
        self.std[which] = handle


def test_on_windows_the_channel_is_binary_and_win32_writers_follow_fd_1_to_the_log():
    crt, kernel32 = FakeCrt(), FakeKernel32()
    platforms.Windows(crt=crt, kernel32=kernel32).channel_moved(7, 8)
    assert crt.modes == {7: platforms.O_BINARY, 8: platforms.O_BINARY}
    # The process's standard handles now are those of fds 0 (null) and 1 (the log).
    assert kernel32.std == {
        platforms.STD_INPUT_HANDLE: 1000,
        platforms.STD_OUTPUT_HANDLE: 1001,
    }


# Describing exits and finding processes --------------------------------------------------


def test_exit_descriptions():
    assert platforms.describe_exit(3, None) == "exit code 3"
    assert platforms.describe_exit(None, 11) == "signal 11 (SIGSEGV)"
    assert platforms.describe_exit(None, 99) == "signal 99"


def test_windows_crash_codes_are_named_however_they_are_reported():
    crash = "exit code 0xC0000005 (access violation)"
    assert platforms.describe_exit(0xC0000005, None) == crash
    assert platforms.describe_exit(-1073741819, None) == crash  # the same code, signed
    assert platforms.describe_exit(0xC0000135, None) == "exit code 0xC0000135"


def test_process_exists():
    assert platforms.process_exists(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(30)
    assert not platforms.process_exists(child.pid)


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux's /proc")
def test_a_zombie_does_not_exist():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        wait_for(lambda: not platforms.process_exists(child.pid), what="the child to end")
        assert child.poll() is not None  # it was a zombie until now
    finally:
        child.wait(30)
