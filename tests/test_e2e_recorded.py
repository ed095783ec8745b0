"""Clients that never ask for binary segments get the bytes they got before them.

The sessions of tests/exchange.py (the MATLAB hwserver class, the original
client.py, nc) were recorded from the server as it was before binary
segments (tests/data/recorded_exchange.json); today's server must answer
them with exactly the same bytes.
"""

from __future__ import annotations

import base64
import json

import pytest

from tests import exchange
from tests.helpers import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerProcess(tmp_path_factory.mktemp("recorded"), exchange.CONFIG).start() as srv:
        yield srv


RECORDED = json.loads(exchange.RECORDING.read_text())


def test_the_recording_covers_every_session():
    assert set(RECORDED) == set(exchange.SESSIONS)
    for name, lines in exchange.SESSIONS.items():
        assert RECORDED[name]["sent"] == [line.decode() for line in lines]


@pytest.mark.parametrize("name", sorted(exchange.SESSIONS))
def test_the_same_bytes_as_before_binary_segments(server, name):
    received = exchange.play(server.port, exchange.SESSIONS[name])
    assert received == base64.b64decode(RECORDED[name]["received"])
