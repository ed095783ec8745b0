"""Binary segments: arrays and bytes as raw bytes after a line (no I/O).

On a connection whose client asked for it (``"binary": 1``), a value that
is an array or bytes does not become JSON text: the line holds a small
description in its place and the raw bytes follow the line, in order::

    {"$bin": 0, "dtype": "<f8", "shape": [1000000], "nbytes": 8000000}
    {"$bin": 1, "dtype": "bytes", "nbytes": 5}

and the line's top-level object lists every segment's length, so whoever
relays it need not read the descriptions: ``"segments": [8000000, 5]``.
docs/protocol.md has the whole exchange, byte by byte.

``dtype`` is numpy's array-interface type string (byte order, kind, item
size): kinds ``b`` (bool), ``i``, ``u``, ``f`` and ``c``, nothing else, so
nothing is ever pickled.  Arrays travel C-ordered (others are made
contiguous once, by ``memoryview.tobytes``).

Standard-library only, Python 3.7 syntax: workers load this file by path,
and describe arrays through ``__array_interface__`` and the buffer
protocol without importing numpy.
"""

from __future__ import annotations

import json
import math
import re

KEY = "$bin"
BYTES = "bytes"

# The most segments one line may announce, and the most dimensions an array may have.
MAX_SEGMENTS = 100000
MAX_DIMS = 32

_DTYPE = re.compile(r"\A[<>|=]([biufc])([0-9]{1,2})\Z")
_SIZES = {
    "b": (1,),
    "i": (1, 2, 4, 8),
    "u": (1, 2, 4, 8),
    "f": (2, 4, 8, 12, 16),
    "c": (8, 16, 24, 32),
}


class BinaryError(ValueError):
    """A segment or its description that does not hold together."""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def itemsize(dtype) -> int:
    """The item size of an array dtype string; BinaryError if it is not one we carry."""
    match = _DTYPE.match(dtype) if isinstance(dtype, str) else None
    if match is None or int(match.group(2)) not in _SIZES[match.group(1)]:
        raise BinaryError(
            "unknown dtype %s: arrays travel as numeric or bool dtypes such as "
            '"<f8", "|u1", "|b1" (never objects)' % _shown(dtype)
        )
    return int(match.group(2))


def segment_sizes(value, limit: int) -> list:
    """The ``segments`` list of a line, checked: lengths in bytes, their sum at most ``limit``."""
    if not isinstance(value, list):
        raise BinaryError('"segments" must be a list of byte counts, not %s' % _shown(value))
    if len(value) > MAX_SEGMENTS:
        raise BinaryError(
            "%d segments are more than the %d a line may carry" % (len(value), MAX_SEGMENTS)
        )
    total = 0
    for size in value:
        if not _is_int(size) or size < 0:
            raise BinaryError(
                "a segment's byte count must be a whole number >= 0, not %s" % _shown(size)
            )
        total += size
        if total > limit:
            raise BinaryError(
                "the segments hold more than %d bytes, the most this server accepts "
                "(--max-request)" % limit
            )
    return value


def check(desc: dict, sizes, used: set) -> int:
    """The segment index that ``desc`` describes, checked against ``sizes``."""
    index = desc.get(KEY)
    if not _is_int(index) or not 0 <= index < len(sizes):
        raise BinaryError(
            '"$bin" must name one of the %d segments sent (0 to %d), not %s'
            % (len(sizes), len(sizes) - 1, _shown(index))
        )
    if index in used:
        raise BinaryError("segment %d is described twice" % index)
    used.add(index)
    nbytes = desc.get("nbytes")
    if not _is_int(nbytes) or nbytes < 0:
        raise BinaryError('"nbytes" of segment %d must be a whole number >= 0' % index)
    if nbytes != sizes[index]:
        raise BinaryError(
            "segment %d is described as %d bytes but %d were sent" % (index, nbytes, sizes[index])
        )
    dtype = desc.get("dtype")
    if dtype == BYTES:
        return index
    size = itemsize(dtype)
    shape = desc.get("shape")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS:
        raise BinaryError(
            '"shape" of segment %d must be a list of at most %d sizes' % (index, MAX_DIMS)
        )
    count = 1
    for n in shape:
        if not _is_int(n) or n < 0:
            raise BinaryError('"shape" of segment %d holds %s, not a size' % (index, _shown(n)))
        count *= n
    if count * size != nbytes:
        raise BinaryError(
            "segment %d: %s of dtype %s is %d bytes, not the %d declared"
            % (index, shape, dtype, count * size, nbytes)
        )
    return index


def _shown(value, limit: int = 40) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# Encoding -------------------------------------------------------------------------


class RawArray:
    """An array without numpy: its bytes, numpy dtype string and shape.

    Array arguments reach a module as these when its Python has no numpy;
    ``numpy.asarray(raw)`` makes an array of one, and a module may return
    one (it travels back as the array it describes).
    """

    __slots__ = ("data", "dtype", "shape")

    def __init__(self, data, dtype: str, shape) -> None:
        self.data = data
        self.dtype = dtype
        self.shape = tuple(shape)

    @property
    def __array_interface__(self) -> dict:
        return {"version": 3, "typestr": self.dtype, "shape": self.shape, "data": self.data}

    def __repr__(self) -> str:
        return "RawArray(dtype=%r, shape=%r, %d bytes)" % (self.dtype, self.shape, len(self.data))


class Encoder:
    """``json.dumps`` default hook: arrays and bytes become segments, in order."""

    def __init__(self) -> None:
        self.segments = []  # buffers (memoryviews or bytes), C-contiguous

    def sizes(self) -> list:
        return [memoryview(s).nbytes for s in self.segments]

    def _add(self, buffer, desc: dict) -> dict:
        described = {KEY: len(self.segments)}
        described.update(desc)
        self.segments.append(buffer)
        return described

    def default(self, value):
        if isinstance(value, (bytes, bytearray, memoryview)):
            view = memoryview(value)
            buffer = view if view.c_contiguous else view.tobytes()
            return self._add(buffer, {"dtype": BYTES, "nbytes": view.nbytes})
        interface = getattr(value, "__array_interface__", None)
        if isinstance(interface, dict):
            return self._array(value, interface)
        tolist = getattr(value, "tolist", None)  # array.array and the like
        if tolist is not None and callable(tolist):
            return tolist()
        raise TypeError("values of type %r cannot be sent" % type(value).__name__)

    def _array(self, value, interface: dict):
        typestr = interface.get("typestr")
        shape = list(interface.get("shape") or ())
        if not isinstance(typestr, str) or typestr[1:2] == "O" or _has_objects(interface):
            raise TypeError("arrays of Python objects are never pickled")
        carried = _DTYPE.match(typestr) is not None
        tolist = getattr(value, "tolist", None)
        if not carried or (not shape and typestr[1] != "c"):
            # Strings, dates, structured arrays, and numeric scalars: as JSON, as before.
            if tolist is None:
                raise TypeError("arrays of dtype %s cannot be sent" % typestr)
            return tolist()
        itemsize(typestr)
        if isinstance(value, RawArray):
            view = memoryview(value.data)
        else:
            view = memoryview(value)
        buffer = view if view.c_contiguous else view.tobytes()
        return self._add(buffer, {"dtype": typestr, "shape": shape, "nbytes": view.nbytes})


def _has_objects(interface: dict) -> bool:
    descr = interface.get("descr")
    if not isinstance(descr, list):
        return False
    return any("O" in str(field[1]) for field in descr if len(field) > 1)


def _finite(value):
    """``value`` with NaN and infinities as None, arrays and bytes left as they are."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dumps(obj: dict, encoder: Encoder) -> str:
    """JSON text of the object ``obj`` with its arrays and bytes as descriptions,
    and a ``segments`` key listing their lengths if there are any."""
    try:
        text = json.dumps(obj, default=encoder.default, allow_nan=False)
    except ValueError as exc:
        if "Out of range float" not in str(exc):
            raise
        encoder.segments = []
        text = json.dumps(_finite(obj), default=encoder.default, allow_nan=False)
    if encoder.segments:
        text = text[:-1] + ', "segments": %s}' % json.dumps(encoder.sizes())
    return text


def encode_reply(response, quote=None):
    """``(line, segments)`` of a successful binary reply; ``quote``: quote_plus, or None
    for a plain-JSON line. The line ends with its newline."""
    encoder = Encoder()
    text = dumps({"response": response, "error": False, "traceback": ""}, encoder)
    data = text.encode("ascii")
    return (quote(data) if quote is not None else data) + b"\n", encoder.segments


# Decoding -------------------------------------------------------------------------


def numpy_rebuild(numpy):
    """A ``rebuild`` for ``loads`` that makes numpy arrays (writable where the buffer is)."""

    def rebuild(desc: dict, view):
        if desc["dtype"] == BYTES:
            return bytes(view)
        array = numpy.frombuffer(view, dtype=numpy.dtype(desc["dtype"]))
        return array.reshape(desc["shape"])

    return rebuild


def raw_rebuild(desc: dict, view):
    """A ``rebuild`` without numpy: bytes, and RawArray for arrays."""
    if desc["dtype"] == BYTES:
        return bytes(view)
    return RawArray(bytes(view), desc["dtype"], desc["shape"])


def loads(text, sizes: list, buffer, rebuild):
    """Parse ``text``, putting in place of each description the value ``rebuild``
    makes of its segment (a slice of ``buffer``, which holds them all in order).
    BinaryError if the descriptions and the segments do not match one to one."""
    view = memoryview(buffer)
    if view.nbytes != sum(sizes):
        raise BinaryError("%d bytes of segments were sent, not %d" % (view.nbytes, sum(sizes)))
    starts, at = [], 0
    for size in sizes:
        starts.append(at)
        at += size
    used = set()

    def hook(obj: dict):
        if KEY not in obj:
            return obj
        index = check(obj, sizes, used)
        start = starts[index]
        return rebuild(obj, view[start : start + sizes[index]])

    value = json.loads(text, object_hook=hook)
    if len(used) != len(sizes):
        raise BinaryError(
            "%d segments were sent but %d are described in the line" % (len(sizes), len(used))
        )
    return value
