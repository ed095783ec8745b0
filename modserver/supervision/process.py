"""The server's end of a worker child: frames in and out, raw output, signals.

``WorkerProcess`` is the ProcessProtocol of one worker: it parses frames
from the channel (the child's stdout), streams reply payloads and hands
everything else to its supervisor as events; the child's stderr is its raw
output, passed on line by line.
"""

from __future__ import annotations

import collections
import errno
import functools
import json
import os
from typing import TYPE_CHECKING

from twisted.internet import error, interfaces, main, protocol
from zope.interface import implementer

from modserver.wire import channel
from modserver.worker.platforms import describe_exit

if TYPE_CHECKING:
    from modserver.supervision.supervisor import ModuleSupervisor

# Frames up to this size are joined and written at once; larger ones are
# queued in pieces (joining a 16 MB request would copy it).
SMALL_FRAME = 64 * 1024

# A line of raw output longer than this is passed on in pieces.
MAX_OUTPUT_LINE = 64 * 1024

# Output without a final newline (a prompt, a progress dot) is passed on
# after this long without more output.
PARTIAL_LINE_WAIT = 0.5

# After a worker exits, how long to wait for its channel to close (a forked
# grandchild may hold it open) before treating the worker as gone.
CHANNEL_CLOSE_GRACE = 0.5


# The most read from the channel at a time (Twisted reads pipes 8 KB at a time).
READ_SIZE = 1024 * 1024

# What a read of the channel asks for until one fills it (ReadSizes).
SMALL_READ = 64 * 1024


class ReadSizes:
    """How much the next read of a worker's channel asks for.

    ``os.read`` allocates all it is asked for before it reads: 1 MB for a
    60-byte reply is an ``mmap``, a page fault and a ``munmap`` (glibc maps
    blocks that large), about 13 µs against 1 µs for 64 KB, on every call.
    So reads ask for SMALL_READ (below glibc's mapping threshold) until one
    fills it, a long reply streaming; then READ_SIZE until one comes back
    shorter than SMALL_READ.
    """

    def __init__(self) -> None:
        self.next = SMALL_READ

    def got(self, size: int) -> None:
        self.next = READ_SIZE if size >= SMALL_READ else SMALL_READ


def _read_big(reader, sizes: ReadSizes | None = None):
    """ProcessReader.doRead, reading up to READ_SIZE bytes at once (as ``sizes`` says)."""
    try:
        data = os.read(reader.fd, READ_SIZE if sizes is None else sizes.next)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EINTR):
            return None
        return main.CONNECTION_LOST
    if not data:
        return main.CONNECTION_DONE
    if sizes is not None:
        sizes.got(len(data))
    reader.dataReceived(data)
    return None


@implementer(interfaces.IPullProducer)
class _StdinDrained:
    """A pull producer on the worker's stdin pipe: its writer calls
    ``resumeProducing`` when registered and each time its buffer empties."""

    def __init__(self, proc: WorkerProcess) -> None:
        self.proc = proc

    def resumeProducing(self) -> None:
        self.proc._stdin_idle = True
        self.proc._feed_stdin()

    def stopProducing(self) -> None:
        self.proc._stdin_idle = False


@implementer(interfaces.IPushProducer)
class WorkerProcess(protocol.ProcessProtocol):
    """The server's end of one worker child: frames in and out, raw output."""

    def __init__(self, supervisor: ModuleSupervisor) -> None:
        self.supervisor = supervisor
        self.group_signaller = supervisor.settings.signal_group
        self.pid: int | None = None
        self.exit_description: str | None = None
        self.channel_closed = False
        self._stdin_idle = False  # nothing queued in the transport for the pipe (send)
        self._stdin_watched = False  # the transport tells us when the pipe has drained
        self._stdin_queue: collections.deque[bytes] = collections.deque()  # waiting for it
        self.gone = False
        self._parser = channel.FrameParser(self)
        self._kind = None
        self._chunks: list[bytes] = []
        self._partial_line = b""
        self._partial_call = None
        self._grace_call = None

    # Frames -----------------------------------------------------------

    def send(self, *pieces: bytes) -> None:
        """Write frame bytes to the worker (pieces avoid copying big requests).

        While nothing is queued in the transport for the pipe, pieces are
        written straight into it with ``os.write``, as far as it takes them:
        queuing a small frame for the reactor's next turn costs that turn
        and four ``epoll_ctl`` calls (Twisted's stdin writer also watches
        the pipe for reading), a sixth of the server's time on a keep-alive
        loop; and a big request (a 10 MB array argument) given whole to the
        transport is joined into one copy first.  The first piece the pipe
        does not take goes to the transport; the rest wait here until the
        transport says it has drained (our pull producer), so nothing is
        ever written out of order.  Where the transport gives no such word
        (Windows), everything goes through it.
        """
        if self.transport is None or self.exit_description is not None:
            return
        if sum(map(len, pieces)) <= SMALL_FRAME:
            pieces = (b"".join(pieces),)
        if not self._stdin_watched:
            self.transport.writeSequence(list(pieces))
            return
        if len(pieces) == 1 and self._stdin_idle and not self._stdin_queue:
            frame = pieces[0]  # a small frame, nothing queued: into the pipe now
            written = self._write_now(frame)
            if written < len(frame):
                self._stdin_idle = False
                self.transport.write(frame[written:])
            return
        self._stdin_queue.extend(piece for piece in pieces if piece)
        self._feed_stdin()

    def _feed_stdin(self) -> None:
        """Write queued pieces into the pipe while it is idle and takes them."""
        queue = self._stdin_queue
        while self._stdin_idle and queue:
            piece = queue.popleft()
            written = self._write_now(piece)
            if written < len(piece):
                self._stdin_idle = False
                self.transport.write(piece[written:])

    def _write_now(self, data: bytes) -> int:
        """Bytes of ``data`` written straight to the idle stdin pipe (0: let the transport)."""
        pipes = getattr(self.transport, "pipes", None)
        writer = pipes.get(0) if pipes else None
        fd = writer.fileno() if writer is not None else -1
        if fd < 0:
            return 0
        try:
            return os.write(fd, data)
        except OSError:  # full (non-blocking pipe) or broken: the transport will see it
            return 0

    def frame_started(self, kind: int, flags: int, request_id: int, length: int) -> None:
        self._kind = kind
        if kind == channel.REPLY:
            self.supervisor.worker_reply_started(self, flags, request_id, length)
        else:
            self._chunks = []

    def frame_data(self, data: bytes) -> None:
        if self._kind == channel.REPLY:
            self.supervisor.worker_reply_data(self, data)
        else:
            self._chunks.append(data)

    def frame_ended(self) -> None:
        if self._kind == channel.REPLY:
            self.supervisor.worker_reply_ended(self)
            return
        payload, self._chunks = b"".join(self._chunks), []
        try:
            message = json.loads(payload)
        except ValueError:
            self.supervisor.worker_broken(self, "sent a malformed frame")
            return
        self.supervisor.worker_message(self, self._kind, message)

    # ProcessProtocol --------------------------------------------------

    def connectionMade(self) -> None:
        """The child is spawned: read its channel in large pieces."""
        self.pid = self.transport.pid
        reader = getattr(self.transport, "pipes", {}).get(1)
        if reader is not None:
            reader.doRead = functools.partial(_read_big, reader, ReadSizes())
        writer = getattr(self.transport, "pipes", {}).get(0)
        if writer is not None:  # POSIX: tell us each time the stdin pipe has drained
            self._stdin_watched = True
            writer.registerProducer(_StdinDrained(self), False)

    # IPushProducer, for the client a reply streams to: a slow client pauses
    # the channel (the worker waits on its write) instead of filling memory.

    def pauseProducing(self) -> None:
        """The client's send buffer is full: stop reading the channel."""
        reader = getattr(self.transport, "pipes", {}).get(1)
        if reader is not None:
            reader.stopReading()
        else:  # Windows: the transport polls all its pipes together
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """The client caught up (or left): read the channel again."""
        reader = getattr(self.transport, "pipes", {}).get(1)
        if reader is None:
            self.transport.resumeProducing()  # its exit is polled with its pipes
        elif not self.channel_closed:
            reader.startReading()

    stopProducing = resumeProducing  # a client that left: keep draining the reply

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        """fd 1 is the channel; fd 2 is everything the worker wrote as text."""
        if childFD == 1:
            self._parser.feed(data)
        else:
            self._output(data)

    def childConnectionLost(self, childFD: int) -> None:
        """A pipe closed; the channel closing means no reply can come any more."""
        if childFD == 1:
            self.channel_closed = True
            if self.exit_description is not None:
                self._gone()
        elif childFD == 2:
            if self._partial_call is not None and self._partial_call.active():
                self._partial_call.cancel()
            self._flush_partial_line()

    def processExited(self, reason) -> None:
        """The child exited; it is gone once its channel is closed too."""
        value = reason.value
        self.exit_description = describe_exit(
            getattr(value, "exitCode", None), getattr(value, "signal", None)
        )
        if self.channel_closed:
            self._gone()
        else:
            clock = self.supervisor.reactor
            self._grace_call = clock.callLater(CHANNEL_CLOSE_GRACE, self._gone)

    def _gone(self) -> None:
        if self._grace_call is not None and self._grace_call.active():
            self._grace_call.cancel()
        self._grace_call = None
        self._stdin_queue.clear()  # nobody will read it
        if not self.gone:
            self.gone = True
            self.supervisor.worker_gone(self, self.exit_description)

    # Raw output -------------------------------------------------------

    def _output(self, data: bytes) -> None:
        lines = (self._partial_line + data).split(b"\n")
        self._partial_line = lines.pop()
        while len(self._partial_line) > MAX_OUTPUT_LINE:
            lines.append(self._partial_line[:MAX_OUTPUT_LINE])
            self._partial_line = self._partial_line[MAX_OUTPUT_LINE:]
        for line in lines:
            self.supervisor.worker_output(self, line)
        if self._partial_call is not None and self._partial_call.active():
            self._partial_call.cancel()
        self._partial_call = None
        if self._partial_line:
            clock = self.supervisor.reactor
            self._partial_call = clock.callLater(PARTIAL_LINE_WAIT, self._flush_partial_line)

    def _flush_partial_line(self) -> None:
        self._partial_call = None
        if self._partial_line:
            line, self._partial_line = self._partial_line, b""
            self.supervisor.worker_output(self, line)

    # Signals ----------------------------------------------------------

    def signal(self, name: str) -> None:
        """Send SIGname to the worker and what it started (its process group or
        Job Object), else to the worker alone.

        Only while it runs: once it has exited its pid may belong to another.
        """
        if self.exit_description is not None or self.pid is None:
            return
        if self.group_signaller(self.pid, name):
            return
        try:
            self.transport.signalProcess(name)  # not a group leader yet, or portable
        except error.ProcessExitedAlready:
            pass
