"""Watches: one poll per reading, its values fanned out to every watcher (no I/O).

A *reading* is ``(module, function, args)``.  However many clients watch
it, the server polls it once per period: the fastest period any watcher
asked for, never faster than the module's ``min_period``.  Each value (or
error) is offered to every watcher; a watcher that cannot take it now
(its connection is paused because the client does not read) keeps only
the latest one, and the ones it replaces are counted as dropped.

Errors meaning "the module is down" (``WorkerDied``, ``Unavailable``) are
told once: the watchers hear of it when it starts and then nothing until
a value (or another error) comes.  A ``BadRequest`` answer (no such
function, a name that is not public) ends the reading, and each watch with
that error: watching it again would only repeat it.

The clock is passed in as ``now``; the Twisted glue (watching.py) turns
these decisions into calls and writes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from modserver.wire.errors import ReplyError, bad_request

MAX_PERIOD = 24 * 3600.0  # a watch period longer than a day is a mistake
DEFAULT_MAX_PER_IDENTITY = 100  # watches one client (address or certificate) may hold
DEFAULT_MAX_WATCHES = 2000  # watches the whole server holds
DEFAULT_STUCK_LIMIT = 60.0  # seconds a watcher may not read before it is disconnected

PUBLISHED = "@"  # a reading's function starting with this names a published value

DOWN_KINDS = frozenset({"WorkerDied", "Unavailable"})
FATAL_KINDS = frozenset({"BadRequest", "Forbidden"})


@dataclass(frozen=True)
class Sample:
    """One poll's outcome: a value, or an error ("Kind: message") and its traceback."""

    time: float
    value: object = None
    error: str | None = None
    traceback: str = ""

    @property
    def kind(self) -> str | None:
        """The error's type ("Unavailable"), or None for a value."""
        return None if self.error is None else self.error.split(":", 1)[0]

    def message(self) -> dict:
        """What a watcher receives for it (one JSON line)."""
        if self.error is None:
            return {"time": self.time, "value": self.value}
        return {"time": self.time, "error": self.error, "traceback": self.traceback}


def check_period(value) -> float:
    """A watch period in seconds, or one BadRequest saying what is wrong with it."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_request(f'"every" must be a number of seconds, not {json.dumps(value)}')
    if not math.isfinite(value) or value <= 0:
        raise bad_request(f'"every" must be a positive number of seconds, not {value!r}')
    if value > MAX_PERIOD:
        raise bad_request(f'"every" must be at most {MAX_PERIOD:g} seconds (a day), not {value!r}')
    return float(value)


def parse_request(message, latest: bool = False):
    """``(module, function, args, every)`` of a watch request, or None for "leaving".

    ``{"module": M, "function": F, "args": [..], "every": S}``; the module
    may also be named in the function as ``"M.F"`` (what ``hw.com('_latest',
    'M.F')`` sends).  ``every`` is not asked of a ``_latest`` request.
    """
    if not isinstance(message, dict) or ("function" not in message and "published" not in message):
        raise bad_request(
            'a watch request is a JSON object like {"module": "m", "function": "f", '
            '"args": [], "every": 0.5}'
        )
    if "published" in message and "function" not in message:
        name, module = message["published"], message.get("module")
        if not isinstance(name, str) or not name:
            raise bad_request('"published" must name a value the module publishes')
        if not isinstance(module, str) or not module:
            raise bad_request('"module" must be a non-empty string')
        return module, PUBLISHED + name, [], None
    function = message["function"]
    if function is None:
        return None
    if not isinstance(function, str) or not function:
        raise bad_request('"function" must be a non-empty string')
    module = message.get("module")
    if module is None:
        module, dot, function = function.rpartition(".")
        if not dot or not module or not function:
            raise bad_request(
                'name the module: {"module": "m", "function": "f"} or {"function": "m.f"}'
            )
    elif not isinstance(module, str) or not module:
        raise bad_request('"module" must be a non-empty string')
    args = message.get("args", [])
    if not isinstance(args, list):
        raise bad_request('"args" must be a list of arguments')
    every = None if latest else check_period(message.get("every"))
    return module, function, args, every


def reading_key(module: str, function: str, args) -> tuple[str, str, str]:
    """The key two watches share when they watch the same thing."""
    return (module, function, json.dumps(args, sort_keys=True, separators=(",", ":")))


def reading_name(key: tuple[str, str, str]) -> str:
    """``module.function(args)`` for messages and the status page."""
    module, function, args = key
    return f"{module}.{function}({args[1:-1]})"


@dataclass(eq=False)
class Watcher:
    """One client's watch: where values go, and what waits while it does not read."""

    who: str  # the client's identity (Identity.owner)
    key: tuple[str, str, str]
    period: float
    deliver: Callable[[Sample], None]
    pending: Sample | None = None  # the latest value held while paused
    dropped: int = 0  # values replaced before the client read them
    delivered: int = 0
    paused_since: float | None = None
    reading: Reading | None = None

    def offer(self, sample: Sample) -> None:
        """A new value: sent now, or kept as the latest while the client does not read."""
        if self.paused_since is None:
            self.delivered += 1
            self.deliver(sample)
            return
        if self.pending is not None:
            self.dropped += 1
        self.pending = sample

    def pause(self, now: float) -> None:
        """The client stopped reading (its connection's buffer is full)."""
        if self.paused_since is None:
            self.paused_since = now

    def resume(self) -> None:
        """The client reads again: it gets the latest value it missed."""
        self.paused_since = None
        pending, self.pending = self.pending, None
        if pending is not None:
            self.delivered += 1
            self.deliver(pending)

    def stuck(self, now: float, limit: float) -> bool:
        return self.paused_since is not None and now - self.paused_since >= limit


@dataclass(eq=False)
class Reading:
    """One ``(module, function, args)`` polled for all its watchers."""

    key: tuple[str, str, str]
    min_period: float
    watchers: list[Watcher] = field(default_factory=list)
    standing: float | None = None  # a period the server keeps it at (config readings)
    label: str | None = None  # the config's name for it (a /metrics reading)
    latest: Sample | None = None
    last_good: Sample | None = None
    polling: bool = False
    last_started: float | None = None
    down_told: bool = False  # watchers know the module is down
    polls: int = 0
    errors: int = 0
    ended: bool = False

    @property
    def module(self) -> str:
        return self.key[0]

    @property
    def function(self) -> str:
        return self.key[1]

    @property
    def args(self) -> list:
        return json.loads(self.key[2])

    @property
    def published(self) -> bool:
        """A value the module publishes itself: never polled."""
        return self.key[1].startswith(PUBLISHED)

    @property
    def period(self) -> float:
        """The fastest period asked for, never below the module's ``min_period``."""
        asked = [w.period for w in self.watchers]
        if self.standing is not None:
            asked.append(self.standing)
        return max(self.min_period, min(asked)) if asked else self.min_period

    @property
    def wanted(self) -> bool:
        return bool(self.watchers) or self.standing is not None

    def next_poll_at(self, now: float) -> float | None:
        """When the next poll should start (None: one is under way)."""
        if self.polling or self.published:
            return None
        if self.last_started is None:
            return now
        return max(now, self.last_started + self.period)

    def poll_started(self, now: float) -> None:
        self.polling = True
        self.last_started = now
        self.polls += 1

    def poll_finished(self, sample: Sample) -> bool:
        """The poll's outcome, offered to the watchers; True if the reading must end."""
        self.polling = False
        self.latest = sample
        kind = sample.kind
        if kind is None:
            self.last_good = sample
            self.down_told = False
        else:
            self.errors += 1
        if kind in DOWN_KINDS:
            if self.down_told:
                return False  # told once already
            self.down_told = True
        elif kind is not None:
            self.down_told = False
        if kind in FATAL_KINDS:
            return True  # the glue ends each watch with this error as its reason
        for watcher in list(self.watchers):
            watcher.offer(sample)
        return False

    def latest_answer(self, now: float) -> dict:
        """``_latest``: the last good value, its time and age, and the last error if newer."""
        good = self.last_good
        if good is None:
            if self.latest is not None:
                kind, _, message = self.latest.error.partition(": ")
                raise ReplyError(kind, message, self.latest.traceback)
            raise ReplyError("NotYet", f"{reading_name(self.key)} has not been read yet")
        newer = self.latest if self.latest is not good else None
        return {
            "value": good.value,
            "time": good.time,
            "age": round(now - good.time, 6),
            "error": newer.error if newer is not None else None,
        }

    def snapshot(self, now: float) -> dict:
        """For the status page and ``_status``."""
        good = self.last_good
        return {
            "reading": reading_name(self.key),
            "name": self.label,
            "time": good.time if good is not None else None,
            "period": self.period,
            "watchers": len(self.watchers),
            "polls": self.polls,
            "errors": self.errors,
            "value": good.value if good is not None else None,
            "age": round(now - good.time, 3) if good is not None else None,
            "last_error": self.latest.error if self.latest is not None else None,
            "dropped": sum(w.dropped for w in self.watchers),
        }


class WatchBoard:
    """Every reading watched on the server, and the limits on watches."""

    def __init__(
        self,
        max_per_identity: int = DEFAULT_MAX_PER_IDENTITY,
        max_watches: int = DEFAULT_MAX_WATCHES,
        stuck_limit: float = DEFAULT_STUCK_LIMIT,
    ) -> None:
        self.max_per_identity = max_per_identity
        self.max_watches = max_watches
        self.stuck_limit = stuck_limit
        self.readings: dict[tuple[str, str, str], Reading] = {}
        self._count = 0
        self._by_identity: dict[str, int] = {}

    def __len__(self) -> int:
        return self._count

    def refusal(self, who: str) -> ReplyError | None:
        """Busy when the server or this client holds as many watches as it may."""
        if self._count >= self.max_watches:
            return ReplyError(
                "Busy", f"the server holds its limit of {self.max_watches} watches; try later"
            )
        if self._by_identity.get(who, 0) >= self.max_per_identity:
            return ReplyError(
                "Busy",
                f"{who} holds its limit of {self.max_per_identity} watches; stop one first",
            )
        return None

    def reading(self, module: str, function: str, args, min_period: float) -> Reading:
        """The reading for ``(module, function, args)``, made if nobody watched it yet."""
        key = reading_key(module, function, args)
        reading = self.readings.get(key)
        if reading is None:
            reading = self.readings[key] = Reading(key, min_period)
        else:
            reading.min_period = min_period
        return reading

    def add(
        self,
        who: str,
        module: str,
        function: str,
        args,
        period: float,
        min_period: float,
        deliver: Callable[[Sample], None],
    ) -> tuple[Watcher, Reading]:
        """A new watch, or Busy past the limits."""
        period = check_period(period) if period is not None else MAX_PERIOD
        refusal = self.refusal(who)
        if refusal is not None:
            raise refusal
        reading = self.reading(module, function, args, min_period)
        watcher = Watcher(who, reading.key, period, deliver, reading=reading)
        reading.watchers.append(watcher)
        self._count += 1
        self._by_identity[who] = self._by_identity.get(who, 0) + 1
        return watcher, reading

    def remove(self, watcher: Watcher) -> Reading | None:
        """A watch ended; returns its reading if nobody wants it any more (it is dropped)."""
        reading = watcher.reading
        if reading is None or watcher not in reading.watchers:
            return None
        reading.watchers.remove(watcher)
        self._count -= 1
        left = self._by_identity[watcher.who] - 1
        if left:
            self._by_identity[watcher.who] = left
        else:
            del self._by_identity[watcher.who]
        if reading.wanted or reading.ended:
            return None
        self.end(reading)
        return reading

    def end(self, reading: Reading) -> None:
        """The reading is polled no more."""
        reading.ended = True
        if self.readings.get(reading.key) is reading:
            del self.readings[reading.key]

    def stuck(self, now: float) -> list[Watcher]:
        """Watchers that have not read for ``stuck_limit`` seconds."""
        return [
            w
            for reading in self.readings.values()
            for w in reading.watchers
            if w.stuck(now, self.stuck_limit)
        ]

    def latest(self, module: str, function: str, args) -> Reading | None:
        return self.readings.get(reading_key(module, function, args))
