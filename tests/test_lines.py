"""ChunkedLineReceiver: lines split anywhere, held lines, the length limit."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport

from modserver.net.lines import ChunkedLineReceiver


class Recorder(ChunkedLineReceiver):
    MAX_LENGTH = 1000

    def __init__(self):
        self.lines = []
        self.too_long = []

    def lineReceived(self, line):
        self.lines.append(line)

    def lineLengthExceeded(self, line):
        self.too_long.append(line)


def connected(cls=Recorder):
    receiver = cls()
    receiver.makeConnection(StringTransport())
    return receiver


@given(
    st.lists(st.binary(max_size=50).map(lambda b: b.replace(b"\n", b"")), max_size=10),
    st.lists(st.integers(min_value=0, max_value=600), max_size=20),
)
def test_lines_come_out_whole_however_the_data_is_split(lines, cuts):
    data = b"".join(line + b"\n" for line in lines)
    receiver = connected()
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    for start, end in zip(points, points[1:], strict=False):
        receiver.dataReceived(data[start:end])
    assert receiver.lines == lines


def test_a_long_line_in_many_pieces_is_joined_once():
    receiver = connected()
    for _ in range(99):
        receiver.dataReceived(b"x" * 10)
    receiver.dataReceived(b"yy\n")
    assert receiver.lines == [b"x" * 990 + b"yy"]


def test_pieces_of_a_long_line_are_kept_apart_until_it_ends():
    """Linear, not quadratic: pieces are listed and joined once (LineReceiver uses +=)."""
    receiver = connected()
    pieces = [bytes([65 + i % 26]) * 10 for i in range(90)]
    for piece in pieces:
        receiver.dataReceived(piece)
    assert receiver._partial == pieces
    receiver.dataReceived(b"\n")
    assert receiver.lines == [b"".join(pieces)] and receiver._partial == []


def test_held_lines_wait_and_come_out_in_order():
    receiver = connected()
    receiver.hold_lines()
    receiver.dataReceived(b"a\nb\n")
    receiver.dataReceived(b"c\n")
    assert receiver.lines == []
    receiver.release_lines()
    assert receiver.lines == [b"a", b"b", b"c"]


def test_holding_from_inside_line_received_stops_delivery_at_that_line():
    class HoldOnB(Recorder):
        def lineReceived(self, line):
            super().lineReceived(line)
            if line == b"b":
                self.hold_lines()

    receiver = connected(HoldOnB)
    receiver.dataReceived(b"a\nb\nc\nd\n")
    assert receiver.lines == [b"a", b"b"]
    receiver.release_lines()
    assert receiver.lines == [b"a", b"b", b"c", b"d"]


def test_a_line_over_the_limit_is_reported_with_its_start():
    receiver = connected()
    receiver.dataReceived(b"{" + b"z" * 1500)
    assert receiver.too_long == [(b"{" + b"z" * 1500)[:64]]
    receiver.dataReceived(b"more\n")
    assert receiver.lines == []


def test_a_complete_line_over_the_limit_is_reported():
    receiver = connected()
    receiver.dataReceived(b"ok\n" + b"q" * 1001 + b"\nnext\n")
    assert receiver.lines == [b"ok"] and len(receiver.too_long) == 1


def test_data_piling_up_while_held_is_limited():
    receiver = connected()
    receiver.hold_lines()
    for _ in range(11):
        receiver.dataReceived(b"x" * 99 + b"\n")
    assert receiver.too_long


def test_unfinished_line_is_known():
    receiver = connected()
    receiver.dataReceived(b"a\nb")
    assert receiver.unfinished_line()
    receiver.dataReceived(b"\n")
    assert not receiver.unfinished_line()
