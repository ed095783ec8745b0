"""What differs between POSIX and Windows: the one place that knows.

The server and the worker ask the platform object from ``current()`` how to
spawn a worker, signal it with what it started, read its channel and end it;
nothing else in modserver checks which system it runs on.

- ``Posix``: each worker leads its own process group (``setsid``); signals
  go to the group (``killpg``); a stop that outlives its grace gets SIGTERM,
  then SIGKILL; the worker notices the server's death with ``poll``.
- ``Windows``: only fds 0-2 reach a child and there are no signals
  (Twisted's ``signalProcess`` is TerminateProcess), so each worker and
  everything it starts lives in a Job Object that ends with the server;
  a stop that outlives its grace ends the job; a thread reads the channel.
- ``Portable``: the Windows logic that needs no Win32 API (no process
  groups, the reader thread, stop by message then kill), selected on any
  system with ``MODSERVER_PLATFORM=portable`` so that it is tested here.

The worker loads this file by path (it runs under any Python 3.7+, without
this package or Twisted): standard library only, Python 3.7 syntax, and the
server-only parts import what they need when called.
"""

from __future__ import annotations

import os
import signal

# Selects the portable implementation (the server passes it to its workers).
ENV_VAR = "MODSERVER_PLATFORM"
MODES = ("native", "portable")

# Linux's F_SETPIPE_SZ (named in fcntl from Python 3.10 on) and the size asked for.
F_SETPIPE_SZ = 1031
PIPE_SIZE = 1024 * 1024

# macOS refuses a soft file limit of RLIM_INFINITY; this is its OPEN_MAX.
MACOS_OPEN_MAX = 10240


class Platform:
    """How one kind of system spawns, signals and ends workers.

    Server side: ``spawn``, ``signal_group``, ``terminate_signal``,
    ``raise_fd_limit``, ``install_reload_handler``.  Worker side:
    ``channel_moved``, ``leave_server_group``, ``watches_hangups`` with
    ``wait_for_hangup``, ``end_own_group``.
    """

    name = "platform"
    # The signal that asks a stuck worker to leave tidily, or None where
    # there is none: the worker is then killed when its stop grace is over.
    terminate_signal: str | None = None
    # Whether a thread can wait for the channel's hang-up alone (poll);
    # if not, a thread reads every frame and queues it for the worker.
    watches_hangups = False

    # Server side --------------------------------------------------------

    def spawn(self, reactor, protocol, executable: str, args: list, env, path):
        """Start a worker with ``reactor.spawnProcess``; returns its transport."""
        return reactor.spawnProcess(protocol, executable, args, env=env, path=path)

    def signal_group(self, pid: int, name: str) -> bool:
        """Send SIGname to the worker ``pid`` and all it started; False if not possible.

        The caller then signals the worker alone (Twisted's ``signalProcess``).
        """
        return False

    def raise_fd_limit(self) -> int | None:
        """Raise the open-file soft limit to the hard limit; the new limit, or
        None where there is no such limit."""
        return None

    def install_reload_handler(self, callback) -> bool:
        """Call ``callback()`` when the "reload" signal (SIGHUP) arrives;
        False, and nothing installed, where there is no such signal.

        ``callback`` runs in a signal handler: it should only schedule the
        work, e.g. ``lambda: reactor.callFromThread(server.reload_config)``.
        """
        return False

    # Worker side --------------------------------------------------------

    def channel_moved(self, channel_in: int, channel_out: int) -> None:
        """The worker has moved its channel off fds 0/1 and pointed fd 1 at fd 2."""

    def leave_server_group(self) -> None:
        """Before the module loads: stop sharing the server's process group."""

    def wait_for_hangup(self, fd: int) -> None:
        """Block until the server's end of the channel (``fd``) hangs up."""
        raise NotImplementedError(self.name + " cannot wait for a hang-up alone")

    def end_own_group(self, kill_self: bool = False) -> None:
        """The worker is leaving: take the processes it started down with it."""


class Posix(Platform):
    """Linux, macOS and the other POSIX systems."""

    name = "posix"
    terminate_signal = "TERM"
    watches_hangups = True

    def signal_group(self, pid: int, name: str) -> bool:
        """Workers lead their own process groups, so this reaches their children too."""
        number = getattr(signal, "SIG" + name, None)
        if number is None:
            return False
        try:
            os.killpg(pid, number)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def raise_fd_limit(self) -> int | None:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        for target in (hard, MACOS_OPEN_MAX):
            if soft == resource.RLIM_INFINITY or (
                target != resource.RLIM_INFINITY and target <= soft
            ):
                continue  # nothing to gain (never lower the limit)
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            except (ValueError, OSError):
                continue  # macOS: an "infinite" hard limit, but OPEN_MAX is the real one
            break
        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]

    def install_reload_handler(self, callback) -> bool:
        signal.signal(signal.SIGHUP, lambda signum, frame: callback())
        return True

    def channel_moved(self, channel_in: int, channel_out: int) -> None:
        widen_pipe(channel_out)  # replies
        widen_pipe(channel_in)  # requests with binary segments (a 10 MB waveform)

    def leave_server_group(self) -> None:
        try:
            os.setsid()  # own process group: signals to it reach grandchildren
        except OSError:
            pass  # already a group leader

    def wait_for_hangup(self, fd: int) -> None:
        import select

        poller = select.poll()
        poller.register(fd, 0)  # 0: only hang-ups and errors wake us
        hangup = select.POLLHUP | select.POLLERR | select.POLLNVAL
        while not any(events & hangup for _, events in poller.poll()):
            pass

    def end_own_group(self, kill_self: bool = False) -> None:
        """Signal our own group (only as its leader: never the server's group).

        The server also kills what is left once it sees us gone, but not if
        it is gone itself.  From the main thread: SIGTERM, which we ignore
        ourselves; from another thread (signal handlers cannot be changed
        there) ``kill_self``: SIGKILL to everyone, us included.
        """
        if os.getpgrp() != os.getpid():
            return
        if not kill_self:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            os.killpg(os.getpid(), signal.SIGKILL if kill_self else signal.SIGTERM)
        except OSError:
            pass


class Portable(Platform):
    """The Windows logic that needs no Win32 API, on any system.

    No process groups: signals reach the worker alone, and a stuck stop
    ends in a kill (there is no SIGTERM on Windows).  A reader thread
    serves the channel.  No file limit to raise, no SIGHUP.
    """

    name = "portable"

    def spawn(self, reactor, protocol, executable: str, args: list, env, path):
        # The worker must take the same side as the server; say it explicitly.
        env = dict(os.environ if env is None else env)
        env[ENV_VAR] = "portable"
        return reactor.spawnProcess(protocol, executable, args, env=env, path=path)


class Windows(Portable):
    """Windows: Job Objects for workers (server side), a reader thread (worker side)."""

    name = "windows"

    def __init__(self, jobs=None, crt=None, kernel32=None) -> None:
        # Made when first needed: the worker never needs them, and the
        # server's (modserver.winjobs) need pywin32.  Tests pass fakes.
        self._jobs = jobs
        self._crt = crt
        self._kernel32 = kernel32

    @property
    def jobs(self):
        """The server's Job Objects, one per worker (modserver.winjobs.JobObjects)."""
        if self._jobs is None:
            from modserver.supervision import winjobs

            self._jobs = winjobs.JobObjects()
        return self._jobs

    def spawn(self, reactor, protocol, executable: str, args: list, env, path):
        return self.jobs.spawn(reactor, protocol, executable, args, env, path)

    def signal_group(self, pid: int, name: str) -> bool:
        """End the worker's job: no signal asks a Windows process to stop."""
        return self.jobs.terminate(pid)

    def channel_moved(self, channel_in: int, channel_out: int) -> None:
        """Binary channel; Win32-level writers follow fds 0 and 1 away from it.

        A DLL with its own C runtime, or a child started with the default
        handles, writes to the process's standard handles, not to fd 1:
        point those where fds 0 and 1 now go (the null device, the log).
        """
        crt, kernel32 = self._console()
        for fd in (channel_in, channel_out):
            crt.setmode(fd, O_BINARY)
        kernel32.SetStdHandle(STD_INPUT_HANDLE, crt.get_osfhandle(0))
        kernel32.SetStdHandle(STD_OUTPUT_HANDLE, crt.get_osfhandle(1))

    def _console(self):
        if self._crt is None:
            import ctypes
            import msvcrt

            kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
            kernel32.SetStdHandle.argtypes = (ctypes.c_uint32, ctypes.c_void_p)
            self._crt, self._kernel32 = msvcrt, kernel32
        return self._crt, self._kernel32


# msvcrt's binary mode; GetStdHandle's (DWORD)-10 and (DWORD)-11.
O_BINARY = getattr(os, "O_BINARY", 0x8000)
STD_INPUT_HANDLE = 0xFFFFFFF6
STD_OUTPUT_HANDLE = 0xFFFFFFF5

_instances: dict = {}


def current(environ=None) -> Platform:
    """The platform this process runs on, or the portable one if selected.

    One object per process (Windows keeps each worker's Job Object in it).
    ValueError for a value of MODSERVER_PLATFORM it does not know.
    """
    environ = os.environ if environ is None else environ
    mode = environ.get(ENV_VAR, "").strip().lower() or "native"
    if mode not in MODES:
        raise ValueError(
            "%s=%s is not known: use portable (the Windows logic without Win32), "
            "or leave it unset" % (ENV_VAR, environ.get(ENV_VAR))
        )
    if mode == "native":
        mode = "windows" if os.name == "nt" else "posix"
    if mode not in _instances:
        _instances[mode] = {"posix": Posix, "windows": Windows, "portable": Portable}[mode]()
    return _instances[mode]


def widen_pipe(fd: int) -> bool:
    """Let a reply cross the pipe in 1 MB pieces rather than 64 KB (Linux only)."""
    try:
        import fcntl

        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
    except (ImportError, OSError):
        return False  # another system, or a lower limit: the default size works too
    return True


# Windows exit codes of crashed processes (NTSTATUS values), by name.
NTSTATUS_NAMES = {
    0xC0000005: "access violation",
    0xC000001D: "illegal instruction",
    0xC0000094: "integer division by zero",
    0xC00000FD: "stack overflow",
    0xC000013A: "Ctrl-C",
    0xC0000374: "heap corruption",
    0xC0000409: "stack buffer overrun",
}


def describe_exit(exit_code: int | None, signal_number: int | None) -> str:
    """How a worker ended, for people.

    ``exit code 3``; on POSIX ``signal 9 (SIGKILL)``; on Windows, where a
    crash is an exit code, ``exit code 0xC0000005 (access violation)``.
    """
    if signal_number is not None:
        try:
            name = signal.Signals(signal_number).name
        except ValueError:
            return "signal %d" % signal_number
        return "signal %d (%s)" % (signal_number, name)
    if exit_code is not None and exit_code & 0xFFFFFFFF >= 0xC0000000:
        code = exit_code & 0xFFFFFFFF
        text = "exit code 0x%08X" % code
        return text + " (%s)" % NTSTATUS_NAMES[code] if code in NTSTATUS_NAMES else text
    return "exit code %s" % exit_code


def process_exists(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie does not count)."""
    if os.name == "nt":
        return _windows_process_exists(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # Linux: a zombie is dead for our purposes
        with open("/proc/%d/stat" % pid) as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True  # no /proc (macOS): whoever started it reaps it soon


def _windows_process_exists(pid: int) -> bool:
    import ctypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenProcess.restype = ctypes.c_void_p
    kernel32.GetExitCodeProcess.argtypes = (ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32))
    kernel32.CloseHandle.argtypes = (ctypes.c_void_p,)
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.get_last_error() == 5  # ERROR_ACCESS_DENIED: it runs, as someone else
    try:
        code = ctypes.c_uint32()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)
