"""What clients send, checked: the hello and the requests of PROTOCOL.md (no I/O).

Whatever a line holds (any JSON value, any nesting depth, numbers too
large for Python, NaN, text that is not UTF-8), these either return what
the server needs or raise one ``ReplyError`` saying what is wrong, so the
client gets one clear ``BadRequest`` reply.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from modserver.wire import binary
from modserver.wire import codec as wire
from modserver.wire.errors import ReplyError, bad_request


class NotJSON(ReplyError):
    """A line whose text is not JSON at all (as opposed to JSON nested too deeply)."""

    def __init__(self, message: str) -> None:
        super().__init__("BadRequest", message)


@dataclass(slots=True)
class Request:
    """A request to the module: ``function`` None means the client leaves.

    Never changed once made (not frozen: a frozen dataclass pays a setattr
    call per field, on every request).
    """

    function: str | None
    keep_alive: bool = False
    timeout: float | None = None
    lease_wait: bool = False  # wait for another's lease to end (bounded by timeout)
    binary: bool = False  # the client asks for binary segments (binary.py)
    segments: tuple[int, ...] = ()  # byte counts of the segments after the line


def decode(line: bytes, plain: bool) -> tuple[object, bytes | str]:
    """``(message, its JSON text)`` of one line; BadRequest if it is not JSON."""
    try:
        text = line if plain else wire.unquote_plus(line)
        return json.loads(text), text
    except RecursionError:
        raise bad_request("the message is nested too deeply to be read") from None
    except ValueError as exc:  # also UnicodeDecodeError, and too many digits
        raise NotJSON(f"message is not valid JSON: {exc}") from None


def hello_name(message) -> str | None:
    """The ``name`` of a hello: a module or a special name, or None for a ping."""
    if not isinstance(message, dict) or "name" not in message:
        raise bad_request(
            'the hello must be a JSON object with a "name" key, like {"name": "_ping"}'
        )
    name = message["name"]
    if name is None:
        return None
    if not isinstance(name, str):
        raise bad_request(f'"name" must be a string or null, not {_shown(name)}')
    _check_text(name, '"name"')
    if not name:
        raise bad_request('"name" is empty: name a module, or "_help" for the list')
    return name


def wants_binary(message) -> bool:
    """The ``binary`` field of a hello or request: 1 or true asks for binary segments."""
    value = message.get("binary", 0) if isinstance(message, dict) else 0
    if value in (0, 1) and not isinstance(value, float):  # True and False too
        return bool(value)
    raise bad_request(f'"binary" must be 1 or 0 (true or false), not {_shown(value)}')


def asks_answer_within(message) -> bool:
    """Does this (checked) hello ask for ``answer_within`` in the module's ack? (ext)"""
    return message.get("answer_within") is True


def request(message, max_segments: int = 2**63) -> Request:
    """A request's fields, checked; segments may hold ``max_segments`` bytes in all."""
    if not isinstance(message, dict):
        raise bad_request('a request must be a JSON object like {"function": "f", "args": []}')
    if "function" not in message:
        raise bad_request('the request has no "function" field')
    function = message["function"]
    if function is None:
        return Request(None)
    if not isinstance(function, str):
        raise bad_request(f'"function" must be a string or null, not {_shown(function)}')
    if not function.isascii():  # (ASCII text holds no lone surrogate)
        _check_text(function, '"function"')
    if "args" in message and not isinstance(message["args"], list):
        raise bad_request('"args" must be a list of arguments')
    keep_alive = message.get("keep_alive", False)
    if not isinstance(keep_alive, bool):
        raise bad_request('"keep_alive" must be true or false')
    lease_wait = message.get("lease_wait", False)
    if not isinstance(lease_wait, bool):
        raise bad_request('"lease_wait" must be true or false')
    segments = ()
    if "segments" in message:
        try:
            segments = tuple(binary.segment_sizes(message["segments"], max_segments))
        except binary.BinaryError as exc:
            raise bad_request(str(exc)) from None
    timeout = message.get("timeout")
    return Request(
        function,
        keep_alive,
        _timeout(timeout) if timeout is not None else None,
        lease_wait,
        wants_binary(message) if "binary" in message else False,
        segments,
    )


def positive_seconds(value) -> bool:
    """True for a JSON number of seconds above zero (not a boolean, NaN or infinite)."""
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and value > 0
    )


def _timeout(value) -> float | None:
    if value is None:
        return None
    if not positive_seconds(value):
        raise bad_request('"timeout" must be a positive number of seconds')
    return float(value)


def _check_text(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(f"{what} holds a lone surrogate, which is not text") from None


def _shown(value, limit: int = 60) -> str:
    """A short JSON view of a value, for an error message."""
    try:
        text = json.dumps(value)
    except (ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
