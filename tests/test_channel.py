"""Unit tests for modserver.channel, the framing between the server and workers.

A frame is a 10-byte header (kind, flags, request id, payload length) and a
payload.  FrameParser must rebuild the same frames however the byte stream
is cut into reads, stream payload pieces without gathering them, and pass a
read that lies wholly inside a long payload straight through (no copy).
"""

from __future__ import annotations

import json
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modserver.wire import channel


class Recorder:
    """A FrameParser receiver that logs every call."""

    def __init__(self) -> None:
        self.events = []
        self.chunks = []

    def frame_started(self, kind, flags, request_id, length):
        self.events.append(("started", kind, flags, request_id, length))

    def frame_data(self, chunk):
        self.events.append(("data", len(chunk)))
        self.chunks.append(chunk)

    def frame_ended(self):
        self.events.append(("ended",))


def frames_from_events(recorder: Recorder):
    """Rebuild (kind, flags, request_id, payload) frames from a Recorder's log,
    checking that every frame is started, fed its data, then ended."""
    frames = []
    current = None
    chunks = iter(recorder.chunks)
    for event in recorder.events:
        if event[0] == "started":
            assert current is None, "frame started inside another frame"
            current = (event[1:4], event[4], [])
        elif event[0] == "data":
            assert current is not None, "data outside a frame"
            current[2].append(next(chunks))
        else:
            assert current is not None, "frame ended before it started"
            start, length, pieces = current
            payload = b"".join(pieces)
            assert len(payload) == length
            frames.append((*start, payload))
            current = None
    assert current is None, "last frame never ended"
    return frames


def collect(chunks):
    """Feed ``chunks`` to a FrameParser with a FrameCollector; return frames."""
    frames = []
    parser = channel.FrameParser(channel.FrameCollector(lambda *args: frames.append(args)))
    for chunk in chunks:
        parser.feed(chunk)
    return frames


def split_at(data: bytes, cuts) -> list[bytes]:
    points = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


# --------------------------------------------------------------------------
# header / frame / json_frame


def test_header_is_ten_bytes_kind_flags_request_id_length_big_endian():
    head = channel.header(channel.REPLY, 0x01020304, flags=channel.PLAIN, request_id=7)
    assert channel.HEADER.size == 10
    assert head == bytes([12, 1, 0, 0, 0, 7, 1, 2, 3, 4])
    assert head == struct.pack("!BBII", channel.REPLY, channel.PLAIN, 7, 0x01020304)


def test_header_defaults_to_no_flags_and_request_id_zero():
    assert channel.header(channel.STOP, 0) == bytes([channel.STOP]) + bytes(9)


def test_header_accepts_the_largest_frame():
    head = channel.header(channel.REPLY, channel.MAX_FRAME)
    assert channel.HEADER.unpack(head) == (channel.REPLY, 0, 0, 0xFFFFFFFF)


@pytest.mark.parametrize("length", [channel.MAX_FRAME + 1, 2**40])
def test_header_raises_value_error_for_lengths_over_max_frame(length):
    with pytest.raises(ValueError, match="too large"):
        channel.header(channel.REPLY, length)


def test_frame_is_header_then_payload():
    data = channel.frame(channel.LOG, b"hello", flags=channel.ERROR, request_id=3)
    assert data == channel.header(channel.LOG, 5, channel.ERROR, 3) + b"hello"
    assert channel.HEADER.unpack(data[:10]) == (channel.LOG, channel.ERROR, 3, 5)
    assert data[10:] == b"hello"


def test_frame_without_payload_is_just_a_header():
    assert channel.frame(channel.STOP) == channel.header(channel.STOP, 0)


def test_json_frame_carries_utf8_json():
    obj = {"pid": 1234, "files": ["a.py", "é.py"], "load_time": 0.5}
    data = channel.json_frame(channel.READY, obj, request_id=9)
    kind, flags, request_id, length = channel.HEADER.unpack(data[:10])
    assert (kind, flags, request_id) == (channel.READY, 0, 9)
    assert length == len(data) - 10
    assert json.loads(data[10:].decode("utf-8")) == obj


def test_kinds_and_flags_are_distinct():
    kinds = [channel.LOAD, channel.CALL, channel.STOP, channel.READY,
             channel.LOAD_FAILED, channel.REPLY, channel.LOG]  # fmt: skip
    assert len(set(kinds)) == len(kinds)
    assert channel.PLAIN & channel.ERROR == 0


# --------------------------------------------------------------------------
# FrameParser / FrameCollector

frame_specs = st.lists(
    st.tuples(
        st.integers(0, 255),
        st.integers(0, 255),
        st.integers(0, 2**32 - 1),
        st.one_of(st.just(b""), st.binary(max_size=200)),
    ),
    max_size=8,
)


def encode_frames(specs) -> bytes:
    return b"".join(
        channel.frame(kind, payload, flags, request_id)
        for kind, flags, request_id, payload in specs
    )


def specs_as_frames(specs):
    """The frames a receiver should see for ``specs``, as callback tuples."""
    return [(kind, flags, request_id, payload) for kind, flags, request_id, payload in specs]


def test_parser_reports_one_frame_in_order_of_calls():
    recorder = Recorder()
    parser = channel.FrameParser(recorder)
    parser.feed(channel.frame(channel.REPLY, b"abc", channel.PLAIN, 5))
    assert recorder.events == [
        ("started", channel.REPLY, channel.PLAIN, 5, 3),
        ("data", 3),
        ("ended",),
    ]
    assert recorder.chunks == [b"abc"]


def test_parser_reports_zero_length_frame_without_data():
    recorder = Recorder()
    parser = channel.FrameParser(recorder)
    parser.feed(channel.frame(channel.STOP) + channel.frame(channel.STOP, b"", 0, 1))
    assert recorder.events == [
        ("started", channel.STOP, 0, 0, 0),
        ("ended",),
        ("started", channel.STOP, 0, 1, 0),
        ("ended",),
    ]


def test_parser_ignores_empty_feeds():
    recorder = Recorder()
    parser = channel.FrameParser(recorder)
    data = channel.frame(channel.LOG, b"xyz")
    parser.feed(b"")
    parser.feed(data[:4])
    parser.feed(b"")
    parser.feed(data[4:11])
    parser.feed(b"")
    parser.feed(data[11:])
    parser.feed(b"")
    assert frames_from_events(recorder) == [(channel.LOG, 0, 0, b"xyz")]


def test_parser_waits_for_a_whole_header():
    recorder = Recorder()
    parser = channel.FrameParser(recorder)
    data = channel.frame(channel.REPLY, b"payload", 0, 77)
    for i in range(9):
        parser.feed(data[i : i + 1])
    assert recorder.events == []
    parser.feed(data[9:10])
    assert recorder.events == [("started", channel.REPLY, 0, 77, 7)]


def test_collector_gives_whole_frames_to_callback():
    data = (
        channel.json_frame(channel.LOAD, {"module": "laser"}, request_id=1)
        + channel.frame(channel.CALL, b'{"call": 1}\n{"name": "x"}', channel.PLAIN, 2)
        + channel.frame(channel.STOP)
    )
    assert collect([data]) == [
        (channel.LOAD, 0, 1, b'{"module": "laser"}'),
        (channel.CALL, channel.PLAIN, 2, b'{"call": 1}\n{"name": "x"}'),
        (channel.STOP, 0, 0, b""),
    ]


@settings(max_examples=500)
@given(frame_specs, st.data())
def test_any_chunking_gives_the_same_frames_in_order(specs, data):
    stream = encode_frames(specs)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    chunks = split_at(stream, cuts)
    assert b"".join(chunks) == stream

    recorder = Recorder()
    parser = channel.FrameParser(recorder)
    for chunk in chunks:
        parser.feed(chunk)
    assert frames_from_events(recorder) == specs_as_frames(specs)
    assert collect(chunks) == specs_as_frames(specs)


@settings(max_examples=200)
@given(frame_specs)
def test_one_byte_chunks_give_the_same_frames_in_order(specs):
    stream = encode_frames(specs)
    chunks = [stream[i : i + 1] for i in range(len(stream))]
    assert collect(chunks) == specs_as_frames(specs)


@settings(max_examples=200)
@given(frame_specs)
def test_one_feed_of_everything_gives_the_same_frames_in_order(specs):
    assert collect([encode_frames(specs)]) == specs_as_frames(specs)


@settings(max_examples=300)
@given(frame_specs, st.data())
def test_frame_data_chunks_are_bytes_that_concatenate_to_the_payload(specs, data):
    stream = encode_frames(specs)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    recorder = Recorder()
    parser = channel.FrameParser(recorder)
    for chunk in split_at(stream, cuts):
        parser.feed(chunk)
    assert all(type(chunk) is bytes for chunk in recorder.chunks)
    assert b"".join(recorder.chunks) == b"".join(spec[3] for spec in specs)
    assert frames_from_events(recorder) == specs_as_frames(specs)


BIG = os.urandom(1 << 20)


def big_stream_specs():
    return [
        (channel.CALL, channel.PLAIN, 1, b'{"meta": 1}\n{"name": "x"}'),
        (channel.REPLY, 0, 1, BIG),
        (channel.LOG, 0, 0, b""),
        (channel.REPLY, channel.PLAIN | channel.ERROR, 2, b"x" * 10),
        (channel.STOP, 0, 0, b""),
    ]


BIG_STREAM = encode_frames(big_stream_specs())


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, len(BIG_STREAM)), max_size=60))
def test_large_payload_survives_any_chunking(cuts):
    chunks = split_at(BIG_STREAM, cuts)
    frames = collect(chunks)
    assert [frame[:3] for frame in frames] == [spec[:3] for spec in big_stream_specs()]
    assert frames == specs_as_frames(big_stream_specs())


@pytest.mark.parametrize("size", [1, 7, 4096, 65536, 1 << 20])
def test_large_payload_in_fixed_size_reads(size):
    chunks = [BIG_STREAM[i : i + size] for i in range(0, len(BIG_STREAM), size)]
    if size == 1:
        # A million one-byte reads is slow; cover the header bytes one at a
        # time and the rest in pipe-sized pieces.
        chunks = [BIG_STREAM[i : i + 1] for i in range(64)] + [
            BIG_STREAM[i : i + 65536] for i in range(64, len(BIG_STREAM), 65536)
        ]
    assert collect(chunks) == specs_as_frames(big_stream_specs())


def test_chunk_inside_a_long_payload_is_passed_through_without_copying():
    recorder = Recorder()
    parser = channel.FrameParser(recorder)
    payload = os.urandom(300_000)
    parser.feed(channel.header(channel.REPLY, len(payload), 0, 4) + payload[:1000])
    middle = payload[1000:200_000]
    parser.feed(middle)
    assert recorder.chunks[-1] is middle
    last = payload[200_000:]  # exactly the rest: still inside the payload
    parser.feed(last)
    assert recorder.chunks[-1] is last
    assert recorder.events[-1] == ("ended",)
    assert b"".join(recorder.chunks) == payload
    # and the parser is back to reading headers
    parser.feed(channel.frame(channel.LOG, b"next"))
    assert frames_from_events(recorder) == [
        (channel.REPLY, 0, 4, payload),
        (channel.LOG, 0, 0, b"next"),
    ]


@settings(max_examples=100)
@given(st.integers(1, 5000), st.lists(st.integers(1, 5000), max_size=40))
def test_every_read_wholly_inside_a_payload_is_the_same_object(length, cuts):
    payload = os.urandom(length)
    recorder = Recorder()
    parser = channel.FrameParser(recorder)
    parser.feed(channel.header(channel.REPLY, len(payload)))
    points = sorted({c for c in cuts if c < length} | {0, length})
    for start, end in zip(points, points[1:], strict=False):
        chunk = payload[start:end]
        parser.feed(chunk)
        assert recorder.chunks[-1] is chunk
    assert recorder.events[-1] == ("ended",)
    assert b"".join(recorder.chunks) == payload


def test_collector_joins_a_payload_fed_apart_from_its_header():
    frames = []
    parser = channel.FrameParser(channel.FrameCollector(lambda *a: frames.append(a)))
    payload = os.urandom(100_000)
    parser.feed(channel.header(channel.REPLY, len(payload), channel.PLAIN, 8))
    parser.feed(payload)
    assert frames == [(channel.REPLY, channel.PLAIN, 8, payload)]
