"""The Windows run under Wine (.ci/windows): what Wine 8 cannot do, in one place.

``.ci/windows`` runs the suite with a real Windows CPython under Wine and sets
``MODSERVER_UNDER_WINE=1``.  Then, and only then:

- the tests in ``SKIPS`` are skipped, each with the Wine limitation that
  stops it (on a real Windows they run);
- a process Wine 8 fails to start, as it now and then does, is started
  again (``popen``);
- every wait in the tests has a bound three times as long (``SLOWER``);
- Ctrl-Break, which Wine 8 cannot send (``GenerateConsoleCtrlEvent`` is
  missing), is delivered as what Wine turns into a console Ctrl-C: a Linux
  SIGINT to the server's Wine process.
"""

from __future__ import annotations

import os
import subprocess

UNDER_WINE = os.environ.get("MODSERVER_UNDER_WINE") == "1"

# How much longer a bound on a wait is under Wine.  Wine 8 starts a Windows
# process in about a second and imports slowly: a server took 3.5 s to listen
# on a quiet 2-core machine, 7 s with both cores busy, 10 to 15 s with twice
# that load (measured with a loop of server starts, under stress-ng), against
# 15 s bounds made for Linux.  A bound only stops a hung
# test; a longer one costs nothing when the test passes.
SLOWER = 3.0 if UNDER_WINE else 1.0

# node id (or its start) -> the Wine limitation that stops the test there.
SKIPS = {
    "tests/test_e2e_restarts.py::test_a_worker_killed_while_serving_is_back_at_once_every_time": (
        "Wine 8 takes about a second to start a Windows process (python.exe), "
        "the whole of this test's bound for a worker's restart"
    ),
}


def skip_reason(nodeid: str) -> str | None:
    """Why the test ``nodeid`` cannot pass under Wine, or None."""
    if not UNDER_WINE:
        return None
    for start, reason in SKIPS.items():
        if nodeid == start or nodeid.startswith(start + "["):
            return f"under Wine: {reason}"
    return None


def popen(*args, **kwargs):
    """``subprocess.Popen``; under Wine, tried again when Wine 8 fails to start
    the process (ERROR_INTERNAL_ERROR: its child died starting up), now and then."""
    for attempt in range(3):
        try:
            return subprocess.Popen(*args, **kwargs)
        except OSError as exc:
            if not UNDER_WINE or getattr(exc, "winerror", None) != 1359 or attempt == 2:
                raise
    raise AssertionError("not reached")


def _servers_in(directory: str):
    """Unix pids of the Python processes working in ``directory``, workers aside.

    Wine runs each Windows process as a Unix process whose working directory
    is the Windows one, and shows Linux's /proc to Windows programs.
    """
    wanted = os.stat(directory)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            here = os.stat(f"/proc/{entry}/cwd")
            with open(f"/proc/{entry}/cmdline", "rb") as stream:
                argv = stream.read().split(b"\0")
        except OSError:
            continue
        if (here.st_ino, here.st_dev) != (wanted.st_ino, wanted.st_dev):
            continue
        program = argv[0].decode("utf-8", "replace").lower()
        if program.endswith("python.exe") and not any(b"worker.py" in arg for arg in argv):
            yield int(entry)


def ctrl_break(directory: str) -> bool:
    """Stop, as Ctrl-Break would, the server started in ``directory``.

    A Windows program under Wine can start Linux programs (``/bin/kill``),
    though Wine hands back no usable process handle for them (so not Popen).
    """
    pids = list(_servers_in(directory))
    for pid in pids:
        os.spawnv(os.P_NOWAIT, "/bin/kill", ["kill", "-INT", str(pid)])
    return bool(pids)
