"""Logging refusals without flooding the log (no I/O).

A client that is refused once is worth a log line; one that retries in a
loop (a script on a PC that is not allowed, a port scanner) must not fill
the log.  ``RefusalTally`` says when to log: the first refusal for a reason
from an address at once, the rest counted and reported as one line when
the interval ends.
"""

from __future__ import annotations

from dataclasses import dataclass

# Seconds between two lines about the same client and the same refusal.
INTERVAL = 60.0

# Distinct (client, reason) pairs tracked at once; more are counted together,
# so a flood from many addresses cannot grow the server's memory.
MAX_TRACKED = 4096
OTHERS = ("other clients", "refused")


@dataclass
class _Entry:
    since: float
    count: int = 0  # refusals since ``since`` not logged yet


class RefusalTally:
    """Decides which refusals to log now and counts the rest."""

    def __init__(self, interval: float = INTERVAL, max_tracked: int = MAX_TRACKED) -> None:
        self.interval = interval
        self.max_tracked = max_tracked
        self._entries: dict[tuple[str, str], _Entry] = {}

    def refused(self, client: str, reason: str, now: float) -> bool:
        """Count one refusal of ``client`` for ``reason``; True if it should be logged now."""
        key = (client, reason)
        if key not in self._entries and len(self._entries) >= self.max_tracked:
            key = OTHERS  # past the bound: counted, never logged one by one
        entry = self._entries.get(key)
        if entry is None:
            self._entries[key] = _Entry(now, count=1 if key == OTHERS else 0)
            return key != OTHERS
        entry.count += 1
        return False

    def due(self, now: float) -> list[tuple[str, str, int, float]]:
        """``(client, reason, count, seconds)`` for each interval that ended with refusals
        not yet logged; those clients are logged at once when next refused."""
        lines = []
        for (client, reason), entry in list(self._entries.items()):
            if now - entry.since >= self.interval:
                del self._entries[client, reason]
                if entry.count:
                    lines.append((client, reason, entry.count, now - entry.since))
        return lines

    def __len__(self) -> int:
        return len(self._entries)
