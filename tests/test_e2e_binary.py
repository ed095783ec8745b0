"""Binary segments with real processes: arrays and bytes both ways, limits, bad input.

The wire form is docs/protocol.md's: a client that sent ``"binary": 1``
gets each array or bytes value as a description in the reply line and its
raw bytes after the line; it may send arguments the same way, listing
their lengths in ``"segments"``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from modserver.async_client import AsyncClient
from modserver.client import Client, ServerError
from tests.helpers import Connection, ServerProcess, needs_proc, wait_for

CONFIG = {
    "arrays": ["arrays", "Arrays", None],
    "arrays2": ["arrays", "Arrays", None],
    "basic": ["basic", "Basic", None],
}
MB = 1_000_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerProcess(tmp_path_factory.mktemp("binary"), CONFIG).start() as srv:
        yield srv


@pytest.fixture
def lab(server):
    return Client("127.0.0.1", server.port, timeout=20)


def read_exactly(conn: Connection, size: int) -> bytes:
    data = conn._buffer
    while len(data) < size:
        more = conn.sock.recv(1 << 20)
        if not more:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += more
    conn._buffer = data[size:]
    return data[:size]


def serves_still(lab: Client) -> None:
    """Nothing was harmed: the module answers the next call."""
    assert lab.com("arrays", "floats", 3).tolist() == [0.0, 1.0, 2.0]


# What travels ---------------------------------------------------------------------------


def test_the_client_gets_numpy_arrays_of_every_kind(lab):
    assert lab.binary  # numpy imports here: binary by default
    kinds = lab.com("arrays", "kinds")
    assert kinds["fortran"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert kinds["fortran"].dtype == np.int32 and kinds["fortran"].flags.c_contiguous
    assert kinds["strided"].tolist() == [0, 3, 6, 9] and kinds["strided"].dtype == np.int16
    assert kinds["bools"].tolist() == [True, False, True]
    assert kinds["big_endian"].dtype.str == ">f4" and kinds["big_endian"].tolist() == [0, 1, 2]
    assert kinds["complex"].tolist() == [1 + 2j, 3 - 4j]
    assert kinds["scalar"] == 2.5 and kinds["int_scalar"] == 7
    assert kinds["complex_scalar"][()] == 1 - 1j
    assert kinds["empty"].shape == (0, 3)
    assert kinds["bytes"] == b"\x00\n\xffraw"
    assert kinds["bytearray"] == b"ba" and kinds["memoryview"] == b"mv"
    assert kinds["list"][0].tolist() == [1, 1] and kinds["list"][1][0] == b"x"
    assert kinds["list"][1][1]["deep"].shape == (1, 1, 1)
    assert kinds["nan"] is None and kinds["text"] == "ok"


def test_replies_are_arrays_on_the_received_buffer(lab):
    array = lab.com("arrays", "floats", 1000)
    assert array.base is not None  # a view of the buffer the bytes were read into
    assert array.flags.writeable
    assert array.sum() == sum(range(1000))


def test_array_and_bytes_arguments_reach_the_module_as_arrays_and_bytes(lab):
    big = np.arange(10 * MB // 8, dtype=np.float64)
    assert lab.com("arrays", "describe", big) == ["ndarray", "<f8", [1_250_000], True, big.sum()]
    small = np.asfortranarray(np.arange(6, dtype=">i2").reshape(2, 3))
    assert lab.com("arrays", "describe", small) == ["ndarray", ">i2", [2, 3], True, 15.0]
    assert lab.com("arrays", "describe", b"\x01\x02\n") == ["bytes", 3, 13]
    nested = [np.ones(3, np.uint8), {"b": b"zz"}, 5]
    back = lab.com("arrays", "echo", nested)
    assert back[0].tolist() == [1, 1, 1] and back[1] == {"b": b"zz"} and back[2] == 5


def test_a_session_keeps_binary_on_one_connection(lab):
    with lab.session("arrays") as session:
        for _ in range(3):
            frame = session.frame(64, 32)
            assert frame.shape == (64, 32) and frame.dtype == np.uint16
        assert session.describe(np.zeros((2, 2))) == ["ndarray", "<f8", [2, 2], True, 0.0]


def test_without_binary_the_client_gets_lists_as_before(server):
    plain = Client("127.0.0.1", server.port, timeout=20, binary=False)
    assert plain.com("arrays", "floats", 3) == [0.0, 1.0, 2.0]
    with pytest.raises(ServerError, match="cannot be sent as JSON"):
        plain.com("arrays", "kinds")  # bytes and complex numbers are not JSON


@pytest_twisted.ensureDeferred
async def test_the_async_client_takes_and_sends_arrays(server):
    lab = AsyncClient("127.0.0.1", server.port, timeout=20, reactor=reactor)
    assert lab.binary
    array = await defer.ensureDeferred(lab.com("arrays", "floats", 2_000_000)).addTimeout(
        20, reactor
    )
    assert array.shape == (2_000_000,) and array[-1] == 1_999_999
    argument = np.arange(300_000, dtype=np.int32)
    described = await lab.com("arrays", "describe", argument).addTimeout(20, reactor)
    assert described == ["ndarray", "<i4", [300_000], True, float(argument.sum(dtype=np.float64))]
    session = await lab.session("arrays").addTimeout(20, reactor)
    for _ in range(2):
        frame = await session.call("frame", 8, 8).addTimeout(20, reactor)
        assert frame.shape == (8, 8)
    assert await session.call("echo", [b"x", 1]).addTimeout(20, reactor) == [b"x", 1]
    session.close()


# The wire, byte for byte -------------------------------------------------------------------


@pytest.mark.parametrize("where", ["hello", "request"])
def test_the_reply_line_then_the_raw_bytes(server, where):
    with Connection(server.port) as conn:
        conn.send({"name": "arrays", **({"binary": 1} if where == "hello" else {})}, plain=True)
        assert conn.reply(plain=True)["response"] == "ack"
        conn.send(
            {
                "function": "kinds",
                **({"binary": 1} if where == "request" else {}),
                "keep_alive": True,
            },
            plain=True,
        )
        reply = conn.reply(plain=True)
        sizes = reply["segments"]
        assert reply["response"]["bytes"] == {"dtype": "bytes", "nbytes": 6, "$bin": 7}
        assert reply["response"]["fortran"] == {
            "dtype": "<i4",
            "shape": [2, 3],
            "nbytes": 24,
            "$bin": 0,
        }
        data = read_exactly(conn, sum(sizes))
        assert data[:24] == np.arange(6, dtype="<i4").tobytes()
        start = sum(sizes[:7])
        assert data[start : start + 6] == b"\x00\n\xffraw"
        # then a request with segments of its own, on the same connection
        payload = np.arange(3, dtype="<u2").tobytes()
        line = {
            "function": "describe",
            "args": [{"$bin": 0, "dtype": "<u2", "shape": [3], "nbytes": 6}],
            "segments": [6],
        }
        conn.send_raw(json.dumps(line).encode() + b"\n" + payload)
        assert conn.reply(plain=True)["response"] == ["ndarray", "<u2", [3], True, 3.0]


def test_a_url_encoded_binary_exchange(server):
    from modserver.wire import codec as wire

    with Connection(server.port) as conn:
        conn.send({"name": "arrays", "binary": 1})
        conn.reply()
        conn.send({"function": "floats", "args": [2]})
        line = conn.read_line()
        assert line == wire.quote_plus(
            b'{"response": {"$bin": 0, "dtype": "<f8", "shape": [2], "nbytes": 16}, '
            b'"error": false, "traceback": "", "segments": [16]}'
        )
        assert read_exactly(conn, 16) == np.arange(2.0).tobytes()
        assert conn.is_closed()


# Bad input: one clear BadRequest, nothing else harmed ----------------------------------------


def refused(
    server, line: dict, data: bytes = b"", binary_hello: bool = True, half_close: bool = False
) -> str:
    with Connection(server.port) as conn:
        conn.send({"name": "arrays", **({"binary": 1} if binary_hello else {})}, plain=True)
        assert conn.reply(plain=True)["response"] == "ack"
        conn.send_raw(json.dumps(line).encode() + b"\n" + data)
        if half_close:
            conn.sock.shutdown(socket.SHUT_WR)
        reply = conn.reply(plain=True)
        assert reply["error"] is True
        assert conn.is_closed()
        return reply["response"]


def described(dtype="<f8", shape=(2,), nbytes=16, index=0):
    return {"$bin": index, "dtype": dtype, "shape": list(shape), "nbytes": nbytes}


@pytest.mark.parametrize(
    "args, segments, data, message",
    [
        ([described()], [16, 8], bytes(24), "2 segments were sent but 1 are described"),
        ([described(nbytes=8)], [8], bytes(8), "is 16 bytes, not the 8 declared"),
        ([described()], [8], bytes(8), "described as 16 bytes but 8 were sent"),
        ([described(dtype="|O8")], [16], bytes(16), "unknown dtype"),
        ([described(dtype="<V16", shape=(1,))], [16], bytes(16), "unknown dtype"),
        ([described(shape=(-2,))], [16], bytes(16), "not a size"),
        ([described(shape=(2.5,))], [16], bytes(16), "not a size"),
        ([described(index=3)], [16], bytes(16), "must name one of the 1 segments"),
        ([1], [-5], b"", "whole number >= 0"),
        ([1], [1.5], b"x", "whole number >= 0"),
        ([1], "16", b"", '"segments" must be a list'),
        ([1], [2**40], b"", "the segments hold more than 67108864 bytes"),
    ],
)
def test_each_bad_segment_gets_one_bad_request(server, lab, args, segments, data, message):
    line = {"function": "describe", "args": args, "segments": segments}
    # Announced bytes that do not come: the server would wait for them (to drop
    # them unread, so that the client can read its answer) until DISCARD_WAIT.
    short = isinstance(segments, list) and sum(segments) > len(data)
    reason = refused(server, line, data, half_close=short)
    assert reason.startswith("BadRequest: ") and message in reason
    serves_still(lab)


def test_segments_on_a_connection_that_did_not_ask_for_them(server, lab):
    line = {"function": "describe", "args": [described()], "segments": [16]}
    reason = refused(server, line, bytes(16), binary_hello=False)
    assert reason.startswith("BadRequest: binary segments on a connection that did not ask")
    serves_still(lab)


def test_a_connection_that_closes_in_the_middle_of_a_segment(server, lab):
    line = {
        "function": "describe",
        "args": [described(shape=(1000,), nbytes=8000)],
        "segments": [8000],
    }
    reason = refused(server, line, bytes(3000), half_close=True)
    assert reason == (
        "BadRequest: the connection closed in the middle of the binary segments: "
        "3000 of 8000 bytes came"
    )
    with Connection(server.port) as conn:  # gone altogether, mid-segment
        conn.send({"name": "arrays", "binary": 1}, plain=True)
        conn.reply(plain=True)
        conn.send_raw(json.dumps(line).encode() + b"\n" + bytes(100))
    serves_still(lab)
    assert lab.com("arrays", "describe", np.zeros(1000))[2] == [1000]


def test_limits_count_the_binary_bytes(tmp_path):
    args = ("--max-request", "1000000", "--max-reply", "2000000", "--max-held-requests", "3000000")
    with ServerProcess(tmp_path, CONFIG, args).start() as srv:
        lab = Client("127.0.0.1", srv.port, timeout=20)
        assert lab.com("arrays", "describe", np.zeros(100_000))[2] == [100_000]  # 800 kB: fits
        with pytest.raises(
            ServerError,
            match=r"BadRequest: the segments hold more than "
            r"1000000 bytes, the most this server accepts \(--max-request\)",
        ):
            lab.com("arrays", "describe", np.zeros(200_000))
        assert lab.com("arrays", "floats", 200_000).nbytes == 1_600_000
        with pytest.raises(
            ServerError,
            match="ReplyTooLarge: the reply of arrays.floats is "
            r"3200\d+ bytes with its binary segments",
        ):
            lab.com("arrays", "floats", 400_000)
        # Requests waiting for a busy module hold their segments within the byte budget.
        blocker = Client("127.0.0.1", srv.port, timeout=20)
        with blocker.session("basic") as held:
            held.echo(1)
            waiting = []
            try:
                for _ in range(5):
                    conn = Connection(srv.port)
                    waiting.append(conn)
                    conn.send({"name": "basic", "binary": 1}, plain=True)
                    conn.reply(plain=True)
                    line = {"function": "echo", "args": [1], "segments": [900_000]}
                    conn.send_raw(json.dumps(line).encode() + b"\n" + bytes(900_000))
                refusals = []
                for conn in waiting:
                    conn.sock.settimeout(2)
                    try:
                        refusals.append(conn.reply(plain=True)["response"])
                    except TimeoutError:
                        pass
                assert any(r.startswith("Busy: ") for r in refusals), refusals
            finally:
                for conn in waiting:
                    conn.close()
        assert lab.com("arrays", "floats", 2).tolist() == [0.0, 1.0]


# Flow control, TLS, no numpy in the worker ------------------------------------------------


def test_a_slow_client_of_a_binary_reply_pauses_the_worker(server, lab):
    needs_proc("the server's memory use")
    size = 60 * MB

    def rss_kb():
        with open(f"/proc/{server.process.pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

    lab.com("arrays2", "floats", size // 8)  # the module makes the array once
    before, peak = rss_kb(), 0
    with Connection(server.port) as conn:
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        conn.send({"name": "arrays2", "binary": 1})
        conn.read_line()
        conn.send({"function": "floats", "args": [size // 8]})
        conn.read_line()
        received = len(conn._buffer)
        while received < size:
            chunk = conn.sock.recv(65536)
            assert chunk
            received += len(chunk)
            if received % (64 * 65536) < 65536:
                peak = max(peak, rss_kb())
                time.sleep(0.005)  # a slow reader, on purpose
    assert peak - before < 10_000  # kB, for a 60 MB reply


def test_without_numpy_in_the_worker_arrays_arrive_as_raw_arrays(tmp_path):
    hidden = tmp_path / "no_numpy"
    hidden.mkdir()
    (hidden / "numpy.py").write_text("raise ImportError('no numpy in this environment')\n")
    config = {"raw": {"module": "rawargs", "entry": "RawArgs", "env": {"PYTHONPATH": str(hidden)}}}
    with ServerProcess(tmp_path, config).start() as srv:
        lab = Client("127.0.0.1", srv.port, timeout=20)
        assert lab.com("raw", "has_numpy") is False
        assert lab.com("raw", "describe", np.zeros((2, 3), np.int16)) == ["RawArray", "<i2", [2, 3]]
        back = lab.com("raw", "back", np.arange(4, dtype=">f8"))
        assert back.dtype.str == ">f8" and back.tolist() == [0, 1, 2, 3]
        assert lab.com("raw", "back", b"abc") == b"abc"


def test_binary_segments_over_tls(tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "server.pem")
    )
    listen = f"ssl:0:interface=127.0.0.1:privateKey={tmp_path / 'server.pem'}"
    with ServerProcess(tmp_path, CONFIG, ("--listen", listen)).start() as srv:
        import re

        port = int(
            wait_for(
                lambda: re.search(r"listening on 127\.0\.0\.1:(\d+) \(TLS\)", srv.log()),
                what="the TLS port",
            ).group(1)
        )
        lab = Client("127.0.0.1", port, timeout=20, tls_ca=str(tmp_path / "ca.pem"))
        array = lab.com("arrays", "floats", 3 * MB // 8)
        assert array.shape == (375_000,) and array[-1] == 374_999
        argument = np.arange(2 * MB, dtype=np.uint8)
        assert lab.com("arrays", "describe", argument)[:3] == ["ndarray", "|u1", [2 * MB]]


# The command line ---------------------------------------------------------------------------


def test_the_command_line_summarises_and_saves_arrays(server, tmp_path):
    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "modserver.client", "--port", str(server.port), "call", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    shown = cli("arrays", "floats", "1000000")
    assert shown.returncode == 0
    assert shown.stdout == (
        "<array float64 1000000, min 0.0, max 999999.0, mean 500000: [0.0, 1.0, 2.0, ...]>\n"
    )
    saved = cli("arrays", "frame", "3", "4", "--save", str(tmp_path / "frame.npy"))
    assert saved.returncode == 0
    assert saved.stdout == f"saved uint16 3x4 (24 bytes) to {tmp_path / 'frame.npy'}\n"
    assert np.load(tmp_path / "frame.npy").tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    not_array = cli("arrays", "echo", "3", "--save", str(tmp_path / "x.npy"))
    assert not_array.returncode == 2
    assert not_array.stderr == "error: --save: the result is a int, not an array\n"


def test_the_original_clients_name_keeps_lists(server):
    from modserver.client import client

    assert client("127.0.0.1", server.port, 20).com("arrays", "floats", 2) == [0.0, 1.0]
    assert client("127.0.0.1", server.port, 20, binary=True).com("arrays", "floats", 2).shape == (
        2,
    )


def test_a_bad_binary_field_is_a_bad_request(server, lab):
    reason = refused(server, {"function": "floats", "args": [2], "binary": "yes"})
    assert reason == 'BadRequest: "binary" must be 1 or 0 (true or false), not "yes"'
    serves_still(lab)


def test_a_client_without_numpy_keeps_json(server, tmp_path):
    (tmp_path / "numpy.py").write_text("raise ImportError('no numpy here')\n")
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); from modserver.client import Client; "
        "c = Client('127.0.0.1', int(sys.argv[2]), timeout=20); "
        "print(c.binary, c.com('arrays', 'floats', 3))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), str(server.port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout == "False [0.0, 1.0, 2.0]\n", done.stderr
