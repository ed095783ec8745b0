"""Writing now when a transport is idle, and reading worker pipes in large pieces."""

from __future__ import annotations

import os

import pytest
from twisted.internet import main

from modserver import platforms, process
from modserver.transport import write_now


class FakeDescriptor:
    """The parts of a Twisted FileDescriptor that write_now looks at."""

    def __init__(self, accepts: int = 10**9, queued: bool = False) -> None:
        self._tempDataBuffer = [b"queued"] if queued else []
        self.dataBuffer = b""
        self.offset = 0
        self.connected = True
        self.disconnecting = False
        self.accepts = accepts
        self.sent_now: list[bytes] = []
        self.queued: list[bytes] = []

    def writeSomeData(self, data):  # noqa: N802 - Twisted's name
        taken = bytes(data[: self.accepts])
        self.sent_now.append(taken)
        return len(taken)

    def write(self, data):
        self.queued.append(bytes(data))


def test_an_idle_transport_sends_at_once():
    fd = FakeDescriptor()
    write_now(fd, b"reply\n")
    assert fd.sent_now == [b"reply\n"] and fd.queued == []


def test_what_is_not_taken_is_queued_in_order():
    fd = FakeDescriptor(accepts=3)
    write_now(fd, b"abcdef")
    assert fd.sent_now == [b"abc"] and fd.queued == [b"def"]


def test_a_busy_transport_queues_behind_what_waits():
    fd = FakeDescriptor(queued=True)
    write_now(fd, b"later")
    assert fd.sent_now == [] and fd.queued == [b"later"]


def test_a_transport_without_that_machinery_just_writes():
    class Plain:
        written = []

        def write(self, data):
            self.written.append(data)

    plain = Plain()
    write_now(plain, b"x")
    assert plain.written == [b"x"]


def test_worker_pipes_are_read_a_megabyte_at_a_time(tmp_path):
    read_end, write_end = os.pipe()
    try:
        if not platforms.widen_pipe(write_end):  # as the worker does
            pytest.skip("only Linux pipes hold 1 MB (F_SETPIPE_SZ)")
        payload = os.urandom(900_000)
        os.write(write_end, payload)

        class Reader:
            fd = read_end
            received: list[bytes] = []

            def dataReceived(self, data):  # noqa: N802 - Twisted's name
                self.received.append(data)

        reader = Reader()
        assert process._read_big(reader) is None
        assert reader.received == [payload]  # one read, where Twisted's takes 8 KB
        os.close(write_end)
        write_end = None
        assert process._read_big(reader) is main.CONNECTION_DONE
    finally:
        os.close(read_end)
        if write_end is not None:
            os.close(write_end)
