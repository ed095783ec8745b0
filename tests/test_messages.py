"""Whatever a client sends, one well-formed reply or a clean close: property tests.

Hypothesis drives the hello and request checks (messages.py) with arbitrary
JSON values, and a ClientProtocol on a StringTransport with arbitrary bytes,
and watches the log for unhandled errors.
"""

from __future__ import annotations

import json
import urllib.parse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.logger import globalLogPublisher

from modserver.wire import messages
from modserver.wire.errors import ReplyError
from tests.test_protocol import Client, FakeServer

# Names the fake server knows, so that hellos reach modules and requests follow.
known = st.sampled_from(
    [
        "laser",
        "stage",
        "_ping",
        "_help",
        "_status",
        "_status.laser",
        "_get_modules.l",
        "_reload_",
        "_reload_laser",
        "move",
        "_help",
    ]
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities too, as Python's json reads and writes them
    | st.text()
    | known
    | st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1).map(
        lambda lone: "_reload_" + lone  # lone surrogates, which are not text
    ),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
fields = st.sampled_from(["name", "function", "args", "keep_alive", "timeout"])
messages_like = st.dictionaries(fields, json_values, max_size=5) | json_values


@given(messages_like)
def test_a_hello_is_a_name_or_one_bad_request(message):
    try:
        name = messages.hello_name(message)
    except ReplyError as err:
        assert err.kind == "BadRequest" and "\n" not in err.reason
        return
    assert name is None or (isinstance(name, str) and name.encode("utf-8"))


def test_an_empty_module_name_is_a_bad_request():
    with pytest.raises(ReplyError) as caught:
        messages.hello_name({"name": ""})
    assert caught.value.reason == (
        'BadRequest: "name" is empty: name a module, or "_help" for the list'
    )


@given(messages_like)
def test_a_request_is_checked_or_one_bad_request(message):
    try:
        request = messages.request(message)
    except ReplyError as err:
        assert err.kind == "BadRequest" and "\n" not in err.reason
        return
    assert request.function is None or isinstance(request.function, str)
    assert isinstance(request.keep_alive, bool)
    assert request.timeout is None or 0 < request.timeout < float("inf")


@given(st.integers(min_value=1, max_value=200_000), st.sampled_from(["[", '{"a":']))
def test_any_depth_of_nesting_is_read_or_refused(depth, opener):
    closer = "]" if opener == "[" else "}"
    line = (opener * depth + "1" + closer * depth).encode()
    try:
        messages.decode(line, plain=True)
    except ReplyError as err:
        assert err.reason.startswith("BadRequest: ")


class Failures:
    """Collects logged failures (unhandled errors) while a test runs."""

    def __init__(self) -> None:
        self.seen: list = []

    def __call__(self, event) -> None:
        if event.get("log_failure") is not None:
            self.seen.append(event)

    def __enter__(self):
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc_info):
        globalLogPublisher.removeObserver(self)


def reply_lines(value: bytes) -> list[dict]:
    """Every reply line written, decoded in whichever encoding it is in."""
    decoded = []
    for line in value.split(b"\n")[:-1]:
        text = line.strip()
        if not text.startswith(b"{"):
            text = urllib.parse.unquote_plus(text.decode("ascii")).encode()
        reply = json.loads(text)
        assert set(reply) == {"response", "error", "traceback"}
        assert isinstance(reply["error"], bool)
        if reply["error"]:
            assert isinstance(reply["response"], str) and "\n" not in reply["response"]
            assert reply["traceback"]
        decoded.append(reply)
    return decoded


def lines_of(values) -> bytes:
    out = []
    for value, plain in values:
        try:
            text = json.dumps(value)
        except (ValueError, RecursionError):
            continue
        out.append(text.encode() if plain else urllib.parse.quote_plus(text).encode())
    return b"\n".join(out) + b"\n"


@settings(max_examples=300)
@given(st.lists(st.tuples(messages_like, st.booleans()), min_size=1, max_size=4))
def test_the_protocol_answers_any_json_messages_well(values):
    with Failures() as failures:
        client = Client(FakeServer())
        client.protocol.dataReceived(lines_of(values))
        replies = reply_lines(client.transport.value())
        client.protocol.connectionLost(None)
    assert failures.seen == []
    assert len(replies) <= len(values)
    if any(r["error"] for r in replies):
        assert client.closed  # an error reply always ends the connection


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=5), st.booleans())
def test_the_protocol_answers_any_bytes_well(chunks, eof):
    with Failures() as failures:
        client = Client(FakeServer())
        for chunk in chunks:
            client.protocol.dataReceived(chunk)
        if eof:
            client.protocol.readConnectionLost()
        client.server.reactor.advance(120)  # every timer runs out
        replies = reply_lines(client.transport.value())
        client.protocol.connectionLost(None)
    assert failures.seen == []
    assert len(replies) <= sum(chunk.count(b"\n") for chunk in chunks) + 1


@pytest.mark.parametrize("plain", [True, False])
def test_a_huge_number_of_digits_is_a_bad_request(plain):
    client = Client(FakeServer())
    text = '{"name": ' + "9" * 100_000 + "}"
    client.protocol.dataReceived(
        (text if plain else urllib.parse.quote_plus(text)).encode() + b"\n"
    )
    [answer] = reply_lines(client.transport.value())
    assert answer["response"].startswith("BadRequest: message is not valid JSON")
