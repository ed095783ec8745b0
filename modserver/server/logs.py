"""The server's log: one twisted.logger stream for the server and every module.

Every event modserver emits carries ``log_system`` = ``"<module>#<level>"``
(or ``"server#<level>"``), which Twisted's text format prints in brackets,
so ``twistd -n`` shows ``time [laser#error] message`` with tracebacks
indented below, and observers can pick a module by that field or by
namespace:

- ``modserver.module.<name>``: what the module itself logged or printed;
- ``modserver.lifecycle``: a module's worker starting, dying, reloading;
- ``modserver.access``: one line per call;
- ``modserver.server``: the server as a whole.

Events below the level set with ``set_level`` are not even created.
"""

from __future__ import annotations

import collections
import os
import time

from twisted.logger import Logger, LogLevel, formatEvent, jsonFileLogObserver
from twisted.python.logfile import LogFile

from modserver.worker.budget import Budget

_ORDER = [LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error, LogLevel.critical]
_threshold = 1  # info
_enabled = {level: rank >= _threshold for rank, level in enumerate(_ORDER)}


def set_level(level: LogLevel) -> None:
    """Drop events below ``level`` at their source (server and modules alike)."""
    global _threshold
    _threshold = _ORDER.index(level)
    _enabled.update({each: rank >= _threshold for rank, each in enumerate(_ORDER)})


def enabled(level: LogLevel) -> bool:
    return _enabled[level]


class SystemLogger(Logger):
    """A Logger whose events say which module (or the server) they concern."""

    def __init__(self, namespace: str, system: str) -> None:
        super().__init__(namespace=namespace)
        self.system = system
        self._systems = {level: f"{system}#{level.name}" for level in _ORDER}  # made once

    def __get__(self, instance, owner=None) -> SystemLogger:
        # Logger, as a class attribute, makes a new Logger for each owner; this
        # one is shared as it is, its system and namespace already set.
        return self

    def emit(self, level: LogLevel, format: str | None = None, **kwargs) -> None:  # noqa: A002
        if not enabled(level):
            return
        if "log_system" not in kwargs:
            kwargs["log_system"] = self._systems[level]
        super().emit(level, format, **kwargs)


def for_module(name: str, topic: str = "lifecycle") -> SystemLogger:
    """A logger for events about module ``name`` (topic: module, lifecycle, access)."""
    namespace = f"modserver.module.{name}" if topic == "module" else f"modserver.{topic}"
    return SystemLogger(namespace, name)


server_log = SystemLogger("modserver.server", "server")


def cannot_open(path: str) -> str | None:
    """Why the log file ``path`` cannot be opened for writing, or None if it can."""
    try:
        try:
            open(path, "a").close()
        except FileNotFoundError:  # its folder is made, as json_observer does
            os.makedirs(os.path.dirname(os.path.abspath(path)))
            open(path, "a").close()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def json_observer(path: str, size: int, count: int):
    """A rotating RFC 7464 JSON log (readable by eventsFromJSONLogFile, jq --seq)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    stream = LogFile.fromFullPath(path, rotateLength=size, maxRotatedFiles=count)
    return jsonFileLogObserver(stream), stream


_STDLIB_LEVELS = (
    (50, LogLevel.critical),
    (40, LogLevel.error),
    (30, LogLevel.warn),
    (20, LogLevel.info),
)


def level_for(levelno: int) -> LogLevel:
    """The twisted.logger level of a stdlib ``logging`` level number."""
    for floor, level in _STDLIB_LEVELS:
        if levelno >= floor:
            return level
    return LogLevel.debug


class ModuleOutput:
    """What a worker writes to stdout and stderr, logged line by line, within a budget.

    A worker printing in a tight loop must not keep the server busy logging:
    past ``rate`` lines a second (``burst`` at once) lines are counted, not
    logged, and every ``report_every`` seconds while that lasts, and once
    when it stops, a warning says how much was left out.
    """

    def __init__(
        self, name: str, clock, rate: float = 200, burst: float = 1000, report_every: float = 5.0
    ) -> None:
        self.name = name
        self.clock = clock
        self.log = for_module(name, "module")
        self.budget = Budget(rate, burst)
        self.report_every = report_every
        self._report = None

    def line(self, raw: bytes) -> None:
        if not self.budget.take(self.clock.seconds(), len(raw)):
            if self._report is None:
                self.log.warn(
                    "output flood: logging at most {rate:g} lines a second of "
                    "{module}'s output; the rest is counted",
                    module=self.name,
                    rate=self.budget.rate,
                )
                self._report = self.clock.callLater(self.report_every, self._tally)
            return
        text = raw.decode("utf-8", "replace").rstrip("\r")
        self.log.info("output: {line}", module=self.name, line=text, output=True)

    def _tally(self) -> None:
        """Timer body: report what was left out, and look again later if anything was."""
        self._report = None
        if self._say_dropped():
            self._report = self.clock.callLater(self.report_every, self._tally)

    def _say_dropped(self) -> bool:
        lines, size = self.budget.tally()
        if lines:
            self.log.warn(
                "output flood: {lines} lines ({size} bytes) of {module}'s output were "
                "not logged in the last {seconds:g} s",
                module=self.name,
                lines=lines,
                size=size,
                seconds=self.report_every,
                dropped_lines=lines,
                dropped_bytes=size,
            )
        return bool(lines)

    def stop(self) -> None:
        """The worker is gone for good: report what is left out, and stop looking."""
        if self._report is not None and self._report.active():
            self._report.cancel()
            self._say_dropped()
        self._report = None


class LogTail:
    """An observer keeping the last lines logged about each module (for _status)."""

    def __init__(self, lines: int = 15) -> None:
        self._lines = lines
        self._tails: dict[str, collections.deque[str]] = {}

    def __call__(self, event: dict) -> None:
        module = event.get("module")
        if module is None or event.get("log_namespace") == "modserver.access":
            return
        tail = self._tails.get(module)
        if tail is None:
            tail = self._tails[module] = collections.deque(maxlen=self._lines)
        stamp = time.strftime("%H:%M:%S", time.localtime(event.get("log_time", time.time())))
        level = event.get("log_level")
        text = formatEvent(event).replace("\n", "\n    ")
        tail.append(f"{stamp} {level.name if level else ''} {text}")

    def lines(self, module: str) -> list[str]:
        return list(self._tails.get(module, ()))
