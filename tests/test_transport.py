"""Reading worker pipes in large pieces."""

from __future__ import annotations

import os

import pytest
from twisted.internet import main

from modserver import platforms, process


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
