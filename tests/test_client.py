"""The blocking client, its ModuleServer-compatible name, sessions and proxies."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from modserver.client import (
    NETWORK_MARGIN,
    Client,
    ClientError,
    ConnectionFailed,
    ModuleProxy,
    ReplyTimeout,
    ServerError,
    client,
)
from tests.helpers import ServerProcess, free_port, wait_for

CONFIG = {
    "basic": ["basic", "Basic", None],
    "dispatcher": ["dispatcher", "Dispatcher", "handle"],
    "odd name": ["basic", "Basic", None],
    "broken": ["broken_import", "Broken", None],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerProcess(tmp_path_factory.mktemp("client"), CONFIG).start() as srv:
        yield srv


@pytest.fixture
def lab(server):
    return Client("127.0.0.1", server.port, timeout=5)


# ModuleServer's client, under its own name ----------------------------------------


def test_the_original_name_and_signature_work(server):
    old = client("127.0.0.1", server.port)
    assert old.timeout == 2  # the original's default
    assert old.com("basic", "add", 1, 2) == 3


def test_compatible_return_values(server):
    old = client(host="127.0.0.1", port=server.port)
    ip, port = old.ping()
    assert ip == "127.0.0.1" and isinstance(port, int)
    assert old.help().startswith("Available modules: basic, dispatcher, odd name, broken\n\n")
    assert old.get_modules() == ["basic", "dispatcher", "odd name", "broken"]
    assert old.get_modules("b") == ["basic", "broken"]
    assert old.reload("basic") == 'Reloaded "basic"'
    assert old.com("basic", "echo", "ay", 1, False, None) == ["ay", 1, False, None]
    assert "add(a, b) - Return a + b." in old.com("basic")  # funcname defaults to _help


def test_compatible_reload_raises_for_an_unknown_module(server):
    with pytest.raises(Exception) as caught:
        client("127.0.0.1", server.port).reload("nope")
    assert str(caught.value) == 'Server Error: Failed to find module "nope"'


# Client ---------------------------------------------------------------------------------


def test_reload_of_the_config_and_of_a_name_needing_encoding(lab):
    assert lab.reload() == "Reloaded config"
    assert lab.reload("odd name") == 'Reloaded "odd name"'


def test_status(lab):
    status = lab.status()
    assert list(status["modules"]) == ["basic", "dispatcher", "odd name", "broken"]
    assert list(lab.status("basic")["modules"]) == ["basic"]


def test_com_direct_and_dispatched(lab):
    assert lab.com("basic", "add", 20, 22) == 42
    assert lab.com("dispatcher", "Go", 1) == {
        "client_ip": "127.0.0.1",
        "function": "Go",
        "args": [1],
    }


def test_error_replies_raise_server_error_with_reason_and_traceback(lab):
    with pytest.raises(ServerError) as caught:
        lab.com("basic", "boom", "bad wavelength")
    err = caught.value
    assert err.reason == "ValueError: bad wavelength" and err.kind == "ValueError"
    assert "raise ValueError(message)" in err.traceback
    assert str(err).startswith("Server Error: ValueError: bad wavelength\n|Traceback")
    with pytest.raises(ServerError) as caught:
        lab.com("broken", "anything")
    assert caught.value.kind == "LoadError"
    with pytest.raises(ServerError) as caught:
        lab.com("nope", "x")
    assert caught.value.reason == "BadRequest: nope does not exist (case matters)"


def test_a_large_reply(lab):
    assert len(lab.com("basic", "big", 20_000_000, timeout=30)) == 20_000_000


def test_unreachable_server_says_where(lab):
    port = free_port()
    with pytest.raises(ConnectionFailed) as caught:
        Client("127.0.0.1", port).ping()
    assert f"cannot connect to modserver at 127.0.0.1:{port}" in str(caught.value)
    assert isinstance(caught.value, ConnectionError) and isinstance(caught.value, ClientError)


def test_a_slow_call_times_out_saying_what_was_awaited(lab):
    started = time.monotonic()
    with pytest.raises(ReplyTimeout) as caught:
        lab.com("basic", "sleep", 2, timeout=0.3)
    assert time.monotonic() - started < 1.5
    assert str(caught.value) == (
        f"no reply from modserver at 127.0.0.1:{lab.port} within 0.3 s "
        "while waiting for basic.sleep(): the client's timeout, which timeout= (of the "
        "Client, or of one call) sets; a call already running goes on in the module"
    )
    assert isinstance(caught.value, TimeoutError)
    assert lab.com("basic", "sleep", 0.1, timeout=5) == 0.1  # a per-call timeout


# Proxies and sessions -------------------------------------------------------------------


def test_module_proxy(lab):
    basic = lab.module("basic")
    assert isinstance(basic, ModuleProxy)
    assert basic.add(2, 3) == 5
    assert basic("add", 4, 5) == 9
    assert "argcount" in basic("_help")
    assert basic.sleep(0.1, timeout=5) == 0.1
    with pytest.raises(AttributeError):
        basic._private  # noqa: B018


def test_session_keeps_one_connection_and_the_module(server, lab):
    with lab.session("basic") as basic:
        pid = basic.pid()
        counts = [basic.counter() for _ in range(3)]
        assert counts == [counts[0], counts[0] + 1, counts[0] + 2]
        assert basic.call("pid") == pid
        assert server.module_status("basic")["held_by_session"] is True
    wait_for(lambda: not server.module_status("basic")["held_by_session"], what="the release")


def test_session_holds_the_module_against_other_clients(server, lab):
    with lab.session("basic") as held:
        first = held.counter()
        other = Client("127.0.0.1", server.port, timeout=5)
        import threading

        result = []
        thread = threading.Thread(target=lambda: result.append(other.com("basic", "counter")))
        thread.start()
        wait_for(lambda: server.module_status("basic")["queue"] == 1, what="the other call")
        assert [held.counter(), held.counter()] == [first + 1, first + 2]
    thread.join(10)
    assert result == [first + 3]


def test_session_goes_on_after_an_error_and_after_idling(lab):
    with lab.session("basic") as basic:
        assert basic.add(1, 1) == 2
        with pytest.raises(ServerError):
            basic.boom()
        assert basic.add(2, 2) == 4  # a new connection after the server closed the old one
        time.sleep(1.3)  # past the server's 1 s keep-alive timeout, on purpose
        assert basic.add(3, 3) == 6


def test_a_server_errors_message_shows_its_reason_once(lab):
    with pytest.raises(ServerError) as caught:
        lab.com("basic", "boom", "bad wavelength")
    message = str(caught.value)
    assert message.count("bad wavelength") == 1
    assert message.splitlines()[-1] == "|    raise ValueError(message)"
    with pytest.raises(ServerError) as caught:
        lab.com("nope", "x")  # the server's own error: its traceback is the reason alone
    assert str(caught.value) == "Server Error: BadRequest: nope does not exist (case matters)"


# How long a call is waited for ---------------------------------------------------------

TIMED = {"pm": {"module": "lifecycle", "entry": "Life", "timeout": 5, "queue_wait": 20}}


@pytest.fixture(scope="module")
def timed_server(tmp_path_factory):
    with ServerProcess(tmp_path_factory.mktemp("timed"), TIMED).start() as srv:
        yield srv


def test_by_default_a_call_waits_for_the_servers_own_answer(timed_server):
    lab = Client("127.0.0.1", timed_server.port)
    assert lab.timeout is None
    started = time.monotonic()
    with pytest.raises(ServerError) as caught:
        lab.com("pm", "hang")
    assert caught.value.reason.startswith("Timeout: pm.hang did not answer within 5 s")
    assert 4.5 < time.monotonic() - started < 20
    assert lab.com("pm", "sleep", 0.1) == 0.1  # the restarted worker
    with lab.watch("pm", "sleep", 0.01, every=0.1) as watch:  # its hello too
        assert next(iter(watch))[1] == 0.01


def test_a_session_waits_as_long_as_the_server_said(timed_server):
    lab = Client("127.0.0.1", timed_server.port)
    with lab.session("pm") as pm:
        assert pm.sleep(0.1) == 0.1
        assert pm._wait == 5 + 20 + NETWORK_MARGIN


def test_a_timeout_given_still_wins_and_names_itself(timed_server):
    lab = Client("127.0.0.1", timed_server.port, timeout=0.5)
    with pytest.raises(ReplyTimeout, match="within 0.5 s .*the client's timeout"):
        lab.com("pm", "sleep", 3)
    with pytest.raises(ReplyTimeout, match="within 0.3 s"):
        Client("127.0.0.1", timed_server.port).com("pm", "sleep", 3, timeout=0.3)


def test_a_module_without_timeout_is_waited_for_without_bound(server):
    lab = Client("127.0.0.1", server.port)
    assert lab.com("basic", "sleep", 2.5) == 2.5  # longer than the 2 s clients used to wait


def hello_bytes(make_call) -> bytes:
    """The first line a client sends, caught by a listener that answers nothing."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]
    with ThreadPoolExecutor(1) as pool:
        calling = pool.submit(make_call, port)
        connection, _ = listener.accept()
        with connection:
            connection.settimeout(10)
            line = b""
            while not line.endswith(b"\n"):
                line += connection.recv(1024)
        listener.close()
        with pytest.raises(ClientError):
            calling.result(20)
    return line


def test_the_originals_class_sends_the_originals_bytes():
    line = hello_bytes(lambda port: client("127.0.0.1", port).com("laser", "on"))
    assert line == b"%7B%22name%22%3A+%22laser%22%7D\n"
    line = hello_bytes(lambda port: Client("127.0.0.1", port).com("laser", "on"))
    assert line == b"%7B%22name%22%3A+%22laser%22%2C+%22answer_within%22%3A+true%7D\n"
