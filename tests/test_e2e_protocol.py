"""The wire protocol end to end: a real ``twistd modserver`` and real workers.

Each test speaks raw bytes as an existing client would, in both encodings
(urlencoded as the MATLAB and Python clients send, plain JSON as telnet
users type).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse

import pytest

from tests.helpers import (
    Connection,
    ServerProcess,
    call,
    decode,
    hello,
    needs_proc,
    response,
    wait_for,
)

# Each test runs on this system's platform layer and on the portable one.
pytestmark = pytest.mark.usefixtures("platform_mode")

CONFIG = {
    "_comment": "names starting with an underscore are ignored",
    "basic": ["basic", "Basic", None],
    "basic2": ["basic", "Basic", None],
    "dispatcher": ["dispatcher", "Dispatcher", "handle"],
    "factory": {"module": "factory", "entry": "make_thing"},
    "helped": ["module_help", "Helped", None],
    "broken": ["broken_import", "Broken", None],
    "badinit": ["bad_init", "BadInit", None],
    "loud": ["loud_import", "Loud", None],
    "small queue": {"module": "basic", "entry": "Basic", "queue_limit": 1},
    "crasher": ["dies_loading", "Never", None],
    "bad_entry": ["only", "two"],
    "pm2": {"module": "basic", "entry": "Basic", "colour": "red"},
    "_disabled": ["basic", "Basic", None],
}
NAMES = [
    "basic",
    "basic2",
    "dispatcher",
    "factory",
    "helped",
    "broken",
    "badinit",
    "loud",
    "small queue",
    "crasher",
]

encodings = pytest.mark.parametrize("plain", [False, True], ids=["urlencoded", "plain"])


@pytest.fixture(scope="module")
def server(tmp_path_factory, platform_mode):
    with ServerProcess(tmp_path_factory.mktemp("protocol"), CONFIG).start() as srv:
        yield srv


@pytest.fixture
def port(server):
    return server.port


# Framing ---------------------------------------------------------------------


@encodings
def test_crlf_lines_and_empty_lines_are_accepted(port, plain):
    with Connection(port) as conn:
        line = (
            json.dumps({"name": "basic"}) if plain else urllib.parse.quote_plus('{"name": "basic"}')
        )
        conn.send_raw(b"\r\n\n  \n" + line.encode() + b"\r\n")
        assert response(conn.reply(plain)) == "ack"
        request = {"function": "add", "args": [2, 3]}
        text = json.dumps(request) if plain else urllib.parse.quote_plus(json.dumps(request))
        conn.send_raw(b"\n" + text.encode() + b"\r\n")
        assert response(conn.reply(plain)) == 5


@encodings
def test_hello_and_request_in_one_packet(port, plain):
    with Connection(port) as conn:
        conn.send_raw(
            b"".join(
                [_line({"name": "basic"}, plain), _line({"function": "add", "args": [1, 1]}, plain)]
            )
        )
        assert response(conn.reply(plain)) == "ack"
        assert response(conn.reply(plain)) == 2


def test_a_half_closed_connection_is_answered(port):
    """``printf ... | nc host port`` closes its sending side straight away."""
    with Connection(port) as conn:
        conn.send_raw(b'{"name": "basic"}\n{"function": "add", "args": [4, 5]}')
        conn.sock.shutdown(1)  # SHUT_WR, and no newline after the last line
        assert response(conn.reply(True)) == "ack"
        assert response(conn.reply(True)) == 9
        assert conn.is_closed()


def test_plain_mode_is_not_url_decoded(port):
    reply = call(port, "basic", "echo", "a+b %41", plain=True)
    assert response(reply) == ["a+b %41"]


def test_matlab_urlencode_is_understood(port):
    """MATLAB's urlencode is Java's URLEncoder: "~" as %7E, "*" left alone."""

    def java_urlencode(text):
        safe = set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-*_")
        return "".join(
            chr(b) if b in safe else "+" if b == 32 else f"%{b:02X}" for b in text.encode()
        )

    with Connection(port) as conn:
        conn.send_raw(java_urlencode('{"name":"basic"}').encode() + b"\n")
        assert response(conn.reply()) == "ack"
        request = '{"function":"echo","args":["~*é µ",1,null],"keep_alive":false}'
        conn.send_raw(java_urlencode(request).encode() + b"\n")
        assert response(conn.reply()) == ["~*é µ", 1, None]


# Step 1: hello ---------------------------------------------------------------


@encodings
@pytest.mark.parametrize("name", [None, "_ping"])
def test_ping_answers_client_address_and_closes(port, plain, name):
    with Connection(port) as conn:
        conn.send({"name": name}, plain)
        reply = conn.reply(plain)
        assert response(reply) == ["127.0.0.1", conn.sock.getsockname()[1]]
        assert conn.is_closed()


@encodings
def test_help_lists_modules_then_the_help_text(port, plain):
    text = response(hello(port, "_help", plain))
    assert text.startswith("Available modules: " + ", ".join(NAMES) + "\n\n")
    assert "_get_modules" in text and "keep_alive" in text


@encodings
@pytest.mark.parametrize(
    "name, expected",
    [
        ("_get_modules", NAMES),
        ("_get_modules.", NAMES),
        ("_get_modules.b", ["basic", "basic2", "broken", "badinit"]),
        ("_get_modules.basic", ["basic", "basic2"]),
        ("_get_modules.zzz", []),
    ],
)
def test_get_modules_lists_names_with_prefix_in_config_order(port, plain, name, expected):
    assert response(hello(port, name, plain)) == expected


@encodings
def test_reload_config(port, plain):
    assert response(hello(port, "_reload_", plain)) == "Reloaded config"


@encodings
def test_reload_module_restarts_its_worker(server, plain):
    before = response(call(server.port, "basic2", "pid"))
    assert response(hello(server.port, "_reload_basic2", plain)) == 'Reloaded "basic2"'
    after = response(call(server.port, "basic2", "pid"))
    assert after != before


def test_reload_name_is_url_decoded_as_matlab_sends_it(server):
    """MATLAB sends "_reload_" + urlencode(name)."""
    before = server.module_status("small queue")["pid"]
    name = "_reload_" + urllib.parse.quote_plus("small queue")
    assert response(hello(server.port, name)) == 'Reloaded "small queue"'
    assert server.module_status("small queue")["pid"] != before


@encodings
def test_reload_unknown_module_is_not_an_error(port, plain):
    reply = hello(port, "_reload_nope", plain)
    assert reply == {"response": 'Failed to find module "nope"', "error": False, "traceback": ""}


@encodings
def test_status_reports_server_and_every_module(port, plain):
    status = response(hello(port, "_status", plain))
    assert status["server"]["pid"] > 0
    assert status["server"]["config"].endswith("server.config")
    assert any('"bad_entry" skipped' in p for p in status["server"]["config_problems"])
    assert list(status["modules"]) == NAMES
    basic = status["modules"]["basic"]
    for key in (
        "state",
        "pid",
        "uptime",
        "restarts",
        "last_exit",
        "last_error",
        "queue",
        "calls_served",
        "current_call",
    ):
        assert key in basic
    assert basic["state"] in ("ready", "busy")
    assert status["modules"]["broken"]["state"] == "failed"
    assert "this_package_does_not_exist" in status["modules"]["broken"]["last_error"]["traceback"]


@encodings
def test_status_of_one_module(port, plain):
    status = response(hello(port, "_status.factory", plain))
    assert list(status["modules"]) == ["factory"]
    assert status["modules"]["factory"]["entry"] == "make_thing"


def test_status_of_unknown_module_is_an_error(port):
    reply = hello(port, "_status.nope", True)
    assert reply["error"] is True and "nope does not exist" in reply["response"]


@encodings
def test_unknown_module_is_a_bad_request_and_closes(port, plain):
    for name in ("nope", "Basic", "_disabled"):
        reply = hello(port, name, plain)
        assert reply["error"] is True
        assert reply["response"] == f"BadRequest: {name} does not exist (case matters)"
        assert reply["traceback"]


@encodings
@pytest.mark.parametrize("hello_name", ["pm2", "_status.pm2"])
def test_a_skipped_config_entry_says_it_was_skipped_and_why(port, plain, hello_name):
    reply = hello(port, hello_name, plain)
    assert reply["error"] is True
    assert reply["response"].startswith(
        "BadRequest: pm2 is in the server's config but was skipped: unknown option "
        '"colour" (known: module, entry, '
    )
    assert reply["response"].endswith("); the operator can fix its entry")
    reply = hello(port, "bad_entry", plain)
    assert reply["response"].startswith(
        "BadRequest: bad_entry is in the server's config but was skipped: the list must have 3"
    )


@encodings
@pytest.mark.parametrize("message", [[1, 2], "basic", {"nom": "basic"}, {"name": 5}])
def test_malformed_hello_is_an_error_and_closes(port, plain, message):
    plain_line = plain and isinstance(message, dict)  # only "{" starts a plain line
    with Connection(port) as conn:
        conn.send(message, plain_line)
        reply = conn.reply(plain_line)
        assert reply["error"] is True and reply["response"].startswith("BadRequest: ")
        assert "\n" not in reply["response"] and reply["traceback"]
        assert conn.is_closed()


@encodings
def test_a_line_that_is_not_json_is_an_error_and_closes(port, plain):
    with Connection(port) as conn:
        conn.send_raw(b"{not json\n" if plain else b"%7Bnot+json\n")
        reply = conn.reply(plain)
        assert reply["error"] is True and "not valid JSON" in reply["response"]
        assert conn.is_closed()


@encodings
def test_module_that_fails_to_import_answers_hello_with_its_traceback(port, plain):
    started = time.monotonic()
    reply = hello(port, "broken", plain)
    assert time.monotonic() - started < 2
    assert reply["error"] is True
    assert reply["response"].startswith("LoadError: broken failed to load: ModuleNotFoundError")
    assert "import this_package_does_not_exist" in reply["traceback"]


def test_load_failure_traceback_starts_at_the_users_code(port):
    reply = hello(port, "broken", True)
    assert reply["traceback"].splitlines()[1].strip().startswith('File "')
    assert "importlib" not in reply["traceback"] and "worker.py" not in reply["traceback"]


def test_module_that_dies_while_loading_is_refused_at_once_not_left_hanging(server):
    server.wait_state("crasher", "backoff")
    started = time.monotonic()
    reply = hello(server.port, "crasher", True)
    assert time.monotonic() - started < 2
    assert reply["error"] is True
    assert reply["response"].startswith("WorkerDied: the worker of crasher died while loading")
    assert "the vendor library crashed" in reply["traceback"]


def test_module_whose_constructor_raises_answers_hello_with_its_traceback(port):
    reply = hello(port, "badinit", True)
    assert reply["error"] is True
    assert "ConnectionError: instrument not found on COM3" in reply["response"]
    assert "bad_init.py" in reply["traceback"]


# Step 2: requests ------------------------------------------------------------


@encodings
def test_direct_call(port, plain):
    assert response(call(port, "basic", "add", 2, 40, plain=plain)) == 42


@encodings
def test_dispatch_method_gets_client_ip_function_and_args(port, plain):
    reply = call(port, "dispatcher", "Anything", 1, "two", [3], plain=plain)
    assert response(reply) == {
        "client_ip": "127.0.0.1",
        "function": "Anything",
        "args": [1, "two", [3]],
    }


def test_dispatch_method_errors_are_error_replies(port):
    reply = call(port, "dispatcher", "fail", "key")
    assert reply["error"] is True and reply["response"] == "KeyError: 'key'"


def test_factory_function_entry_point(port):
    assert response(call(port, "factory", "label_of")) == "made by a factory"


@encodings
def test_generated_help_lists_public_methods_with_signatures_and_docs(port, plain):
    text = response(call(port, "basic", "_help", plain=plain))
    lines = text.splitlines()
    assert "add(a, b) - Return a + b." in lines
    assert "echo(*args) - Return the arguments." in lines
    assert "boom(message='boom') - Raise ValueError(message)." in lines
    assert not any(line.startswith(("_private", "prop", "value")) for line in lines)


def test_module_level_help_function_wins(port):
    assert response(call(port, "helped", "_help")) == "custom help for module_help"


def test_dispatch_module_help_says_calls_are_dispatched(port):
    text = response(call(port, "dispatcher", "_help"))
    assert "handle(client_ip, function, *args)" in text


@encodings
def test_args_and_keep_alive_are_optional(port, plain):
    with Connection(port) as conn:
        conn.send({"name": "basic"}, plain)
        assert response(conn.reply(plain)) == "ack"
        conn.send({"function": "argcount"}, plain)
        assert response(conn.reply(plain)) == 0
        assert conn.is_closed()


@encodings
@pytest.mark.parametrize(
    "request_, reason",
    [
        ({"function": "add", "args": 5}, '"args" must be a list'),
        (
            {"function": "add", "args": [], "keep_alive": "yes"},
            '"keep_alive" must be true or false',
        ),
        ({"function": 7}, '"function" must be a string or null'),
        ({"args": []}, 'no "function" field'),
        (["add"], "a request must be a JSON object"),
        ({"function": "add", "timeout": -1}, '"timeout" must be a positive number'),
    ],
)
def test_malformed_requests_are_bad_requests(port, plain, request_, reason):
    with Connection(port) as conn:
        conn.send({"name": "basic"}, plain)
        assert response(conn.reply(plain)) == "ack"
        plain_line = plain and isinstance(request_, dict)  # only "{" starts a plain line
        conn.send(request_, plain_line)
        reply = conn.reply(plain_line)
        assert reply["error"] is True
        assert reply["response"].startswith("BadRequest: ") and reason in reply["response"]
        assert conn.is_closed()


@encodings
def test_null_function_leaves_without_a_reply(port, plain):
    with Connection(port) as conn:
        conn.send({"name": "basic"}, plain)
        assert response(conn.reply(plain)) == "ack"
        conn.send({"function": None, "args": [], "keep_alive": False}, plain)
        assert conn.is_closed()


@pytest.mark.parametrize(
    "function, reason",
    [
        ("_private", 'BadRequest: "_private" is private'),
        ("__init__", 'BadRequest: "__init__" is private'),
        ("prop", 'BadRequest: "prop" of basic is a property, not a function'),
        ("value", 'BadRequest: "value" of basic is not a function'),
        ("Add", 'BadRequest: basic has no function "Add" (case matters)'),
    ],
)
def test_only_public_methods_can_be_called(port, function, reason):
    reply = call(port, "basic", function)
    assert reply["error"] is True and reply["response"].startswith(reason)
    assert "the property was read" not in reply["traceback"]


@encodings
def test_module_exception_is_one_line_reason_and_module_traceback_then_close(port, plain):
    with Connection(port) as conn:
        conn.send({"name": "basic"}, plain)
        assert response(conn.reply(plain)) == "ack"
        conn.send({"function": "boom", "args": ["line one\nline two"], "keep_alive": True}, plain)
        reply = conn.reply(plain)
        assert reply["error"] is True
        assert reply["response"] == "ValueError: line one line two"
        assert 'basic.py", line' in reply["traceback"]
        assert "raise ValueError(message)" in reply["traceback"]
        assert "worker.py" not in reply["traceback"]
        assert conn.is_closed()


def test_system_exit_in_a_module_is_an_error_reply_not_a_dead_worker(port):
    pid = response(call(port, "basic", "pid"))
    reply = call(port, "basic", "exit_call")
    assert reply["error"] is True and reply["response"].startswith("SystemExit")
    assert response(call(port, "basic", "pid")) == pid


@encodings
def test_tuples_and_numpy_values_are_encoded(port, plain):
    assert response(call(port, "basic", "pair", plain=plain)) == [1, "two"]
    assert response(call(port, "basic", "array", 4, plain=plain)) == [0.0, 0.25, 0.5, 0.75]
    assert response(call(port, "basic", "scalars", plain=plain)) == [1.5, 7, True]


def test_unencodable_return_value_is_an_error_naming_its_type(port):
    reply = call(port, "basic", "unencodable")
    assert reply["error"] is True
    assert reply["response"].startswith("TypeError: basic.unencodable returned a value of type set")


# Keep-alive, ordering and limits -----------------------------------------------


@encodings
def test_keep_alive_serves_several_requests_on_one_connection(port, plain):
    with Connection(port) as conn:
        conn.send({"name": "basic"}, plain)
        assert response(conn.reply(plain)) == "ack"
        pids = set()
        for _ in range(3):
            conn.send({"function": "pid", "args": [], "keep_alive": True}, plain)
            pids.add(response(conn.reply(plain)))
        conn.send({"function": "add", "args": [1, 2], "keep_alive": False}, plain)
        assert response(conn.reply(plain)) == 3
        assert len(pids) == 1
        assert conn.is_closed()


def test_idle_keep_alive_connection_is_closed_after_about_a_second(port):
    with Connection(port) as conn:
        conn.send({"name": "basic"}, True)
        assert response(conn.reply(True)) == "ack"
        conn.send({"function": "pid", "keep_alive": True}, True)
        response(conn.reply(True))
        replied = time.monotonic()
        assert conn.is_closed(timeout=10)
        assert 0.8 <= time.monotonic() - replied <= 3.0


def test_keep_alive_session_holds_the_module_until_it_ends(server):
    port = server.port
    with Connection(port) as holder, Connection(port) as other:
        holder.send({"name": "basic"}, True)
        response(holder.reply(True))
        holder.send({"function": "counter", "keep_alive": True}, True)
        first = response(holder.reply(True))
        other.send({"name": "basic"}, True)
        response(other.reply(True))
        other.send({"function": "counter"}, True)
        wait_for(
            lambda: server.module_status("basic")["queue"] == 1, what="the other request to queue"
        )
        held = []
        for _ in range(3):
            holder.send({"function": "counter", "keep_alive": True}, True)
            held.append(response(holder.reply(True)))
        holder.send({"function": None}, True)
        assert held == [first + 1, first + 2, first + 3]
        assert response(other.reply(True)) == first + 4


def test_requests_for_one_module_run_one_at_a_time_in_arrival_order(server):
    port = server.port
    blocker = Connection(port)
    blocker.send({"name": "basic"}, True)
    response(blocker.reply(True))
    blocker.send({"function": "sleep", "args": [0.5]}, True)
    wait_for(lambda: server.module_status("basic")["state"] == "busy", what="basic to be busy")
    clients = []
    for i in range(4):
        conn = Connection(port)
        conn.send({"name": "basic"}, True)
        response(conn.reply(True))
        conn.send({"function": "counter"}, True)
        clients.append(conn)
        wait_for(
            lambda n=i + 1: server.module_status("basic")["queue"] == n, what=f"{i + 1} queued"
        )
    counts = [response(conn.reply(True)) for conn in clients]
    assert counts == sorted(counts) and len(set(counts)) == 4
    assert counts[-1] - counts[0] == 3
    for conn in [blocker, *clients]:
        conn.close()


def test_a_program_that_gives_up_and_closes_has_its_waiting_request_dropped(server):
    """MATLAB's hwserver times out after 2 s and closes; the request must not run later."""
    port = server.port
    blocker = Connection(port)
    blocker.send({"name": "basic2"})
    response(blocker.reply())
    blocker.send({"function": "sleep", "args": [0.5]})
    server.wait_state("basic2", "busy")
    before = server.module_status("basic2")["calls_served"]
    quitter = Connection(port)
    quitter.send({"name": "basic2"})
    response(quitter.reply())
    quitter.send({"function": "counter"})
    wait_for(lambda: server.module_status("basic2")["queue"] == 1, what="the request to queue")
    quitter.sock.shutdown(1)
    wait_for(lambda: server.module_status("basic2")["queue"] == 0, what="the request to be dropped")
    assert response(blocker.reply()) == 0.5
    server.wait_state("basic2", "ready")
    assert server.module_status("basic2")["calls_served"] == before + 1
    quitter.close()
    blocker.close()


def test_different_modules_run_in_parallel_and_one_module_serially(port):
    def timed(calls):
        results = []
        threads = [
            threading.Thread(target=lambda m=m: results.append(call(port, m, "sleep", 0.6)))
            for m in calls
        ]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert all(not r["error"] for r in results) and len(results) == len(calls)
        return time.monotonic() - started

    assert timed(["basic", "basic"]) >= 1.2
    assert timed(["basic", "basic2"]) < 1.15


def test_a_full_queue_answers_busy_at_once(server):
    port = server.port
    conns = [Connection(port) for _ in range(3)]
    try:
        for conn in conns:
            conn.send({"name": "small queue"}, True)
            response(conn.reply(True))
        conns[0].send({"function": "sleep", "args": [1.0]}, True)
        wait_for(lambda: server.module_status("small queue")["state"] == "busy", what="busy")
        conns[1].send({"function": "counter"}, True)
        wait_for(lambda: server.module_status("small queue")["queue"] == 1, what="one waiting")
        started = time.monotonic()
        conns[2].send({"function": "counter"}, True)
        reply = conns[2].reply(True)
        assert time.monotonic() - started < 0.5
        assert reply["error"] is True and reply["response"].startswith("Busy: small queue")
        assert response(conns[0].reply(True)) == 1.0
        assert response(conns[1].reply(True)) >= 1
    finally:
        for conn in conns:
            conn.close()


@encodings
def test_a_100_mb_reply_passes(port, plain):
    size = 100_000_000
    with Connection(port) as conn:
        conn.send({"name": "basic"}, plain)
        response(conn.reply(plain))
        conn.send({"function": "big", "args": [size]}, plain)
        line = conn.read_line()
        reply = decode(line, plain)
        assert reply["error"] is False and len(reply["response"]) == size


def test_a_16_mb_request_passes(port):
    payload = "y" * (16 * 1024 * 1024)
    reply = call(port, "basic", "echo", payload)
    assert response(reply) == [payload]


def test_many_floats_round_trip(port):
    assert response(call(port, "basic", "floats", 200_000)) == [i * 0.5 for i in range(200_000)]


# Output and logging ----------------------------------------------------------------


def test_module_output_goes_to_the_log_not_the_channel(server):
    reply = call(server.port, "basic", "noisy", "marker-7731")
    assert response(reply) == "quiet reply"
    wait_for(lambda: "print: marker-7731" in server.log(), what="the print in the log")
    wait_for(lambda: "fd1: marker-7731" in server.log(), what="the fd 1 write in the log")


def test_module_printing_at_import_loads_and_works(server):
    assert response(call(server.port, "loud", "ping")) == "pong"
    assert "loud_import: hello from print at import time" in server.log()
    assert "loud_import: hello from fd 1 at import time" in server.log()


def test_module_logging_reaches_the_server_log(server):
    assert response(call(server.port, "basic", "log", "logged-from-module-5521")) is True
    wait_for(lambda: "logged-from-module-5521" in server.log(), what="the log record")


def test_malformed_config_entry_is_skipped_with_a_reason(server):
    assert 'config entry "bad_entry" skipped: the list must have 3 entries' in server.log()


def _line(obj, plain):
    text = json.dumps(obj)
    return (text if plain else urllib.parse.quote_plus(text)).encode() + b"\n"


# Fast paths, seen from outside ---------------------------------------------------------------


@encodings
def test_the_reply_encoded_by_the_worker_reaches_the_client_byte_for_byte(port, plain):
    """The server copies the worker's reply; it neither decodes nor re-encodes it."""
    from modserver.wire import codec as wire

    value = ["é µ+%&=", 1.5, None, {"k": [1, 2]}, "x" * 300_000]
    with Connection(port) as conn:
        conn.send({"name": "basic"}, plain)
        conn.read_line()
        conn.send({"function": "echo", "args": value}, plain)
        assert conn.read_line() + b"\n" == wire.encode_reply(value, plain=plain)


def test_a_slow_client_does_not_make_the_server_hold_the_reply(server):
    """While a client reads slowly, the worker's pipe is paused, not buffered."""
    needs_proc("the server's memory use")
    size = 60_000_000

    def rss_kb():
        with open(f"/proc/{server.process.pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

    response(call(server.port, "basic2", "big", size))  # the worker makes the string once
    before, peak = rss_kb(), 0
    with Connection(server.port) as conn:
        conn.send({"name": "basic2"})
        conn.read_line()
        conn.send({"function": "big", "args": [size]})
        received = 0
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        while received < size:
            chunk = conn.sock.recv(65536)
            assert chunk
            received += len(chunk)
            if received % (64 * 65536) < 65536:
                peak = max(peak, rss_kb())
                time.sleep(0.005)  # a slow reader, on purpose
    assert peak - before < 30_000  # kB, for a 60 MB reply
