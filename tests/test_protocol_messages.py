"""Lines that are not messages, and the connection count, on a StringTransport."""

from __future__ import annotations

import json

import pytest
from twisted.internet import address
from twisted.internet.testing import StringTransport

from modserver.server.protocol import ClientFactory
from modserver.wire import codec as wire
from tests.test_protocol import Client, FakeServer


def test_a_line_typed_at_a_terminal_gets_a_plain_readable_reply():
    client = Client()
    client.protocol.dataReceived(b"hello there\r\n")
    (reply,) = client.replies(plain=True)
    assert reply["error"] is True
    assert reply["response"] == (
        "BadRequest: 'hello there' is neither JSON nor URL-encoded JSON: modserver reads "
        'one JSON object per line, such as {"name": "_help"}'
    )
    assert client.closed


def test_a_long_line_that_is_not_a_message_is_shown_cut_short():
    client = Client()
    client.protocol.dataReceived(b"x y " * 100 + b"\n")
    (reply,) = client.replies(plain=True)
    assert "'x y x y" in reply["response"] and "...'" in reply["response"]


def test_url_encoded_json_that_does_not_parse_is_answered_url_encoded():
    client = Client()
    client.protocol.dataReceived(b"%7B%22name%22%3A+oops\n")
    raw = client.transport.value()
    assert raw.startswith(b"%7B%22response%22")  # as its client expects
    (reply,) = client.replies(plain=False)
    assert reply["response"].startswith("BadRequest: message is not valid JSON")


def test_plain_json_that_does_not_parse_says_where():
    client = Client()
    client.protocol.dataReceived(b'{"name": oops}\n')
    (reply,) = client.replies(plain=True)
    assert reply["response"].startswith("BadRequest: message is not valid JSON: Expecting value")


@pytest.mark.parametrize(
    ("line", "encoded"),
    [
        (wire.quote_plus(json.dumps({"name": "laser"}).encode()), True),
        (b"%7Bbroken", True),
        (b"hello there", False),
        (b"hello+there", False),  # no escape: not what a client encodes a message to
        (b"hello", False),
        (b'%7B"name"', False),  # a quote: quote_plus never leaves one
    ],
)
def test_what_looks_url_encoded(line, encoded):
    assert wire.looks_url_encoded(line) is encoded


def test_open_and_accepted_connections_are_counted():
    server = FakeServer()
    factory = ClientFactory(server)
    peer = address.IPv4Address("TCP", "10.1.2.3", 5555)
    first, second = factory.buildProtocol(peer), factory.buildProtocol(peer)
    for proto in (first, second):
        proto.makeConnection(StringTransport(peerAddress=peer))
    assert (server.connections.open, server.connections.accepted) == (2, 2)
    first.connectionLost(None)
    assert (server.connections.open, server.connections.accepted) == (1, 2)
    second.connectionLost(None)
    assert server.connections.open == 0
