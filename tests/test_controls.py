"""The checks a status page button's request must pass (controls.refusal), without a server."""

from __future__ import annotations

import dataclasses

import pytest

from modserver.server.access import Identity
from modserver.web.controls import ControlRequest, parse_action, refusal

TOKEN = "s3cret-token"
GOOD = ControlRequest(
    method="POST",
    who=Identity.of("127.0.0.1"),
    admin=True,
    host="127.0.0.1:8080",
    secure=False,
    origin="http://127.0.0.1:8080",
    content_type="application/json",
    token=TOKEN,
)


def asked(**changes) -> ControlRequest:
    return dataclasses.replace(GOOD, **changes)


def test_a_request_from_the_page_of_an_administrator_passes():
    assert refusal(GOOD, TOKEN) is None
    assert refusal(asked(content_type="application/json; charset=utf-8"), TOKEN) is None


@pytest.mark.parametrize(
    ("changes", "code", "says"),
    [
        ({"method": "GET"}, 405, "POST"),
        ({"admin": False}, 403, "--admin-allow"),
        ({"origin": "http://evil.example"}, 403, "another site"),
        ({"origin": "null"}, 403, "another site"),
        ({"origin": "https://127.0.0.1:8080"}, 403, "another site"),  # not the page's scheme
        ({"origin": None}, 403, "another site"),  # and no Sec-Fetch-Site either
        ({"origin": None, "fetch_site": "cross-site"}, 403, "another site"),
        ({"origin": None, "fetch_site": "same-site"}, 403, "another site"),
        ({"content_type": "application/x-www-form-urlencoded"}, 415, "application/json"),
        ({"content_type": "multipart/form-data; boundary=x"}, 415, "application/json"),
        ({"content_type": "text/plain"}, 415, "application/json"),
        ({"content_type": None}, 415, "application/json"),
        ({"token": None}, 403, "token"),
        ({"token": "guess"}, 403, "token"),
    ],
)
def test_each_check_refuses_with_a_reason(changes, code, says):
    refused = refusal(asked(**changes), TOKEN)
    assert refused is not None and refused.code == code and says in refused.reason


def test_without_origin_a_same_origin_fetch_site_will_do():
    assert refusal(asked(origin=None, fetch_site="same-origin"), TOKEN) is None


def test_over_tls_the_origin_is_https():
    assert refusal(asked(secure=True, origin="https://127.0.0.1:8080"), TOKEN) is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"action": "restart", "module": "laser"}', ("restart", "laser")),
        (b'{"action": "reload-config"}', ("reload-config", None)),
    ],
)
def test_actions(body, expected):
    assert parse_action(body) == expected


@pytest.mark.parametrize(
    "body", [b"action=restart", b'{"action": "shutdown"}', b'{"action": "restart"}', b"[]"]
)
def test_bad_actions_say_what_is_wrong(body):
    with pytest.raises(ValueError):
        parse_action(body)
