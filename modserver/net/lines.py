"""A LineReceiver for long lines: linear in the line length, holdable.

``LineReceiver`` grows its buffer with ``+=``, so a 16 MB request line
arrives at tens of MB/s; this one keeps the pieces of an unfinished line in
a list and joins them once.  Lines can also be *held* (left unprocessed)
while the connection keeps reading, so a client that hangs up while its
request waits in a module's queue is noticed at once.

A ``budget`` (admission.ByteBudget) shared by all connections bounds the
bytes received and not yet delivered as lines; past it, ``budget_exceeded``
is called instead of buffering more.
"""

from __future__ import annotations

import collections

from twisted.protocols.basic import LineReceiver


class ChunkedLineReceiver(LineReceiver):
    """LineReceiver with a chunk-list buffer and a ``hold_lines`` switch.

    Subclasses implement ``lineReceived`` and may override
    ``lineLengthExceeded``, which gets the start of the offending line, and
    ``budget_exceeded``.
    """

    delimiter = b"\n"
    MAX_LENGTH = 64 * 1024 * 1024

    _holding = False
    _stopped = False
    _unfinished = False
    budget = None  # an admission.ByteBudget, or None for no bound
    _discarding = False
    _held = 0  # bytes taken from the budget: received, not yet delivered

    _raw_left = 0  # bytes still due in raw mode (expect_raw)
    _raw_keep = True

    def connectionMade(self) -> None:
        """Set up the buffers; subclasses call this first."""
        self._unread: collections.deque[bytes] = collections.deque()
        self._unread_size = 0
        self._partial: list[bytes] = []
        self._partial_size = 0
        self._raw: list[bytes] = []
        self._raw_size = 0

    def expect_raw(self, size: int, keep: bool = True) -> None:
        """The next ``size`` bytes are not lines: ``raw_received`` gets them, in
        pieces, once all have come (``keep`` false: they are dropped, and
        ``line_discarded`` is called after them).

        Kept bytes stay counted in the budget: ``raw_received`` takes them over
        (its caller gives them back when done with them)."""
        self._raw, self._raw_size = [], 0
        self._raw_left, self._raw_keep = size, keep
        if size == 0:
            self._raw_done()

    def raw_pending(self) -> tuple[int, int] | None:
        """``(received, expected)`` bytes while in raw mode, else None."""
        if not self._raw_left:
            return None
        return self._raw_size, self._raw_size + self._raw_left

    def raw_received(self, pieces: list[bytes]) -> None:
        """All the bytes asked for with ``expect_raw`` have come."""

    def raw_progress(self) -> None:
        """Some raw bytes came (a subclass may move its idle deadline)."""

    def _take_raw(self, chunk: bytes) -> bytes:
        """Take raw bytes from the front of ``chunk``; return the rest."""
        size = min(len(chunk), self._raw_left)
        piece, rest = (chunk, b"") if size == len(chunk) else (chunk[:size], chunk[size:])
        self._raw_left -= size
        self._raw_size += size
        if self._raw_keep:
            self._raw.append(piece)
        else:
            self._give_back(size)
        if self._raw_left == 0:
            self._raw_done()
        else:
            self.raw_progress()
        return rest

    def _raw_done(self) -> None:
        pieces, size = self._raw, self._raw_size
        self._raw, self._raw_size = [], 0
        if not self._raw_keep:
            self.line_discarded()
            return
        self._held -= size  # now the caller's to give back
        self.raw_received(pieces)

    def hold_lines(self) -> None:
        """Stop delivering lines (data is still read and buffered)."""
        self._holding = True

    def release_lines(self) -> None:
        """Deliver lines again, starting with any that arrived meanwhile."""
        if self._holding:
            self._holding = False
            self.dataReceived(b"")

    def unfinished_line(self) -> bool:
        """True if the data received so far does not end with a delimiter."""
        return self._unfinished

    def lines_waiting(self) -> bool:
        """True if received data awaits delivery."""
        return bool(self._unread)

    def stop_lines(self) -> None:
        """Deliver no more lines, ever (the connection is closing)."""
        self._stopped = True
        self._unread.clear()
        self._partial = []
        self._raw, self._raw_size, self._raw_left = [], 0, 0
        self._give_back(self._held)

    def budget_exceeded(self, data: bytes) -> None:
        """The shared budget cannot hold ``data``; the default drops the connection."""
        self.transport.loseConnection()

    def discard_rest_of_line(self) -> None:
        """Deliver no more lines; drop what arrives until the line being
        received ends, then call ``line_discarded``.

        A client still sending its line when the server closes would have
        the connection reset, and could lose the answer it was just sent.
        """
        self.stop_lines()
        if self._unfinished:
            self._discarding = True
        else:
            self.line_discarded()

    def line_discarded(self) -> None:
        """The line being dropped has ended; the default closes."""
        self.transport.loseConnection()

    def _give_back(self, size: int) -> None:
        if self.budget is not None and size:
            self._held -= size
            self.budget.give_back(size)

    def dataReceived(self, data: bytes) -> None:
        """Called by the transport with bytes; splits and delivers lines."""
        if self._discarding and self.delimiter in data:
            self._discarding = False
            self.line_discarded()
        if self._stopped:
            return
        if data and self.budget is not None:
            if not self.budget.take(len(data)):
                self._unfinished = not data.endswith(self.delimiter)
                self.stop_lines()
                self.budget_exceeded(data)
                return
            self._held += len(data)
        if data:
            self._unfinished = not data.endswith(self.delimiter)
            self._unread.append(data)
            self._unread_size += len(data)
            if self._holding and self._unread_size > self.MAX_LENGTH:
                self._too_long()
                return
        while self._unread and not self._holding and not self._stopped:
            chunk = self._unread.popleft()
            self._unread_size -= len(chunk)
            if self._raw_left:
                chunk = self._take_raw(chunk)
                if not chunk or self._holding or self._stopped:
                    if chunk:
                        self._unread.appendleft(chunk)
                        self._unread_size += len(chunk)
                    continue
            rest = self._split(chunk)
            if rest:
                self._unread.appendleft(rest)
                self._unread_size += len(rest)

    def _split(self, chunk: bytes) -> bytes:
        """Deliver the lines in ``chunk``; return what is left if delivery stops."""
        start = 0
        while True:
            end = chunk.find(self.delimiter, start)
            if end < 0:
                if start < len(chunk):
                    self._partial.append(chunk[start:] if start else chunk)
                    self._partial_size += len(chunk) - start
                if self._partial_size > self.MAX_LENGTH:
                    self._too_long()
                return b""
            line = chunk[start:end]
            if self._partial:
                self._partial.append(line)
                line = b"".join(self._partial)
                self._partial, self._partial_size = [], 0
            start = end + len(self.delimiter)
            if len(line) > self.MAX_LENGTH:
                self._too_long(line)
                return b""
            self._give_back(len(line) + len(self.delimiter))
            self.lineReceived(line)
            if self._holding or self._stopped or self._raw_left:
                return chunk[start:]

    def _too_long(self, line: bytes | None = None) -> None:
        if line is None:
            line = (self._partial[:1] or list(self._unread)[:1] or [b""])[0]
        self.stop_lines()
        self.lineLengthExceeded(line[:64])
