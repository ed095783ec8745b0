"""The Twisted side of watches: polls as ordinary calls, values to connections.

``WatchHub`` asks watches.WatchBoard what to do and does it: it schedules
each reading's next poll on the injected reactor, submits the poll to the
module's supervisor as a ``Call`` like any client's (it takes its turn,
obeys the module's timeout, counts in its numbers), turns the reply into a
``Sample`` and lets the reading fan it out.  A watcher whose client has not
read for the board's ``stuck_limit`` is ended with a reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from twisted.internet import task

from modserver.server import logs
from modserver.supervision.calls import Call, CallSink
from modserver.supervision.watches import (
    PUBLISHED,
    Reading,
    Sample,
    WatchBoard,
    Watcher,
    reading_key,
    reading_name,
)
from modserver.wire.errors import ReplyError

POLLER = "(watches)"  # whose turn a poll takes, in the module's line and its access log
STUCK_CHECK = 1.0  # seconds between looks for watchers that stopped reading


class PollSink(CallSink):
    """Collects one poll's reply (plain JSON, short) and hands it on whole."""

    def __init__(self, done: Callable[[bool, bytes, bool], None]) -> None:
        self.done = done
        self.error = False
        self.chunks: list[bytes] = []

    def reply_started(self, error: bool, producer=None) -> None:
        self.error = error

    def reply_data(self, data: bytes) -> None:
        self.chunks.append(data)

    def reply_finished(self, complete: bool) -> None:
        self.done(self.error, b"".join(self.chunks), complete)


def sample_of(now: float, error: bool, data: bytes, complete: bool) -> Sample:
    """A poll's reply line as a Sample."""
    if not complete:
        return Sample(now, error="WorkerDied: the reply was cut short")
    try:
        reply = json.loads(data)
    except ValueError:
        return Sample(now, error="BadReply: the module's reply could not be read")
    if error or reply.get("error"):
        return Sample(now, error=str(reply.get("response")), traceback=reply.get("traceback", ""))
    return Sample(now, value=reply.get("response"))


class WatchHub:
    """Runs the polls of every watched reading of one server."""

    log = logs.server_log

    def __init__(self, board: WatchBoard, supervisor_of, reactor) -> None:
        self.board = board
        self.supervisor_of = supervisor_of  # module name -> its ModuleSupervisor or None
        self.reactor = reactor
        self._timers: dict[tuple, object] = {}
        self._ends: dict[Watcher, Callable[[ReplyError, bool], None]] = {}
        self._stuck = task.LoopingCall(self._check_stuck)
        self._stuck.clock = reactor

    def watch(
        self,
        who: str,
        module: str,
        function: str,
        args,
        period: float,
        deliver: Callable[[Sample], None],
        end: Callable[[ReplyError, bool], None],
    ) -> Watcher:
        """Start a watch (BadRequest or Busy if it cannot be).

        ``end(reason, stuck)`` closes its client: the reading cannot be read
        (BadRequest), or the client read nothing for too long (``stuck``).
        """
        supervisor = self.supervisor_of(module)
        min_period = supervisor.spec.min_period if supervisor is not None else 0.1
        watcher, reading = self.board.add(who, module, function, args, period, min_period, deliver)
        self._ends[watcher] = end
        if reading.latest is not None and reading.latest.kind is None:
            watcher.offer(reading.latest)  # the latest value at once, then each new one
        self._schedule(reading)
        if not self._stuck.running:
            self._stuck.start(STUCK_CHECK, now=False).addErrback(
                lambda f: self.log.failure("checking watchers failed", f)
            )
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        """The watch ended (its client stopped or left)."""
        self._ends.pop(watcher, None)
        reading = self.board.remove(watcher)
        if reading is not None:
            self._cancel(reading)
        if not len(self.board) and self._stuck.running:
            self._stuck.stop()

    def published(self, module: str, name: str, value, when: float) -> None:
        """A module published a value itself: to the watchers of that name, if any."""
        reading = self.board.readings.get(reading_key(module, PUBLISHED + name, []))
        if reading is not None:
            reading.poll_finished(Sample(when, value))

    def stand(
        self, module: str, function: str, args, period: float, label: str | None = None
    ) -> Reading:
        """Keep a reading polled without any watcher (the config's readings)."""
        supervisor = self.supervisor_of(module)
        min_period = supervisor.spec.min_period if supervisor is not None else 0.1
        reading = self.board.reading(module, function, args, min_period)
        reading.standing = period
        reading.label = label
        self._schedule(reading)
        return reading

    def stand_only(self, wanted: dict) -> None:
        """The config's readings are now ``{(module, function, args JSON): (label, every)}``."""
        for key, reading in list(self.board.readings.items()):
            if reading.standing is not None and key not in wanted:
                reading.standing, reading.label = None, None
                if not reading.wanted:
                    self.board.end(reading)
                    self._cancel(reading)
        for (module, function, args), (label, every) in wanted.items():
            self.stand(module, function, json.loads(args), every, label)

    def snapshot(self, module: str) -> list[dict]:
        """The readings of ``module`` being watched, for ``_status`` and the status page."""
        now = self.reactor.seconds()
        return [
            reading.snapshot(now)
            for key, reading in sorted(self.board.readings.items())
            if key[0] == module
        ]

    def stop(self) -> None:
        """The server stops: no more polls."""
        for key in list(self._timers):
            timer = self._timers.pop(key)
            if timer.active():
                timer.cancel()
        if self._stuck.running:
            self._stuck.stop()

    # Polls -----------------------------------------------------------------

    def _schedule(self, reading: Reading) -> None:
        now = self.reactor.seconds()
        at = reading.next_poll_at(now)
        if at is None or reading.ended:
            return
        timer = self._timers.get(reading.key)
        if timer is not None and timer.active():
            if timer.getTime() <= at:
                return
            timer.cancel()
        self._timers[reading.key] = self.reactor.callLater(at - now, self._poll, reading)

    def _cancel(self, reading: Reading) -> None:
        timer = self._timers.pop(reading.key, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _poll(self, reading: Reading) -> None:
        self._timers.pop(reading.key, None)
        if reading.ended:
            return
        reading.poll_started(self.reactor.seconds())
        supervisor = self.supervisor_of(reading.module)
        if supervisor is None:
            self._answered(
                reading, True, _error_line(f"BadRequest: {reading.module} was removed"), True
            )
            return
        request = json.dumps({"function": reading.function, "args": reading.args}).encode()
        call = Call(
            sink=PollSink(
                lambda error, data, complete: self._answered(reading, error, data, complete)
            ),
            request=request,
            function=reading.function,
            plain=True,
            client=POLLER,
            owner=POLLER,
            meta=b'{"client": "(watches)"}\n',
        )
        supervisor.submit(call)

    def _answered(self, reading: Reading, error: bool, data: bytes, complete: bool) -> None:
        if reading.ended:
            return
        sample = sample_of(self.reactor.seconds(), error, data, complete)
        if reading.poll_finished(sample):
            self.log.info(
                "watches of {reading} end: {error}",
                reading=reading_name(reading.key),
                error=sample.error,
            )
            self.board.end(reading)
            kind, _, message = sample.error.partition(": ")
            reason = ReplyError(kind, message, sample.traceback)
            for watcher in list(reading.watchers):
                end = self._ends.get(watcher)
                if end is not None:
                    end(reason, False)
            return
        self._schedule(reading)

    def _check_stuck(self) -> None:
        now = self.reactor.seconds()
        for watcher in self.board.stuck(now):
            end = self._ends.get(watcher)
            err = ReplyError(
                "Busy",
                f"this watcher read nothing for {self.board.stuck_limit:g} s "
                f"({watcher.dropped} values dropped); the server ends it",
            )
            self.log.warn(
                "{who}'s watch of {reading} {reason}; disconnecting",
                who=watcher.who,
                reading=reading_name(watcher.key),
                reason=err.message.replace("this watcher ", "").replace("; the server ends it", ""),
            )
            if end is not None:
                end(err, True)
            self.unwatch(watcher)


def _error_line(reason: str) -> bytes:
    return json.dumps({"response": reason, "error": True, "traceback": reason + "\n"}).encode()
