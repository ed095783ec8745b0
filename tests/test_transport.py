"""Reading worker pipes in large pieces."""

from __future__ import annotations

import os

import pytest
from twisted.internet import main

from modserver.supervision import process
from modserver.worker import platforms


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


def fill(fd) -> int:
    """Fill the pipe whose write end is ``fd``; how many bytes it took."""
    os.set_blocking(fd, False)
    taken = 0
    try:
        while True:
            taken += os.write(fd, b"." * 65536)
    except BlockingIOError:
        return taken


def drain(fd, size) -> bytes:
    """Up to ``size`` bytes from the read end ``fd``: as much as is there, without waiting."""
    os.set_blocking(fd, False)
    data = b""
    try:
        while len(data) < size:
            data += os.read(fd, size - len(data))
    except BlockingIOError:
        pass
    return data


class StdinWriter:
    """The parts of Twisted's stdin pipe writer that WorkerProcess uses."""

    def __init__(self, fd):
        self.fd = fd
        self.producer = None

    def fileno(self):
        return self.fd

    def registerProducer(self, producer, streaming):  # noqa: N802 - Twisted's name
        assert not streaming  # a pull producer: told each time the buffer drains
        self.producer = producer
        producer.resumeProducing()  # as FileDescriptor does for a pull producer


class ProcessTransport:
    def __init__(self, fd):
        self.pid = 4242
        self.pipes = {0: StdinWriter(fd)}
        self.queued = []

    def write(self, data):
        self.queued.append(bytes(data))

    def writeSequence(self, pieces):  # noqa: N802 - Twisted's name
        self.queued.append(b"".join(pieces))


def test_small_frames_go_straight_into_an_idle_pipe_and_never_overtake_queued_ones():
    read_end, write_end = os.pipe()
    try:
        settings = type("Settings", (), {"signal_group": None})()
        worker = process.WorkerProcess(type("Supervisor", (), {"settings": settings})())
        worker.transport = ProcessTransport(write_end)
        worker.connectionMade()
        worker.send(b"small-1")
        assert os.read(read_end, 100) == b"small-1" and worker.transport.queued == []
        room = fill(write_end)  # the pipe is full: what does not fit waits its turn
        big = [b"head", b"B" * (process.SMALL_FRAME + 1), b"tail"]
        worker.send(*big)
        worker.send(b"small-2")
        assert worker.transport.queued == [b"head"]  # to the transport; the rest waits
        worker.transport.queued = []
        drain(read_end, room)
        worker.transport.pipes[0].producer.resumeProducing()  # the transport has drained
        # The big piece goes straight in as far as the pipe takes it; its rest to the
        # transport; "tail" and "small-2" still wait for the transport to drain.
        written = drain(read_end, room)
        assert written + b"".join(worker.transport.queued) == big[1]
        worker.transport.queued = []
        worker.transport.pipes[0].producer.resumeProducing()
        assert drain(read_end, 4 + 7) == b"tail" + b"small-2"
        worker.send(b"small-3")
        assert os.read(read_end, 100) == b"small-3"
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_worker_pipe_is_read_in_small_pieces_until_a_long_reply_streams():
    read_end, write_end = os.pipe()
    try:
        if not platforms.widen_pipe(write_end):
            pytest.skip("only Linux pipes hold 1 MB (F_SETPIPE_SZ)")

        class Reader:
            fd = read_end
            received: list[int] = []

            def dataReceived(self, data):  # noqa: N802 - Twisted's name
                self.received.append(len(data))

        reader, sizes = Reader(), process.ReadSizes()
        os.write(write_end, b"x" * 60)  # a small reply: no megabyte asked for
        assert sizes.next == process.SMALL_READ
        process._read_big(reader, sizes)
        assert reader.received == [60] and sizes.next == process.SMALL_READ
        os.write(write_end, os.urandom(900_000))  # a long one: the first read fills
        process._read_big(reader, sizes)
        assert reader.received[-1] == process.SMALL_READ and sizes.next == process.READ_SIZE
        process._read_big(reader, sizes)  # then the rest at once
        assert reader.received[-1] == 900_000 - process.SMALL_READ
        assert sizes.next == process.READ_SIZE
        os.write(write_end, b"y" * 10)
        process._read_big(reader, sizes)  # a short read: small reads again
        assert reader.received[-1] == 10 and sizes.next == process.SMALL_READ
    finally:
        os.close(read_end)
        os.close(write_end)
