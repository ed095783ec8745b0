"""What MATLAB's hwserver class sends and needs, byte for byte, against a real server.

The class does ``urlencode(jsonencode(struct(...)))`` then ``fprintf('%s\\n')``
and reads a line, ``jsondecode(urldecode(line))``.  Here:

- ``urlencode`` is Java's URLEncoder: A-Z a-z 0-9 and ``.-*_`` stay, a space
  is ``+``, every other UTF-8 byte is ``%XX`` (upper case);
- ``jsonencode`` writes compact JSON, NaN as null, a 1x1 cell array of one
  value as a one-element list, logicals as true/false;
- ``jsondecode`` accepts standard JSON only (no NaN tokens) and turns null
  inside a numeric array into NaN.
"""

from __future__ import annotations

import json
import math
import socket
import urllib.parse

import pytest

from tests.helpers import ServerProcess

NAN = float("nan")


def java_urlencode(text: str) -> str:
    safe = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-*_"
    return "".join(chr(b) if b in safe else "+" if b == 32 else f"%{b:02X}" for b in text.encode())


def matlab_jsonencode(value) -> str:
    """jsonencode for the values hwserver sends: structs (dicts), cells (lists), NaN."""

    def convert(v):
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, dict):
            return {k: convert(x) for k, x in v.items()}
        if isinstance(v, list):
            return [convert(x) for x in v]
        return v

    return json.dumps(convert(value), separators=(",", ":"))


def matlab_jsondecode(text: str):
    """jsondecode: standard JSON only; null in a numeric array becomes NaN."""

    def refuse(token):
        raise ValueError(f"jsondecode cannot read {token}")

    def convert(v):
        if isinstance(v, list):
            items = [convert(x) for x in v]
            numeric = all(
                x is None or isinstance(x, (int, float)) and not isinstance(x, bool) for x in items
            )
            if numeric and any(x is not None for x in items):
                return [NAN if x is None else x for x in items]
            return items
        if isinstance(v, dict):
            return {k: convert(x) for k, x in v.items()}
        return v

    return convert(json.loads(text, parse_constant=refuse))


class HwServer:
    """The hwserver class's com(), as MATLAB runs it."""

    def __init__(self, port: int) -> None:
        self.port = port

    def _line(self, sock, buffer: bytearray) -> str:
        while b"\n" not in buffer:
            data = sock.recv(4096)
            if not data:
                raise ConnectionError("closed")
            buffer += data
        line, _, rest = bytes(buffer).partition(b"\n")
        buffer[:] = rest
        reply = matlab_jsondecode(urllib.parse.unquote_plus(line.decode("ascii")))
        if reply["error"]:
            raise RuntimeError(f"hwserver error: {reply['response']}\n{reply['traceback']}")
        return reply["response"]

    def com(self, hwname: str, funcname, *varargin):
        handshake = java_urlencode(matlab_jsonencode({"name": hwname}))
        msg = java_urlencode(
            matlab_jsonencode({"function": funcname, "args": list(varargin), "keep_alive": False})
        )
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            buffer = bytearray()
            sock.sendall(handshake.encode() + b"\n")
            assert self._line(sock, buffer) == "ack"
            sock.sendall(msg.encode() + b"\n")
            return self._line(sock, buffer)

    def reload(self, module: str = "") -> str:
        handshake = java_urlencode(matlab_jsonencode({"name": "_reload_" + java_urlencode(module)}))
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(handshake.encode() + b"\n")
            return self._line(sock, bytearray())


@pytest.fixture(scope="module")
def hw(tmp_path_factory):
    config = {"basic": ["basic", "Basic", None], "my laser*": ["basic", "Basic", None]}
    with ServerProcess(tmp_path_factory.mktemp("matlab"), config).start() as srv:
        yield HwServer(srv.port)


def test_encoding_matches_matlab():
    assert matlab_jsonencode({"name": "laser"}) == '{"name":"laser"}'
    assert java_urlencode('{"name":"laser"}') == "%7B%22name%22%3A%22laser%22%7D"
    assert java_urlencode("a~b*c d") == "a%7Eb*c+d"
    request = {"function": "f", "args": [5], "keep_alive": False}
    assert matlab_jsonencode(request) == '{"function":"f","args":[5],"keep_alive":false}'


def test_a_matlab_call_with_mixed_arguments(hw):
    args = ["wave~length*", 795.5, True, [1, 2, 3], "µm", NAN]
    assert hw.com("basic", "echo", *args)[:5] == ["wave~length*", 795.5, True, [1, 2, 3], "µm"]


def test_a_one_element_cell_array_arrives_as_a_one_element_list(hw):
    assert hw.com("basic", "argcount", 5) == 1
    assert hw.com("basic", "add", 2, 3) == 5


def test_matlab_says_goodbye_with_a_nan_function(hw):
    with socket.create_connection(("127.0.0.1", hw.port), timeout=10) as sock:
        sock.sendall(java_urlencode(matlab_jsonencode({"name": "basic"})).encode() + b"\n")
        assert b"ack" in urllib.parse.unquote_plus(sock.recv(4096).decode()).encode()
        abort = {"function": NAN, "args": [], "keep_alive": False}
        sock.sendall(java_urlencode(matlab_jsonencode(abort)).encode() + b"\n")
        assert sock.recv(4096) == b""  # no reply: the server closed


def test_replies_decode_as_jsondecode_needs(hw):
    assert hw.com("basic", "array", 4) == [0.0, 0.25, 0.5, 0.75]
    assert hw.com("basic", "floats", 3) == [0.0, 0.5, 1.0]
    assert hw.com("basic", "pair") == [1, "two"]
    with pytest.raises(RuntimeError, match="hwserver error: ValueError: bad"):
        hw.com("basic", "boom", "bad")


def test_nan_round_trips_as_nan_in_matlab(hw):
    got = hw.com("basic", "echo", 1.0, NAN, 3.0)  # sent as [1.0,null,3.0]
    assert got[0] == 1.0 and math.isnan(got[1]) and got[2] == 3.0


def test_reload_with_a_name_that_urlencode_changes(hw):
    assert hw.reload("my laser*") == 'Reloaded "my laser*"'
    assert hw.reload() == "Reloaded config"


# hw.com('_lease', ...): a hello, an ack, one request, one reply, as com is written.
LEASE_HELLO = b"%7B%22name%22%3A%22_lease%22%7D\n"
LEASE_TAKE = (
    b"%7B%22function%22%3A%22take%22%2C%22args%22%3A%5B%22basic%22%2C600%5D%2C"
    b"%22keep_alive%22%3Afalse%7D\n"
)


def test_matlab_sends_these_bytes_for_a_lease():
    hello = java_urlencode(matlab_jsonencode({"name": "_lease"}))
    take = {"function": "take", "args": ["basic", 600], "keep_alive": False}
    assert hello.encode() + b"\n" == LEASE_HELLO
    assert java_urlencode(matlab_jsonencode(take)).encode() + b"\n" == LEASE_TAKE


def test_the_recorded_lease_exchange_of_hwserver_com(hw):
    with socket.create_connection(("127.0.0.1", hw.port), timeout=10) as sock:
        buffer = bytearray()
        sock.sendall(LEASE_HELLO)
        assert hw._line(sock, buffer) == "ack"
        sock.sendall(LEASE_TAKE)
        lease = hw._line(sock, buffer)
        assert sock.recv(1) == b""  # one reply, then the server closes, as com expects
    assert lease["holder"] == "127.0.0.1" and lease["seconds_left"] == 600
    try:
        assert hw.com("_lease", "show", "basic")["holder"] == "127.0.0.1"
        assert hw.com("_lease", "renew", "basic", 900)["seconds_left"] == 900
        assert hw.com("basic", "add", 2, 3) == 5  # the holder's own calls run
    finally:
        assert hw.com("_lease", "release", "basic") == "Released the lease on basic"
    assert hw.com("_lease", "show", "basic") is None
    with pytest.raises(RuntimeError, match="hwserver error: BadRequest: the lease needs a pos"):
        hw.com("_lease", "take", "basic", NAN)  # NaN arrives as null


# hw.com('_latest', 'MODULE.FUNCTION', args...): the latest value of a watched
# reading and its age, from the server's memory (the instrument is not asked).
LATEST_HELLO = b"%7B%22name%22%3A%22_latest%22%7D\n"
LATEST_ADD = (
    b"%7B%22function%22%3A%22basic.add%22%2C%22args%22%3A%5B2%2C3%5D%2C"
    b"%22keep_alive%22%3Afalse%7D\n"
)


def test_matlab_sends_these_bytes_for_latest():
    hello = java_urlencode(matlab_jsonencode({"name": "_latest"}))
    ask = {"function": "basic.add", "args": [2, 3], "keep_alive": False}
    assert hello.encode() + b"\n" == LATEST_HELLO
    assert java_urlencode(matlab_jsonencode(ask)).encode() + b"\n" == LATEST_ADD


def _status_of_basic(port: int) -> dict:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b'{"name": "_status.basic"}\n')
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)["response"]["modules"]["basic"]


def test_the_recorded_latest_exchange_of_hwserver_com(hw):
    with pytest.raises(RuntimeError, match="hwserver error: NotWatched: nobody watches basic.add"):
        hw.com("_latest", "basic.add", 2, 3)
    with socket.create_connection(("127.0.0.1", hw.port), timeout=10) as watcher:
        watcher.sendall(b'{"name": "_watch"}\n')
        watcher.sendall(b'{"module": "basic", "function": "add", "args": [2, 3], "every": 600}\n')
        lines = b""
        while lines.count(b"\n") < 2:
            lines += watcher.recv(4096)
        assert json.loads(lines.split(b"\n")[1])["value"] == 5
        served = _status_of_basic(hw.port)["calls_served"]
        with socket.create_connection(("127.0.0.1", hw.port), timeout=10) as sock:
            buffer = bytearray()
            sock.sendall(LATEST_HELLO)
            assert hw._line(sock, buffer) == "ack"
            sock.sendall(LATEST_ADD)
            latest = hw._line(sock, buffer)
            assert sock.recv(1) == b""  # one reply, then the server closes, as com expects
        assert latest["value"] == 5 and 0 <= latest["age"] < 600 and latest["error"] is None
        assert hw.com("_latest", "basic.add", 2, 3)["value"] == 5
        assert _status_of_basic(hw.port)["calls_served"] == served  # the module was not asked
