"""The wire codec: client lines to messages and replies to lines (no I/O).

A message is ``quote_plus(json)`` on one line, or plain JSON when the line's
first non-blank character is ``{`` (for telnet and nc users).  Every reply is
``{"response": R, "error": E, "traceback": T}`` in the mode of the line it
answers.

This file is standard-library only and runs in worker children too, which
may use another (older) Python: no Twisted, no imports from the package,
syntax that Python 3.7 accepts.
"""

from __future__ import annotations

import binascii
import json
import math
import re

# Bytes that quote_plus leaves alone (urllib.parse._ALWAYS_SAFE); the rest
# become %XX with upper-case hex, and the space becomes "+".
SAFE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~"

# quote_plus below makes one bytes.replace pass per distinct unsafe byte; JSON
# with ensure_ascii has fewer than 40 of them.  Past this, urllib is cheaper.
_MAX_REPLACE_PASSES = 48

# Fewer escapes than one per this many bytes: find them and join once
# (each replace or translate pass allocates a whole new buffer, and fresh
# memory costs page faults); more: whole-buffer C passes.
_SPARSE = 256

_AS_QUOTED_PRINTABLE = bytes.maketrans(b"%+", b"= ")
_PLAIN = re.compile(rb"[ \t]*\{")


class DecodeError(ValueError):
    """A line that is not a JSON message."""


def quote_plus(data: bytes) -> bytes:
    """Return ``urllib.parse.quote_plus(data)`` as bytes, byte for byte.

    urllib maps every byte through a Python-level lookup (about 30 MB/s).
    Here, when the bytes to escape are few (a long string), their places are
    found with ``find`` and the result is joined once; when they are many
    (JSON numbers), each distinct one costs a C-level ``bytes.replace``
    pass.  Either way, large replies are 10-50 times faster.
    """
    unsafe = data.translate(None, SAFE)
    if not unsafe:
        return data
    present = set()
    rest = unsafe
    while rest:
        byte = rest[:1]
        present.add(byte)
        if len(present) > _MAX_REPLACE_PASSES:
            import urllib.parse  # a rare case: not worth its import in every worker

            return urllib.parse.quote_plus(data).encode("ascii")
        rest = rest.replace(byte, b"")
    if len(unsafe) * _SPARSE < len(data):
        return _quote_sparse(data, present)
    # "%" first, so that the escapes added later are not escaped again;
    # the space last, so that the "+" it becomes is not taken for a "+".
    if b"%" in present:
        data = data.replace(b"%", b"%25")
    for byte in present - {b"%", b" "}:
        data = data.replace(byte, _ESCAPE[byte[0]])
    if b" " in present:
        data = data.replace(b" ", b"+")
    return data


# The escape of each byte, as quote_plus writes it.
_ESCAPE = [b"%%%02X" % i for i in range(256)]
_ESCAPE[0x20] = b"+"


def _places(data: bytes, bytes_: set) -> list:
    """Where in ``data`` each of ``bytes_`` occurs, in order (memchr, no copies)."""
    places = []
    for byte in bytes_:
        at = data.find(byte)
        while at >= 0:
            places.append(at)
            at = data.find(byte, at + 1)
    places.sort()
    return places


def _quote_sparse(data: bytes, present: set) -> bytes:
    view, pieces, start = memoryview(data), [], 0
    for at in _places(data, present):
        pieces.append(view[start:at])
        pieces.append(_ESCAPE[data[at]])
        start = at + 1
    pieces.append(view[start:])
    return b"".join(pieces)


def unquote_plus(data: bytes) -> str:
    """Decode a ``quote_plus`` line the way ``urllib.parse.unquote_plus`` does.

    "+" is a space, "%XX" a byte (either hex case), a malformed escape is
    kept as it is, and the bytes are read as UTF-8 with invalid sequences
    replaced.  Two fast paths, both exact, and urllib for anything unusual:

    - few escapes (a long string): jump from "%" to "%" and join the runs
      between them, copying the text once;
    - many escapes (JSON numbers): translate to quoted-printable ("%" to
      "=", its own "=" escaped) for ``binascii.a2b_qp`` in C.  Each
      well-formed escape then shortens the text by exactly two bytes, and
      nothing else shortens it that much, so a length check proves it right.
    """
    percents = data.count(b"%")
    if not percents:
        return data.replace(b"+", b" ").decode("utf-8", "replace")
    if percents * _SPARSE < len(data):
        raw = _unquote_sparse(data.replace(b"+", b" ") if b"+" in data else data)
    elif b"\n" not in data and b"\r" not in data:  # a2b_qp would see soft line breaks
        raw = _unquote_dense(data, percents)
    else:
        raw = None
    if raw is None:
        import urllib.parse  # malformed escapes: rare, and urllib is the reference

        raw = urllib.parse.unquote_to_bytes(data.replace(b"+", b" "))
    return raw.decode("utf-8", "replace")


_HEX = {b"%02x" % i: bytes((i,)) for i in range(256)}
_HEX.update({b"%02X" % i: bytes((i,)) for i in range(256)})
_HEX.update({b"%X%x" % (i >> 4, i & 15): bytes((i,)) for i in range(256)})
_HEX.update({b"%x%X" % (i >> 4, i & 15): bytes((i,)) for i in range(256)})


def _unquote_sparse(data: bytes):
    """Decode "%XX" escapes that are few and far between; None if one is malformed."""
    view, pieces, start = memoryview(data), [], 0
    at = data.find(b"%")
    while at >= 0:
        byte = _HEX.get(data[at + 1 : at + 3])
        if byte is None:
            return None
        pieces.append(view[start:at])
        pieces.append(byte)
        start = at + 3
        at = data.find(b"%", start)
    pieces.append(view[start:])
    return b"".join(pieces)


def _unquote_dense(data: bytes, percents: int):
    """Decode many "%XX" escapes (and "+") with a2b_qp; None if any is malformed."""
    equals = data.count(b"=") if b"=" in data else 0  # "in" is a quick memchr
    text = data.replace(b"=", b"=3D") if equals else data
    raw = binascii.a2b_qp(text.translate(_AS_QUOTED_PRINTABLE))
    return raw if len(raw) == len(text) - 2 * (percents + equals) else None


def is_plain(line: bytes) -> bool:
    """True when ``line`` is plain JSON (first non-blank character ``{``)."""
    return _PLAIN.match(line) is not None


def looks_url_encoded(line: bytes) -> bool:
    """True when ``line`` could be a URL-encoded message: it has a ``%XX`` escape
    and nothing quote_plus never writes (a space, a quote, a brace)."""
    return b"%" in line and not line.translate(None, SAFE + b"%+")


def decode_line(line: bytes) -> tuple[object, bool]:
    """Decode one line (without its delimiter) into ``(message, plain)``."""
    plain = is_plain(line)
    try:
        message = json.loads(line if plain else unquote_plus(line))
    except ValueError as exc:
        raise DecodeError("message is not valid JSON: %s" % (exc,)) from None
    return message, plain


def _to_json(value):
    """``json.dumps`` default: numpy arrays and scalars (and array.array)."""
    tolist = getattr(value, "tolist", None)
    if tolist is not None and callable(tolist):
        return tolist()
    raise TypeError("values of type %r cannot be sent as JSON" % type(value).__name__)


def _finite(value):
    """``value`` with NaN and infinities replaced by None, containers walked."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    tolist = getattr(value, "tolist", None)
    if tolist is not None and callable(tolist):
        return _finite(tolist())
    return value


def reply_body(response, error: bool = False, traceback: str = "", plain: bool = False, extra=None):
    """Encode a reply without its newline (the caller writes that separately).

    NaN and infinities become null: JSON has no such numbers, and MATLAB's
    jsondecode reads null in a numeric array as NaN.  Raises TypeError or
    ValueError when ``response`` cannot be encoded.  ``extra``: fields after
    the three every reply has, for a client that asked for them.
    """
    reply = {"response": response, "error": error, "traceback": traceback, **(extra or {})}
    try:
        text = json.dumps(reply, default=_to_json, allow_nan=False)
    except ValueError as exc:
        if "Out of range float" not in str(exc):
            raise  # a circular reference, say
        reply["response"] = _finite(response)
        text = json.dumps(reply, default=_to_json, allow_nan=False)
    data = text.encode("ascii")
    return data if plain else quote_plus(data)


def encode_watch(message: dict, plain: bool = False) -> bytes:
    """One line of a watch (``{"time": t, "value": v}`` or an error), newline included."""
    try:
        text = json.dumps(message, default=_to_json, allow_nan=False)
    except ValueError as exc:
        if "Out of range float" not in str(exc):
            raise
        text = json.dumps(_finite(message), default=_to_json, allow_nan=False)
    data = text.encode("ascii")
    return (data if plain else quote_plus(data)) + b"\n"


def encode_reply(
    response, error: bool = False, traceback: str = "", plain: bool = False, extra=None
):
    """Encode a whole reply line, newline included."""
    return reply_body(response, error, traceback, plain, extra) + b"\n"


def one_line(text: str) -> str:
    """Fold a message onto one line: clients print the reason as a string."""
    return " ".join(text.splitlines()).strip()


def error_reason(kind: str, message: str = "") -> str:
    """The one-line reason of an error reply: ``"Kind: message"``."""
    message = one_line(message)
    return "%s: %s" % (kind, message) if message else kind


def exception_reason(exc: BaseException) -> str:
    """The one-line reason for an exception: its type name and message."""
    return error_reason(type(exc).__name__, str(exc))


def encode_error(reason: str, traceback: str, plain: bool = False) -> bytes:
    """Encode an error reply line; ``traceback`` is never empty on errors."""
    return encode_reply(reason, True, traceback or reason + "\n", plain)
