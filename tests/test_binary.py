"""binary.py: arrays and bytes as segments, described in JSON (no I/O).

Round trips of every kind that travels, one clear BinaryError for each way
a description and its segments can disagree, and property tests: whatever
a line and its bytes hold, decoding gives a value or a BinaryError.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from twisted.internet.testing import StringTransport

from modserver.net.lines import ChunkedLineReceiver
from modserver.wire import binary

REBUILD = binary.numpy_rebuild(np)


def round_trip(value):
    """Encode ``value`` as a request would be, and decode it as the worker does."""
    encoder = binary.Encoder()
    text = binary.dumps({"args": [value]}, encoder)
    sizes = json.loads(text).get("segments", [])
    buffer = bytearray(b"".join(bytes(memoryview(s)) for s in encoder.segments))
    return binary.loads(text, sizes, buffer, REBUILD)["args"][0], text


DTYPES = st.sampled_from(
    ["<f8", ">f8", "<f4", "<f2", "|b1", "|u1", "|i1", "<u2", ">i4", "<i8", "<u8", "<c8", ">c16"]
)


@settings(max_examples=200, deadline=None)
@given(
    DTYPES.flatmap(
        lambda d: hnp.arrays(
            np.dtype(d), hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5)
        )
    )
)
def test_any_numeric_array_comes_back_equal(array):
    back, text = round_trip(array)
    assert isinstance(back, np.ndarray)
    assert back.dtype == array.dtype and back.shape == array.shape
    assert back.tobytes() == np.ascontiguousarray(array).tobytes()
    assert back.flags.writeable


@pytest.mark.parametrize(
    "array",
    [
        np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        np.arange(20, dtype="<i2")[::3],
        np.arange(24).reshape(2, 3, 4).transpose(2, 0, 1),
        np.zeros((0, 5)),
    ],
    ids=["fortran", "strided", "transposed", "empty"],
)
def test_any_order_arrives_c_ordered_and_equal(array):
    back, _ = round_trip(array)
    assert np.array_equal(back, array) and back.flags.c_contiguous


def test_bytes_and_nested_values():
    value = {"a": [b"\x00\n", bytearray(b"ba"), memoryview(b"mv")], "b": {"c": np.ones(2, bool)}}
    back, text = round_trip(value)
    assert back["a"] == [b"\x00\n", b"ba", b"mv"]
    assert back["b"]["c"].tolist() == [True, True]
    assert json.loads(text)["segments"] == [2, 2, 2, 2]


def test_scalars_travel_as_numbers_except_complex():
    back, text = round_trip([np.float32(1.5), np.int64(7), np.bool_(True), np.complex64(1 - 2j)])
    assert back[:3] == [1.5, 7, True]
    assert back[3].dtype == np.complex64 and back[3][()] == 1 - 2j
    assert json.loads(text)["segments"] == [8]


def test_no_segments_no_segments_key():
    encoder = binary.Encoder()
    text = binary.dumps({"response": [1, "a"], "error": False, "traceback": ""}, encoder)
    assert text == json.dumps({"response": [1, "a"], "error": False, "traceback": ""})


def test_nan_in_plain_numbers_is_null_and_arrays_keep_it():
    line, segments = binary.encode_reply([float("nan"), np.array([np.nan])])
    reply = json.loads(line)
    assert reply["response"][0] is None
    assert np.isnan(np.frombuffer(bytes(segments[0]))[0])


@pytest.mark.parametrize(
    "value",
    [np.array([1, "a"], dtype=object), np.zeros(2, dtype=[("a", "<f8"), ("b", "O")])],
    ids=["object", "structured-with-objects"],
)
def test_objects_are_never_sent(value):
    with pytest.raises(TypeError, match="never pickled"):
        binary.encode_reply(value)


def test_without_numpy_arrays_arrive_raw_and_go_back():
    encoder = binary.Encoder()
    text = binary.dumps({"args": [np.arange(3, dtype="<i4")]}, encoder)
    raw = binary.loads(text, [12], bytearray(bytes(encoder.segments[0])), binary.raw_rebuild)
    array = raw["args"][0]
    assert isinstance(array, binary.RawArray)
    assert (array.dtype, array.shape, array.data) == ("<i4", (3,), bytes(encoder.segments[0]))
    assert np.asarray(array).tolist() == [0, 1, 2]
    line, segments = binary.encode_reply(array)
    assert json.loads(line)["response"]["dtype"] == "<i4"


def desc(index=0, dtype="<f8", shape=(2,), nbytes=16):
    return {"$bin": index, "dtype": dtype, "shape": list(shape), "nbytes": nbytes}


@pytest.mark.parametrize(
    "description, sizes, message",
    [
        (desc(nbytes=8), [8], "is 16 bytes, not the 8 declared"),
        (desc(nbytes=16), [8], "described as 16 bytes but 8 were sent"),
        (desc(index=1), [16], "must name one of the 1 segments"),
        (desc(index=-1), [16], "must name one of the 1 segments"),
        (desc(index=True), [16], "must name one of the 1 segments"),
        (desc(index=0.0), [16], "must name one of the 1 segments"),
        (desc(dtype="|O8"), [16], "unknown dtype"),
        (desc(dtype="<x8"), [16], "unknown dtype"),
        (desc(dtype="<f3"), [16], "unknown dtype"),
        (desc(dtype=5), [16], "unknown dtype"),
        (desc(shape=(-2,), nbytes=16), [16], "not a size"),
        (desc(shape=(2.0,)), [16], "not a size"),
        ({"$bin": 0, "dtype": "<f8", "shape": 2, "nbytes": 16}, [16], "must be a list"),
        ({"$bin": 0, "dtype": "<f8", "shape": [2], "nbytes": "16"}, [16], "whole number"),
        (desc(shape=[1] * 40, nbytes=8), [8], "at most 32"),
        (desc(shape=(2**62, 2**62)), [16], "not the 16 declared"),
    ],
)
def test_each_bad_description_gets_one_clear_error(description, sizes, message):
    text = json.dumps({"args": [description], "segments": sizes})
    with pytest.raises(binary.BinaryError, match=message):
        binary.loads(text, sizes, bytearray(sum(sizes)), REBUILD)


def test_a_segment_described_twice_or_never():
    twice = json.dumps({"args": [desc(), desc()]})
    with pytest.raises(binary.BinaryError, match="described twice"):
        binary.loads(twice, [16], bytearray(16), REBUILD)
    never = json.dumps({"args": [desc()]})
    with pytest.raises(binary.BinaryError, match="2 segments were sent but 1"):
        binary.loads(never, [16, 4], bytearray(20), REBUILD)
    with pytest.raises(binary.BinaryError, match="bytes of segments were sent"):
        binary.loads(never, [16], bytearray(15), REBUILD)


@pytest.mark.parametrize(
    "sizes, message",
    [
        ({"a": 1}, "must be a list"),
        ([-1], ">= 0"),
        ([1.5], ">= 0"),
        ([True], ">= 0"),
        (["8"], ">= 0"),
        ([2**70], "more than 1000 bytes"),
        ([600, 600], "more than 1000 bytes"),
        ([0] * (binary.MAX_SEGMENTS + 1), "more than the"),
    ],
)
def test_segment_lists_are_checked(sizes, message):
    with pytest.raises(binary.BinaryError, match=message):
        binary.segment_sizes(sizes, 1000)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)
descriptions = st.fixed_dictionaries(
    {"$bin": json_values | st.integers(-2, 4)},
    optional={
        "dtype": json_values | st.sampled_from(["<f8", "|u1", "bytes", "|O", "<c16", "|b1"]),
        "shape": json_values | st.lists(st.integers(-1, 4), max_size=3),
        "nbytes": json_values | st.integers(-1, 64),
    },
)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(descriptions | json_values, max_size=4),
    st.lists(st.integers(0, 32) | json_values, max_size=4),
    st.binary(max_size=128),
)
def test_any_line_and_bytes_decode_or_fail_clearly(args, sizes, data):
    text = json.dumps({"args": args, "segments": sizes})
    try:
        checked = binary.segment_sizes(sizes, 1 << 20)
        value = binary.loads(text, checked, bytearray(data), REBUILD)
    except binary.BinaryError:
        return
    assert isinstance(value, dict)


# The line receiver's raw mode, which carries a request's segments ----------------


class RawRecorder(ChunkedLineReceiver):
    MAX_LENGTH = 1000

    def __init__(self):
        self.events = []

    def lineReceived(self, line):
        self.events.append(("line", line))
        if line.startswith(b"raw "):
            self.expect_raw(int(line[4:]))

    def raw_received(self, pieces):
        self.events.append(("raw", b"".join(pieces)))


@given(
    st.lists(
        st.one_of(
            st.binary(max_size=30).map(lambda b: ("line", b.replace(b"\n", b""))),
            st.binary(max_size=60).map(lambda b: ("raw", b)),
        ),
        max_size=8,
    ),
    st.lists(st.integers(min_value=0, max_value=800), max_size=20),
)
def test_raw_segments_come_out_whole_however_the_data_is_split(items, cuts):
    data, expected = b"", []
    for kind, payload in items:
        if kind == "line":
            if payload.startswith(b"raw "):
                payload = b"x" + payload
            data += payload + b"\n"
            expected.append(("line", payload))
        else:
            header = b"raw %d" % len(payload)
            data += header + b"\n" + payload
            expected += [("line", header), ("raw", payload)]
    receiver = RawRecorder()
    receiver.makeConnection(StringTransport())
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    for start, end in zip(points, points[1:], strict=False):
        receiver.dataReceived(data[start:end])
    assert receiver.events == expected
    assert receiver.raw_pending() is None


# The server's side of a request with segments, on a StringTransport ----------------------

segment_fields = st.one_of(
    st.lists(st.integers(-3, 40), max_size=4),
    st.lists(json_values, max_size=3),
    json_values,
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.just(1), st.just(0), json_values),
    segment_fields,
    st.binary(max_size=120),
    st.lists(st.integers(min_value=0, max_value=200), max_size=6),
    st.booleans(),
)
def test_any_segments_and_bytes_get_a_call_or_one_error_reply(
    binary_field, segments, data, cuts, half_close
):
    from tests.test_protocol import Client

    client = Client()
    client.send({"name": "laser", "binary": 1})
    client.transport.clear()
    line = {"function": "f", "args": [], "binary": binary_field, "segments": segments}
    stream = json.dumps(line).encode() + b"\n" + data
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    for start, end in zip(points, points[1:], strict=False):
        client.protocol.dataReceived(stream[start:end])
    if half_close:
        client.protocol.readConnectionLost()
    submitted = client.server.modules["laser"].submitted
    replies = client.transport.value().split(b"\n")[:-1]
    if submitted:
        (call,) = submitted
        assert not replies
        assert b"".join(call.segments) == data[: sum(segments)]
    elif replies:
        (reply,) = replies
        assert json.loads(reply)["error"] is True
        assert json.loads(reply)["response"].startswith("BadRequest: ")
    else:  # still waiting for announced bytes that have not all come
        assert isinstance(segments, list) and sum(segments) > len(data) and not half_close
