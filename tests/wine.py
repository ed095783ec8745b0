"""The Windows run under Wine (.ci/windows): what Wine 8 cannot do, in one place.

``.ci/windows`` runs the suite with a real Windows CPython under Wine and sets
``MODSERVER_UNDER_WINE=1``.  Then, and only then:

- the tests in ``SKIPS`` are skipped, each with the Wine limitation that
  stops it (on a real Windows they run);
- Ctrl-Break, which Wine 8 cannot send (``GenerateConsoleCtrlEvent`` is
  missing), is delivered as what Wine turns into a console Ctrl-C: a Linux
  SIGINT to the server's Wine process.
"""

from __future__ import annotations

import os

UNDER_WINE = os.environ.get("MODSERVER_UNDER_WINE") == "1"

# node id (or its start) -> the Wine limitation that stops the test there.
SKIPS = {
}


def skip_reason(nodeid: str) -> str | None:
    """Why the test ``nodeid`` cannot pass under Wine, or None."""
    if not UNDER_WINE:
        return None
    for start, reason in SKIPS.items():
        if nodeid == start or nodeid.startswith(start + "["):
            return f"under Wine: {reason}"
    return None


def _wine_processes():
    """``(unix pid, command line)`` of every process, through Wine's view of /proc."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as stream:
                line = stream.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        yield int(entry), line


def ctrl_break(marker: str) -> bool:
    """Stop, as Ctrl-Break would, the Python processes whose command line has ``marker``.

    A Windows program under Wine can start Linux programs (``/bin/kill``),
    though Wine hands back no usable process handle for them (so not Popen).
    """
    pids = [
        pid
        for pid, line in _wine_processes()
        if marker in line and line.split(" ", 1)[0].lower().endswith("python.exe")
    ]
    for pid in pids:
        os.spawnv(os.P_NOWAIT, "/bin/kill", ["kill", "-INT", str(pid)])
    return bool(pids)
