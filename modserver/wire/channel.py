"""Frames between the server and a worker child (no I/O).

A frame is a 10-byte header (kind, flags, request id, payload length) and
the payload.  Replies travel already encoded in the client's wire form, so
the server can copy them to the client without decoding them; everything
else is small JSON.

Standard-library only: worker children load this file by path, possibly
under an older Python.
"""

from __future__ import annotations

import json
import struct

HEADER = struct.Struct("!BBII")

# server -> worker
LOAD = 1  # JSON: what to import and how to call it
CALL = 2  # JSON meta line, b"\n", then the client's request JSON as received
STOP = 3  # no payload: call __exit__ and leave

# worker -> server
READY = 10  # JSON: pid, files to watch, load time
LOAD_FAILED = 11  # JSON: reason, traceback, files to watch
REPLY = 12  # an encoded client reply line, newline included
LOG = 13  # JSON: one logging record
PUBLISH = 14  # JSON: {"name", "value", "time"}: a value the module publishes itself

# flags
PLAIN = 0x01  # CALL: answer in plain JSON; REPLY: the reply is plain JSON
ERROR = 0x02  # REPLY: an error reply (the client connection closes after it)
BINARY = 0x04  # CALL: the client takes binary segments (binary.py) in its reply

MAX_FRAME = 0xFFFFFFFF


def header(kind: int, length: int, flags: int = 0, request_id: int = 0) -> bytes:
    """The header of a frame whose payload is ``length`` bytes long."""
    if length > MAX_FRAME:
        raise ValueError("frame of %d bytes is too large for the channel" % length)
    return HEADER.pack(kind, flags, request_id, length)


def frame(kind: int, payload: bytes = b"", flags: int = 0, request_id: int = 0) -> bytes:
    """A whole frame (for small payloads; large ones write header then payload)."""
    return header(kind, len(payload), flags, request_id) + payload


def json_frame(kind: int, obj, flags: int = 0, request_id: int = 0) -> bytes:
    """A frame carrying one small JSON object."""
    return frame(kind, json.dumps(obj).encode("utf-8"), flags, request_id)


class FrameParser:
    """Incremental frame parser that streams payloads to a receiver.

    The receiver gets ``frame_started(kind, flags, request_id, length)``,
    then ``frame_data(chunk)`` for each piece of the payload as it arrives,
    then ``frame_ended()``.  Payloads are never gathered here, so a 100 MB
    reply passes through in pipe-sized pieces.
    """

    def __init__(self, receiver) -> None:
        self._receiver = receiver
        self._header = b""
        self._remaining = -1  # payload bytes still due; -1 while in a header

    def feed(self, data: bytes) -> None:
        if not data:
            return
        if len(data) <= self._remaining:
            self._take_payload(data)  # the hot path: a piece of a long payload
            return
        view = memoryview(data)
        while view:
            if self._remaining < 0:
                view = self._take_header(view)
            else:
                view = self._take_payload(view)

    def _take_header(self, view: memoryview) -> memoryview:
        need = HEADER.size - len(self._header)
        self._header += bytes(view[:need])
        view = view[need:]
        if len(self._header) == HEADER.size:
            kind, flags, request_id, length = HEADER.unpack(self._header)
            self._header = b""
            self._remaining = length
            self._receiver.frame_started(kind, flags, request_id, length)
            if length == 0:
                self._end()
        return view

    def _take_payload(self, view):
        chunk = view[: self._remaining]
        self._remaining -= len(chunk)
        self._receiver.frame_data(bytes(chunk))
        if self._remaining == 0:
            self._end()
        return view[len(chunk) :]

    def _end(self) -> None:
        self._remaining = -1
        self._receiver.frame_ended()


class FrameCollector:
    """A FrameParser receiver that gathers whole frames for a callback.

    ``on_frame(kind, flags, request_id, payload)`` is called once per frame.
    """

    def __init__(self, on_frame) -> None:
        self._on_frame = on_frame
        self._start = None
        self._chunks = []

    def frame_started(self, kind: int, flags: int, request_id: int, length: int) -> None:
        self._start = (kind, flags, request_id)
        self._chunks = []

    def frame_data(self, chunk) -> None:
        self._chunks.append(chunk)

    def frame_ended(self) -> None:
        kind, flags, request_id = self._start
        payload, self._chunks = b"".join(self._chunks), []
        self._on_frame(kind, flags, request_id, payload)
