"""A client's request on its way to a worker, and the reply on its way back.

``Call`` is one request; ``CallSink`` is where its reply goes (the client
connection); ``call_deadlines`` says when a call is given up on;
``ReplyRelay`` carries a worker's reply frames to the call's client.  No
I/O of their own: the supervisor feeds them what the worker sends.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from modserver.wire import codec as wire
from modserver.wire.errors import ReplyError

# Replies up to this long are collected before they go to the client, so that
# a worker dying in the middle of one is answered with WorkerDied instead of
# a cut line; longer ones are passed on as they come.
ATOMIC_REPLY = 64 * 1024

# Replies longer than this are flow-controlled: a slow client pauses the worker.
STREAMED_REPLY = 1024 * 1024

# An error reply is read (to name its type in the access log) up to this size.
ERROR_PEEK = 64 * 1024


class CallSink:
    """Where a call's reply goes (the client connection); a no-op base."""

    def reply_started(self, error: bool, producer=None) -> None:
        """A reply begins; ``error`` replies end the client's connection.

        ``producer`` (an IPushProducer) can be paused while the client is slow.
        """

    def reply_data(self, data: bytes) -> None:
        """A piece of the encoded reply line."""

    def reply_finished(self, complete: bool) -> None:
        """The reply ended; not ``complete`` when the worker died mid-reply."""


@dataclass(eq=False, slots=True)
class Call:
    """One client request waiting for, or being served by, a worker.

    (Slots: one is made for every request, and its fields are read all the way.)
    """

    sink: CallSink
    request: bytes  # the request's JSON text as the client sent it
    function: str
    keep_alive: bool = False
    plain: bool = False
    client_ip: str = ""
    client: str = ""  # who the client is (address, and certificate CN), for the log
    owner: str = ""  # whose turn it waits for and whose lease lets it run (Identity.owner)
    lease_wait: bool = False  # wait while another holds the module's lease (else Busy)
    wait_limit: float | None = None  # seconds it may wait, if less than the queue's limit
    timeout: float | None = None
    admin: bool = False  # may its timeout end the worker (else it ends only the wait)
    meta: bytes = b""  # the worker's line about the call (who asked), made once per client
    request_id: int = 0
    received: float | None = None
    started: float | None = None
    answered: bool = False
    abandoned: bool = False  # answered with Timeout while the worker goes on with it
    release: Callable[[], None] | None = None  # gives back the request's bytes, once
    binary: bool = False  # the client takes binary segments in its reply
    segments: tuple = ()  # the request's binary segments, in pieces as received

    def sent(self) -> None:
        """The request left the server (to the worker) or was dropped: free its bytes."""
        release, self.release = self.release, None
        if release is not None:
            release()

    def fail(self, err: ReplyError) -> None:
        """Answer with an error reply (unless a reply has begun already)."""
        self.sent()
        if self.answered:
            return
        self.answered = True
        self.sink.reply_started(True)
        self.sink.reply_data(err.line(self.plain))
        self.sink.reply_finished(True)


def call_deadlines(call: Call, module_timeout: float | None) -> tuple[float | None, float | None]:
    """``(kill after, give up after)``: when to end the worker, when to answer the client.

    An administrator's request timeout replaces the module's; anyone else's
    can only shorten their own wait: the worker is ended by the module's
    timeout alone.
    """
    if call.timeout is None:
        return module_timeout, None
    if call.admin:
        return call.timeout, None
    if module_timeout is None or call.timeout < module_timeout:
        return module_timeout, call.timeout
    return module_timeout, None


class ReplyRelay:
    """Carries one reply at a time from a worker to the call it answers.

    Short replies are passed on whole once their frame has ended; long ones
    as they arrive, with the worker as the producer a slow client pauses.
    An error reply's start is kept to name its type in the access log.
    """

    def __init__(self, module: str, log, peek_errors: bool = True) -> None:
        self.module = module
        self.log = log  # the module's logger: a failure is logged as the module's
        self.peek_errors = peek_errors
        self.call: Call | None = None  # the call whose reply is on its way
        self.error = False
        self._whole: list[bytes] | None = None  # a short reply, until it is whole
        self._peek: list[bytes] | None = None

    def start(self, call: Call, error: bool, length: int, producer) -> None:
        """A reply of ``length`` bytes begins for ``call``."""
        self.call, self.error = call, error
        self._peek = [] if error and self.peek_errors else None
        if length <= ATOMIC_REPLY:
            self._whole = []
            return
        self._whole = None
        call.answered = True
        # Only a long reply can outrun its client; a short one fits the buffers.
        self.deliver(call, "reply_started", error, producer if length > STREAMED_REPLY else None)

    def data(self, data: bytes) -> None:
        """A piece of the reply."""
        if self.call is None:
            return
        if self._peek is not None and sum(map(len, self._peek)) < ERROR_PEEK:
            self._peek.append(data)
        if self._whole is not None:
            self._whole.append(data)
        else:
            self.deliver(self.call, "reply_data", data)

    def finish(self) -> Call | None:
        """The reply's frame ended: the call it answered (its client not yet told)."""
        call, self.call = self.call, None
        whole, self._whole = self._whole, None
        if call is not None and whole is not None:
            call.answered = True
            self.deliver(call, "reply_started", self.error, None)
            self.deliver(call, "reply_data", b"".join(whole))
        return call

    def drop(self) -> None:
        """The worker is gone: whatever was on its way will not come."""
        self.call, self._whole, self._peek = None, None, None

    def error_type(self, call: Call) -> str:
        """The type named by the error reply just relayed ("ValueError"), for the access log."""
        line = b"".join(self._peek or ()).rstrip(b"\n")
        self._peek = None
        try:
            text = line if call.plain else wire.unquote_plus(line)
            return json.loads(text)["response"].split(":", 1)[0]
        except (ValueError, KeyError, TypeError, AttributeError):
            return "error"

    def deliver(self, call: Call, method: str, *args) -> None:
        """Tell the call's client; a failing client must not break the worker's pipe."""
        if call.abandoned:
            return  # the client had its Timeout; the worker's late reply goes nowhere
        try:
            getattr(call.sink, method)(*args)
        except Exception:
            self.log.failure(
                "passing a reply from {module} to {client} failed",
                module=self.module,
                client=call.client_ip,
            )
