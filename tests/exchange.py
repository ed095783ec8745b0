"""Recorded exchanges: what clients that never ask for binary segments send and get.

Each session is the lines one client sends on one connection, written as
the MATLAB ``hwserver`` class (Java's URLEncoder over compact JSON), the
original ``client.py`` (``quote_plus(json.dumps(...))``) and a person
with ``nc`` (plain JSON) write them.  ``tests/test_e2e_recorded.py`` plays
them against today's server and compares every byte received with the
bytes recorded from the server before binary segments existed
(tests/data/recorded_exchange.json).  To record them again from another
checkout (its modserver package first on PYTHONPATH)::

    python -m tests.exchange RECORD_FROM_DIR
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sys
import tempfile
import urllib.parse
from pathlib import Path

CONFIG = {"basic": ["basic", "Basic", None], "arrays": ["arrays", "Arrays", None]}
RECORDING = Path(__file__).parent / "data" / "recorded_exchange.json"


def matlab(obj) -> bytes:
    safe = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-*_"
    text = json.dumps(obj, separators=(",", ":")).encode()
    return "".join(chr(b) if b in safe else "+" if b == 32 else f"%{b:02X}" for b in text).encode()


def original(obj) -> bytes:
    return urllib.parse.quote_plus(json.dumps(obj)).encode()


def nc(obj) -> bytes:
    return json.dumps(obj).encode()


def _calls(encode, module: str, calls: list) -> list[bytes]:
    lines = [encode({"name": module})]
    for i, (function, args) in enumerate(calls):
        last = i == len(calls) - 1
        lines.append(encode({"function": function, "args": args, "keep_alive": not last}))
    return [line + b"\n" for line in lines]


ARRAY_CALLS = [
    ("floats", [4]),
    ("frame", [2, 3]),
    ("with_nan", []),
    ("echo", [[1, "two", {"three": 3.5}]]),
    ("kinds", []),  # bytes inside: today's "cannot be sent as JSON" error, which closes
]
BASIC_CALLS = [("add", [1, 2]), ("array", [5]), ("scalars", []), ("pair", []), ("_private", [])]

SESSIONS = {
    "matlab_arrays": _calls(matlab, "arrays", ARRAY_CALLS),
    "matlab_basic": _calls(matlab, "basic", BASIC_CALLS),
    "original_arrays": _calls(original, "arrays", ARRAY_CALLS),
    "original_basic": _calls(original, "basic", BASIC_CALLS),
    "nc_arrays": _calls(nc, "arrays", ARRAY_CALLS),
    "nc_basic": _calls(nc, "basic", BASIC_CALLS),
    "nc_modules": [b'{"name": "_get_modules"}\n'],
    "original_unknown": [original({"name": "nosuch"}) + b"\n"],
    "nc_not_json": [b"hello there\n"],
}


def play(port: int, lines: list[bytes], timeout: float = 15.0) -> bytes:
    """Send each line once the previous reply has come; every byte received, to the close."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        for line in lines:
            sock.sendall(line)
            while received.count(b"\n") < lines.index(line) + 1:
                data = sock.recv(1 << 16)
                if not data:
                    return received
                received += data
        while True:
            data = sock.recv(1 << 16)
            if not data:
                return received
            received += data


def play_all(port: int) -> dict:
    return {
        name: {
            "sent": [line.decode() for line in lines],
            "received": base64.b64encode(play(port, lines)).decode(),
        }
        for name, lines in SESSIONS.items()
    }


def main() -> None:
    """Record the sessions from the checkout given (run from this repository's root)."""
    sys.path.insert(0, str(Path(__file__).parent.parent))
    from tests.helpers import ServerProcess

    source = Path(sys.argv[1]).resolve()
    os.environ["PYTHONPATH"] = str(source)
    with tempfile.TemporaryDirectory() as tmp:
        with ServerProcess(Path(tmp), CONFIG).start() as srv:
            recorded = play_all(srv.port)
    RECORDING.parent.mkdir(exist_ok=True)
    RECORDING.write_text(json.dumps(recorded, indent=1) + "\n")
    print(f"recorded {len(recorded)} sessions from {source} into {RECORDING}")


if __name__ == "__main__":
    main()
