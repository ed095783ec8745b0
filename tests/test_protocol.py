"""ClientProtocol on a StringTransport, with a fake server and a fake clock."""

from __future__ import annotations

import json
import urllib.parse

import pytest
from twisted.internet import address, defer, task
from twisted.internet.testing import StringTransport

from modserver.server.access import AccessPolicy, parse_rules
from modserver.server.protocol import ClientProtocol
from modserver.server.service import ServerSettings
from modserver.supervision.admission import ByteBudget, ConnectionLimits
from modserver.supervision.lifecycle import State
from modserver.supervision.supervisor import LoadFailed
from modserver.wire.errors import ReplyError


class FakeSupervisor:
    def __init__(self, name, state=State.READY, load_error=None):
        self.name = name
        self.state = state
        self.load_error = load_error
        self.submitted = []
        self.released = []

    def submit(self, call):
        self.submitted.append(call)

    def hello_error(self):
        return self.load_error if self.state is State.FAILED else None

    def answers_within(self):
        return 65.0 if self.name == "laser" else None

    def release(self, sink):
        self.released.append(sink)


class FakeServer:
    """The parts of ModServer a ClientProtocol uses; everyone is admitted and an
    administrator unless a test says otherwise."""

    def __init__(self, allow=("any",), admin=("any",), module_rules=None):
        self.settings = ServerSettings()
        self.reactor = task.Clock()
        self.modules = {"laser": FakeSupervisor("laser"), "stage": FakeSupervisor("stage")}
        self.reloads = []
        self.skipped = {}  # config entries skipped: name -> why
        self.config_error = None
        self.access = AccessPolicy(allow=parse_rules(allow), admin=parse_rules(admin))
        self.module_rules = {
            name: parse_rules(rules) for name, rules in (module_rules or {}).items()
        }
        self.refusals = []
        self.request_bytes = ByteBudget(128 * 1024 * 1024)
        self.connections = ConnectionLimits(total=100, per_address=10)

    def module(self, name):
        return self.modules.get(name)

    def why_skipped(self, name):
        return self.skipped.get(name)

    def may_open(self, who, name):
        return self.access.may_open(who, self.module_rules.get(name))

    def module_names(self, prefix="", who=None):
        return [n for n in self.modules if n.startswith(prefix) and self.may_open(who, n)]

    def help_text(self, who=None):
        return "Available modules: " + ", ".join(self.module_names("", who)) + "\n\nhelp"

    def status(self, name=None, who=None):
        names = [name] if name else self.module_names("", who)
        return {"server": {}, "modules": {n: {"state": "ready"} for n in names}}

    def refused(self, who, what, reason):
        self.refusals.append((str(who), what, reason))

    def reload_config(self, by=None):
        self.reloaded_by = by
        if self.config_error:
            raise self.config_error

    def reload_module(self, name, by="a client"):
        self.reloaded_by = by
        if name not in self.modules:
            return None
        waiting = defer.Deferred()
        self.reloads.append((name, waiting))
        return waiting


class Client:
    """A connected ClientProtocol and what it wrote."""

    def __init__(self, server=None, mutual_tls=False):
        self.server = server or FakeServer()
        self.protocol = ClientProtocol(self.server)
        self.protocol.mutual_tls = mutual_tls
        self.transport = StringTransport(peerAddress=address.IPv4Address("TCP", "10.1.2.3", 5555))
        self.protocol.makeConnection(self.transport)

    def send(self, obj, plain=True):
        text = json.dumps(obj)
        self.protocol.dataReceived(
            (text if plain else urllib.parse.quote_plus(text)).encode() + b"\n"
        )

    def replies(self, plain=True):
        lines = self.transport.value().split(b"\n")[:-1]
        decoded = [
            line.decode() if plain else urllib.parse.unquote_plus(line.decode()) for line in lines
        ]
        return [json.loads(text) for text in decoded]

    @property
    def closed(self):
        return self.transport.disconnecting


def reply(call, error=False, line=b"{}\n"):
    """The worker's whole reply to ``call`` reaching the client connection."""
    call.sink.reply_started(error)
    call.sink.reply_data(line)
    call.sink.reply_finished(True)


def test_ping_answers_the_peer_address_and_closes():
    client = Client()
    client.send({"name": None})
    assert client.replies() == [{"response": ["10.1.2.3", 5555], "error": False, "traceback": ""}]
    assert client.closed


def test_urlencoded_hello_gets_an_urlencoded_reply():
    client = Client()
    client.send({"name": "_ping"}, plain=False)
    assert client.transport.value().startswith(b"%7B%22response%22%3A+%5B%2210.1.2.3%22")
    assert client.replies(plain=False)[0]["response"] == ["10.1.2.3", 5555]


def test_module_hello_acks_and_keeps_the_connection():
    client = Client()
    client.send({"name": "laser"})
    assert client.replies() == [{"response": "ack", "error": False, "traceback": ""}]
    assert not client.closed


def test_a_client_that_asks_is_told_how_long_the_server_may_take_to_answer():
    client = Client()
    client.send({"name": "laser", "answer_within": True}, plain=False)
    assert client.transport.value() == (
        b"%7B%22response%22%3A+%22ack%22%2C+%22error%22%3A+false%2C+%22traceback%22%3A+%22%22%2C"
        b"+%22answer_within%22%3A+65.0%7D\n"
    )
    client = Client()
    client.send({"name": "stage", "answer_within": True})
    assert client.replies() == [
        {"response": "ack", "error": False, "traceback": "", "answer_within": None}
    ]


def test_an_ack_is_the_originals_bytes_unless_asked_for_more():
    for hello in ({"name": "laser"}, {"name": "laser", "answer_within": False}):
        client = Client()
        client.send(hello, plain=False)
        assert client.transport.value() == (
            b"%7B%22response%22%3A+%22ack%22%2C+%22error%22%3A+false%2C+"
            b"%22traceback%22%3A+%22%22%7D\n"
        )


def test_failed_module_hello_is_its_load_error():
    server = FakeServer()
    server.modules["laser"].state = State.FAILED
    server.modules["laser"].load_error = ReplyError("LoadError", "laser failed to load: X", "tb\n")
    client = Client(server)
    client.send({"name": "laser"})
    assert client.replies() == [
        {"response": "LoadError: laser failed to load: X", "error": True, "traceback": "tb\n"}
    ]
    assert client.closed


def test_request_becomes_a_call_on_the_module():
    client = Client()
    client.send({"name": "laser"})
    client.send({"function": "move", "args": [1, 2], "keep_alive": True, "timeout": 3})
    (call,) = client.server.modules["laser"].submitted
    assert (call.function, call.keep_alive, call.timeout, call.client_ip) == (
        "move",
        True,
        3,
        "10.1.2.3",
    )
    assert json.loads(call.request)["args"] == [1, 2]
    assert call.plain is True


def test_request_text_is_forwarded_as_decoded_from_an_urlencoded_line():
    client = Client()
    client.send({"name": "laser"}, plain=False)
    client.send({"function": "say", "args": ["a+b c%"]}, plain=False)
    (call,) = client.server.modules["laser"].submitted
    assert json.loads(call.request)["args"] == ["a+b c%"] and call.plain is False


def test_lines_after_a_request_wait_for_its_reply():
    client = Client()
    client.send({"name": "laser"})
    client.protocol.dataReceived(b'{"function": "a", "keep_alive": true}\n{"function": "b"}\n')
    module = client.server.modules["laser"]
    assert [c.function for c in module.submitted] == ["a"]
    call = module.submitted[0]
    reply(call, line=b'{"response": 1, "error": false, "traceback": ""}\n')
    assert [c.function for c in module.submitted] == ["a", "b"]


def test_keep_alive_idle_timeout_closes_after_one_second():
    client = Client()
    client.send({"name": "laser"})
    client.send({"function": "a", "keep_alive": True})
    call = client.server.modules["laser"].submitted[0]
    reply(call)
    client.server.reactor.advance(0.99)
    assert not client.closed
    client.server.reactor.advance(0.02)
    assert client.closed


def test_connection_without_keep_alive_closes_after_the_reply():
    client = Client()
    client.send({"name": "laser"})
    client.send({"function": "a"})
    call = client.server.modules["laser"].submitted[0]
    call.sink.reply_started(False)
    call.sink.reply_data(b"{}\n")
    assert not client.closed
    call.sink.reply_finished(True)
    assert client.closed


def test_error_reply_closes_even_with_keep_alive():
    client = Client()
    client.send({"name": "laser"})
    client.send({"function": "a", "keep_alive": True})
    call = client.server.modules["laser"].submitted[0]
    reply(call, error=True)
    assert client.closed


def test_connection_lost_releases_the_module():
    client = Client()
    client.send({"name": "laser"})
    client.protocol.connectionLost(None)
    assert client.server.modules["laser"].released == [client.protocol]


def test_idle_connection_before_hello_is_closed():
    client = Client()
    client.server.reactor.advance(client.server.settings.idle_timeout)
    assert client.closed


@pytest.mark.parametrize(
    "name, expected",
    [("_get_modules", ["laser", "stage"]), ("_get_modules.st", ["stage"])],
)
def test_get_modules(name, expected):
    client = Client()
    client.send({"name": name})
    assert client.replies()[0]["response"] == expected


def test_reload_config_error_is_an_error_reply():
    server = FakeServer()
    server.config_error = ReplyError("ConfigError", "server.config is not valid JSON: x")
    client = Client(server)
    client.send({"name": "_reload_"})
    reply = client.replies()[0]
    assert (
        reply["error"] is True
        and reply["response"] == "ConfigError: server.config is not valid JSON: x"
    )


def test_reload_module_answers_once_the_worker_is_ready():
    client = Client()
    client.send({"name": "_reload_laser"})
    assert client.transport.value() == b""
    name, waiting = client.server.reloads[0]
    waiting.callback(None)
    assert client.replies()[0]["response"] == 'Reloaded "laser"'


def test_reload_module_that_fails_to_load_is_an_error_reply():
    client = Client()
    client.send({"name": "_reload_laser"})
    _, waiting = client.server.reloads[0]
    waiting.errback(
        LoadFailed(ReplyError("LoadError", "laser failed to load: SyntaxError", "tb\n"))
    )
    reply = client.replies()[0]
    assert reply["error"] is True and reply["response"].startswith("LoadError: laser failed")


def test_reload_name_is_url_decoded():
    client = Client()
    client.server.modules["my laser"] = FakeSupervisor("my laser")
    client.send({"name": "_reload_my+laser"})
    assert client.server.reloads[0][0] == "my laser"


def test_line_too_long_is_an_error_then_close():
    server = FakeServer()
    server.settings.max_request = 100
    client = Client(server)
    client.protocol.dataReceived(b'{"name": "' + b"x" * 200)
    reply = client.replies()[0]
    assert reply["error"] is True and reply["response"].startswith("LineTooLong")
    assert not client.closed  # the client is still sending: closing now would reset it
    client.protocol.dataReceived(b"y" * 10_000)
    assert len(client.replies()) == 1 and not client.closed
    client.protocol.dataReceived(b'"}\n{"name": "_ping"}\n')
    assert client.closed and len(client.replies()) == 1


def test_a_refused_line_that_never_ends_is_closed_after_a_while():
    server = FakeServer()
    server.settings.max_request = 100
    client = Client(server)
    client.protocol.dataReceived(b"x" * 200)
    server.reactor.advance(9.9)
    assert not client.closed
    server.reactor.advance(0.1)
    assert client.closed


def test_half_close_serves_the_last_line_without_newline():
    client = Client()
    client.protocol.dataReceived(b'{"name": "_ping"}')
    assert client.transport.value() == b""
    client.protocol.readConnectionLost()
    assert client.replies()[0]["response"] == ["10.1.2.3", 5555]


def test_an_urlencoded_client_that_closes_has_left_and_its_request_is_dropped():
    """MATLAB gives up after 2 s and closes: its waiting request must not run later."""
    client = Client()
    client.send({"name": "laser"}, plain=False)
    client.send({"function": "move"}, plain=False)
    module = client.server.modules["laser"]
    client.protocol.readConnectionLost()
    assert client.closed and module.released == [client.protocol]


def test_half_close_while_a_call_runs_closes_after_its_reply():
    client = Client()
    client.send({"name": "laser"})
    client.send({"function": "a", "keep_alive": True})
    client.protocol.readConnectionLost()
    assert not client.closed
    call = client.server.modules["laser"].submitted[0]
    reply(call)
    assert client.closed


# Access: who may connect, open modules, administer ------------------------------------


def test_a_client_not_admitted_gets_forbidden_in_the_encoding_of_its_first_line():
    for plain in (True, False):
        server = FakeServer(allow=("192.168.0.0/16",))
        client = Client(server)
        client.send({"name": "laser"}, plain=plain)
        [answer] = client.replies(plain=plain)
        assert answer["error"] is True
        assert answer["response"] == (
            "Forbidden: 10.1.2.3 may not use this server; the operator can admit it with --allow"
        )
        assert client.closed
        assert server.modules["laser"].submitted == []
        assert server.refusals == [("10.1.2.3", "server", answer["response"][11:])]


def test_a_client_not_admitted_that_says_nothing_is_refused_url_encoded_after_a_while():
    server = FakeServer(allow=("loopback",))
    client = Client(server)
    assert client.transport.value() == b""
    server.reactor.advance(5.0)
    [answer] = client.replies(plain=False)
    assert answer["response"].startswith("Forbidden: 10.1.2.3 may not use this server")
    assert client.closed


def test_a_long_first_line_from_a_client_not_admitted_is_refused_not_read():
    server = FakeServer(allow=("loopback",))
    client = Client(server)
    client.protocol.dataReceived(b"{" + b"x" * 100_000)
    [answer] = client.replies()
    assert answer["response"].startswith("Forbidden: ")
    assert client.closed


def test_a_module_allow_list_refuses_others_at_hello():
    server = FakeServer(module_rules={"laser": ["10.9.0.0/16", "cn:alice"]})
    client = Client(server)
    client.send({"name": "laser"})
    [answer] = client.replies()
    assert answer["response"] == (
        'Forbidden: 10.1.2.3 may not use laser; the operator can admit it in the "allow" '
        "list of its config entry"
    )
    assert client.closed


class Certificate:
    """What pyOpenSSL's X509 shows of a client certificate named alice."""

    class subject:  # noqa: N801 - pyOpenSSL's X509Name shape
        commonName = "alice"  # noqa: N815

    def get_subject(self):
        return self.subject


def shows_certificate(client):
    """The TLS handshake completes with a client certificate."""
    client.transport.getPeerCertificate = Certificate
    client.protocol.handshakeCompleted()


def test_a_certificate_cn_opens_a_module_that_names_it():
    server = FakeServer(module_rules={"laser": ["cn:alice"]})
    client = Client(server)
    shows_certificate(client)
    client.send({"name": "laser"})
    assert client.replies()[0]["response"] == "ack"
    assert str(client.protocol.identity) == "10.1.2.3 (cn=alice)"


def test_allow_cn_admits_a_client_by_its_certificate_and_refuses_one_without():
    server = FakeServer(allow=("192.168.0.0/16", "cn:*"))
    client = Client(server, mutual_tls=True)
    shows_certificate(client)
    client.send({"name": "laser"})
    assert client.replies()[0]["response"] == "ack"
    client = Client(server, mutual_tls=True)
    client.send({"name": "laser"})
    assert client.replies()[0]["response"].startswith("Forbidden: 10.1.2.3 may not use this server")


def test_allow_cn_does_not_hold_the_door_open_on_a_listener_without_certificates():
    server = FakeServer(allow=("192.168.0.0/16", "cn:*"))
    client = Client(server, mutual_tls=False)  # plain TCP: no certificate can come
    server.reactor.advance(5.0)
    [answer] = client.replies(plain=False)
    assert answer["response"].startswith("Forbidden: 10.1.2.3 may not use this server")
    assert client.closed


def test_get_modules_help_and_status_list_only_the_modules_the_client_may_use():
    server = FakeServer(module_rules={"laser": ["cn:alice"]})
    for hello, expected in (
        ({"name": "_get_modules"}, ["stage"]),
        ({"name": "_help"}, "Available modules: stage\n\nhelp"),
    ):
        client = Client(server)
        client.send(hello)
        assert client.replies()[0]["response"] == expected
    client = Client(server)
    client.send({"name": "_status"})
    assert list(client.replies()[0]["response"]["modules"]) == ["stage"]
    client = Client(server)
    client.send({"name": "_status.laser"})
    assert client.replies()[0]["response"].startswith("Forbidden: 10.1.2.3 may not use laser")


@pytest.mark.parametrize(
    "name, what",
    [("_reload_", "re-read the config"), ("_reload_laser", "reload laser")],
)
def test_reloads_need_an_administrator(name, what):
    server = FakeServer(admin=("loopback",))
    client = Client(server)
    client.send({"name": name})
    [answer] = client.replies()
    assert answer["error"] is True
    assert answer["response"] == (
        f"Forbidden: 10.1.2.3 may not {what}: only administrators may; "
        "the operator names them with --admin-allow"
    )
    assert server.reloads == []


def test_calls_say_whether_their_client_is_an_administrator():
    for admin, expected in ((("any",), True), (("loopback",), False)):
        server = FakeServer(admin=admin)
        client = Client(server)
        client.send({"name": "laser"})
        client.send({"function": "move", "args": [], "timeout": 0.1})
        [call] = server.modules["laser"].submitted
        assert call.admin is expected


# Never wedged: malformed messages, byte budget, connection limits, clients that left ----


@pytest.mark.parametrize(
    "line, reason",
    [
        (b"[" * 10000 + b"]" * 10000, "BadRequest: the message is nested too deeply to be read"),
        (b'{"name": ' + b"[" * 10000 + b"]" * 10000 + b"}", "BadRequest: the message is nested"),
        (b'{"name": "' + b"\\ud800" + b'"}', 'BadRequest: "name" holds a lone surrogate'),
        (b'{"name": 1' + b"0" * 5000 + b"}", "BadRequest: message is not valid JSON"),
        (b'{"name": {"a": [1, 2]}}', 'BadRequest: "name" must be a string or null, not {"a"'),
    ],
)
def test_malformed_hellos_get_one_bad_request(line, reason):
    client = Client()
    client.protocol.dataReceived(line + b"\n")
    [answer] = client.replies(plain=line.startswith(b"{"))
    assert answer["error"] is True and answer["response"].startswith(reason)
    assert client.closed


@pytest.mark.parametrize(
    "request_line, reason",
    [
        (b'{"function": "f", "timeout": NaN}', '"timeout" must be a positive number'),
        (b'{"function": "f", "timeout": Infinity}', '"timeout" must be a positive number'),
        (b'{"function": "f", "args": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
        (b'{"function": ["f"]}', '"function" must be a string or null, not ["f"]'),
        (b'{"function": "f", "keep_alive": "yes"}', '"keep_alive" must be true or false'),
    ],
)
def test_malformed_requests_get_one_bad_request(request_line, reason):
    server = FakeServer()
    client = Client(server)
    client.send({"name": "laser"})
    client.protocol.dataReceived(request_line + b"\n")
    ack, answer = client.replies()
    assert answer["error"] is True and reason in answer["response"]
    assert server.modules["laser"].submitted == [] and client.closed


def test_a_request_past_the_byte_budget_gets_busy():
    server = FakeServer()
    server.request_bytes = ByteBudget(1000)
    holder = Client(server)
    holder.protocol.dataReceived(b'{"name": "laser"}\n{"function": "f", "args": ["' + b"x" * 900)
    assert server.request_bytes.held > 900  # a line on its way is held
    client = Client(server)
    client.protocol.dataReceived(b'{"name": "laser"}\n{"function": "f", "args": ["' + b"y" * 200)
    answers = client.replies()
    assert answers[-1]["response"] == (
        "Busy: the server already holds 1 KiB of requests in memory (its budget is 1 KiB, "
        "--max-held-requests); try again later"
    )
    client.protocol.dataReceived(b"y" * 5000 + b'"]}\n')  # the rest is read and dropped
    assert client.closed and server.request_bytes.held < 1000
    holder.protocol.connectionLost(None)
    assert server.request_bytes.held == 0  # given back by the client that left


def test_a_waiting_request_holds_its_bytes_until_it_is_sent():
    server = FakeServer()
    client = Client(server)
    client.send({"name": "laser"})
    client.send({"function": "move", "args": ["x" * 500]})
    [call] = server.modules["laser"].submitted
    assert server.request_bytes.held == len(call.request)
    call.sent()
    assert server.request_bytes.held == 0


def test_connections_past_the_limit_get_one_busy_line_and_are_closed():
    from modserver.server.protocol import ClientFactory

    server = FakeServer()
    server.connections = ConnectionLimits(total=10, per_address=2)
    factory = ClientFactory(server)
    peer = address.IPv4Address("TCP", "10.1.2.3", 5555)
    kept = [factory.buildProtocol(peer) for _ in range(2)]
    for proto in kept:
        proto.makeConnection(StringTransport(peerAddress=peer))
    refused = factory.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    refused.makeConnection(transport)
    line = transport.value()
    assert urllib.parse.unquote_plus(line.decode()).startswith(
        '{"response": "Busy: 10.1.2.3 has 2 connections open, the limit for one address'
    )
    assert server.refusals[0][1] == "connections"
    other = address.IPv4Address("TCP", "10.9.9.9", 1)
    assert isinstance(factory.buildProtocol(other), ClientProtocol)
    kept[0].connectionLost(None)
    assert isinstance(factory.buildProtocol(peer), ClientProtocol)


def test_a_half_closed_plain_client_is_checked_while_its_request_waits():
    server = FakeServer()
    client = Client(server)
    client.send({"name": "laser"})
    client.send({"function": "move", "args": []})
    client.protocol.readConnectionLost()  # printf ... | nc -N: still reading
    assert not client.closed
    server.reactor.advance(0.5)
    assert client.transport.value().endswith(b"\n ")  # the start of its reply line
    server.reactor.advance(0.5)
    assert client.transport.value().endswith(b"\n  ")
    [call] = server.modules["laser"].submitted
    call.started = server.reactor.seconds()  # its turn: no more checks
    server.reactor.advance(5)
    reply(call, line=b'{"response": 1, "error": false, "traceback": ""}\n')
    *_, last = client.transport.value().split(b"\n")[:-1]
    assert json.loads(last) == {"response": 1, "error": False, "traceback": ""}


def test_reloads_say_who_asked():
    server = FakeServer()
    client = Client(server)
    shows_certificate(client)
    client.send({"name": "_reload_"})
    assert server.reloaded_by == "10.1.2.3 (cn=alice)"
    Client(server).send({"name": "_reload_laser"})
    assert server.reloaded_by == "10.1.2.3"


def test_calls_carry_who_asked_with_the_certificate_name():
    server = FakeServer()
    client = Client(server, mutual_tls=True)
    shows_certificate(client)
    client.send({"name": "laser"})
    client.send({"function": "move"})
    [call] = server.modules["laser"].submitted
    assert (call.client, call.client_ip) == ("10.1.2.3 (cn=alice)", "10.1.2.3")


class SocketTransport(StringTransport):
    """A StringTransport with a socket's writeSomeData that takes ``room`` bytes at most."""

    def __init__(self, room, **kwargs):
        super().__init__(**kwargs)
        self.room = room
        self.sent = []  # what writeSomeData took, in order

    def writeSomeData(self, data):  # noqa: N802 - Twisted's name
        taken = bytes(data[: self.room])
        self.room -= len(taken)
        self.sent.append(taken)
        return len(taken)


def test_small_messages_go_straight_to_the_socket_then_through_the_transport_in_order():
    client = Client()
    client.transport = SocketTransport(60, peerAddress=client.transport.getPeer())
    client.protocol = ClientProtocol(client.server)
    client.protocol.makeConnection(client.transport)
    client.protocol._direct = True  # as on a plain tcp.Connection
    client.send({"name": "laser"})
    ack = b'{"response": "ack", "error": false, "traceback": ""}\n'
    assert client.transport.sent == [ack] and client.transport.value() == b""
    client.send({"function": "f", "keep_alive": True})
    call = client.server.modules["laser"].submitted[-1]
    reply(call, line=b'{"response": "a long reply that does not fit", "e": 1}\n')
    # 7 bytes fit the socket; the rest, and everything after, through the transport
    assert client.transport.sent[1] == b'{"respo'
    assert client.transport.value() == b'nse": "a long reply that does not fit", "e": 1}\n'
    client.send({"function": "g", "keep_alive": True})
    reply(client.server.modules["laser"].submitted[-1], line=b"next\n")
    assert client.transport.sent[2:] == []
    assert client.transport.value().endswith(b"}\nnext\n")
