"""The status page's buttons: restart a module, break its lease, re-read the config;
who may, and how.

The buttons send ``POST /control`` with a JSON body such as
``{"action": "restart", "module": "laser"}``.  The page has no password,
so a request is acted on only if it passes every check of ``refusal``:

- it is a POST (a link or an image on another site cannot POST);
- it comes from an administrator (``--admin-allow``), as ``_reload_`` does;
- it comes from the page itself: the browser says where a request comes
  from in ``Origin`` (or, without it, ``Sec-Fetch-Site``), which a page on
  another site cannot change;
- its body is ``application/json``: another site's form can send only
  form-encoded, multipart or plain text bodies without the browser's CORS
  preflight, which this server never grants;
- it carries the server's token, which only the page shown to an
  administrator holds (it changes at every start).
"""

from __future__ import annotations

import hmac
import json
import secrets
from dataclasses import dataclass

from modserver.server.access import Identity
from modserver.wire.errors import ReplyError

PATH = b"/control"
TOKEN_HEADER = "X-Modserver-Token"
ACTIONS = ("restart", "break-lease", "reload-config")
MAX_BODY = 4096


def new_token() -> str:
    """A secret for one server run, embedded in the administrators' page."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class ControlRequest:
    """What the checks need to know about one HTTP request to ``/control``."""

    method: str
    who: Identity
    admin: bool
    host: str | None  # the Host header, as sent
    secure: bool  # over TLS
    origin: str | None = None
    fetch_site: str | None = None  # Sec-Fetch-Site
    content_type: str | None = None
    token: str | None = None


@dataclass(frozen=True)
class Refusal:
    """An HTTP status and a one-line reason."""

    code: int
    reason: str


def refusal(request: ControlRequest, token: str) -> Refusal | None:
    """Why ``request`` may not act, or None if it may."""
    if request.method != "POST":
        return Refusal(405, "Method Not Allowed: the controls take a POST from the status page")
    if not request.admin:
        return Refusal(
            403,
            f"Forbidden: {request.who} may not restart modules, break leases or re-read the "
            "config: only "
            "administrators may; the operator names them with --admin-allow",
        )
    if not same_origin(request):
        return Refusal(
            403,
            f"Forbidden: a request from another site (Origin {request.origin or 'absent'}, "
            f"Sec-Fetch-Site {request.fetch_site or 'absent'}); use the buttons on the "
            "status page",
        )
    media_type = (request.content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        return Refusal(
            415,
            f"Unsupported Media Type: the controls take application/json, not "
            f"{media_type or 'no body type'}",
        )
    if not request.token or not hmac.compare_digest(request.token.encode(), token.encode()):
        return Refusal(
            403,
            f"Forbidden: the request does not carry this server's token ({TOKEN_HEADER}); "
            "use the buttons on the status page (reload it if the server restarted)",
        )
    return None


def same_origin(request: ControlRequest) -> bool:
    """Did the browser send this from a page of this very server?"""
    if request.origin is not None:
        scheme = "https" if request.secure else "http"
        return request.host is not None and request.origin.lower() == (
            f"{scheme}://{request.host}".lower()
        )
    return request.fetch_site == "same-origin"


def parse_action(body: bytes) -> tuple[str, str | None]:
    """``(action, module)`` from a JSON body; ValueError says what is wrong."""
    try:
        message = json.loads(body)
    except ValueError:
        raise ValueError("the body is not JSON") from None
    if not isinstance(message, dict) or message.get("action") not in ACTIONS:
        raise ValueError(f'"action" must be one of {", ".join(ACTIONS)}')
    module = message.get("module")
    if message["action"] in ("restart", "break-lease") and not isinstance(module, str):
        raise ValueError(f'"{message["action"]}" needs the "module" to act on')
    return message["action"], module


def perform(server, action: str, module: str | None, who: Identity) -> tuple[int, str]:
    """Do what was asked: ``(HTTP status, what happened)``."""
    by = f"the status page ({who})"
    if action == "reload-config":
        try:
            server.reload_config(by=by)
        except ReplyError as err:
            return 409, err.reason
        return 200, "Reloaded config"
    if action == "break-lease":
        try:
            holder = server.break_lease(module, by=by)
        except ReplyError as err:
            return 409, err.reason
        if holder is None:
            return 404, f'Failed to find module "{module}"'
        return 200, f"Broke {holder}'s lease on {module}"
    restarting = server.reload_module(module, by=by)
    if restarting is None:
        return 404, f'Failed to find module "{module}"'
    restarting.addErrback(lambda _: None)  # a load failure shows on the page and in the log
    return 202, f"Restarting {module}"
