"""The status page: ``/`` for people, ``/status.json`` and ``/metrics`` for programs.

The page is rendered here, once, from the same data as ``_status``; a few
lines of script fetch fresh table rows every two seconds so it stays
current without reloading (and without closing an expanded traceback),
count a module's backoff down, and send the administrators' buttons to
``/control`` (see controls.py).  ``/metrics`` is Prometheus's (metrics.py).
"""

from __future__ import annotations

import html
import ipaddress
import json
import math
import socket
import time

from twisted.web import resource, server

from modserver.server.access import Identity
from modserver.supervision import stats
from modserver.web import controls, metrics

REFRESH_MS = 2000

_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .2em; }
h2 { font-size: 1.1em; margin: 1.5em 0 .2em; }
.facts { color: #555; margin: 0 0 1em; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .35em .6em; border-bottom: 1px solid #ddd;
         vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.state { display: inline-block; padding: .1em .5em; border-radius: .8em; color: #fff;
         font-weight: 600; }
.ready { background: #2e7d32; } .busy { background: #1565c0; }
.starting, .stopping { background: #8d6e63; } .backoff { background: #ef6c00; }
.failed { background: #c62828; } .stopped { background: #757575; }
details summary { cursor: pointer; }
pre { white-space: pre-wrap; font-size: 12px; background: #f8f8f8; padding: .5em;
      max-width: 60em; margin: .3em 0; }
.problems { color: #c62828; }
.config-error { background: #fdecea; color: #b71c1c; border: 1px solid #f5c6cb;
                padding: .5em .8em; border-radius: .3em; font-weight: 600; }
td.num pre { text-align: left; white-space: pre; }
.countdown { display: block; color: #ef6c00; font-size: 12px; margin-top: .2em; }
.limit { color: #777; }
button { font: inherit; padding: .15em .6em; cursor: pointer; }
#control-result.ok { color: #2e7d32; }
"""

_SCRIPT = """
function openKeys() {
  return new Set([...document.querySelectorAll('details[open]')].map(d => d.dataset.key));
}
async function refresh() {
  try {
    const reply = await fetch('?part=live', {cache: 'no-store'});
    if (!reply.ok) throw new Error(reply.status);
    const open = openKeys();
    document.getElementById('live').innerHTML = await reply.text();
    document.querySelectorAll('details').forEach(d => {
      if (open.has(d.dataset.key)) d.open = true;
    });
    countDown();
    document.getElementById('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
  } catch (err) {
    document.getElementById('updated').textContent = 'server not answering (' + err + ')';
  }
}
function countDown() {
  document.querySelectorAll('.countdown').forEach(c => {
    if (!c.dataset.deadline) c.dataset.deadline = Date.now() + 1000 * Number(c.dataset.seconds);
    const left = Math.max(0, Math.ceil((Number(c.dataset.deadline) - Date.now()) / 1000));
    c.textContent = 'restart in ' + left + ' s';
  });
}
async function control(button) {
  const result = document.getElementById('control-result');
  const token = document.querySelector('meta[name="modserver-token"]').content;
  button.disabled = true;
  try {
    const reply = await fetch('/control', {
      method: 'POST', cache: 'no-store',
      headers: {'Content-Type': 'application/json', 'TOKEN_HEADER': token},
      body: JSON.stringify({action: button.dataset.action, module: button.dataset.module}),
    });
    result.textContent = await reply.text();
    result.className = reply.ok ? 'ok' : 'problems';
  } catch (err) {
    result.textContent = 'server not answering (' + err + ')';
    result.className = 'problems';
  }
  button.disabled = false;
  refresh();
}
document.addEventListener('click', event => {
  const button = event.target.closest('button[data-action]');
  if (button) control(button);
});
setInterval(refresh, REFRESH_MS);
setInterval(countDown, 250);
countDown();
""".replace("REFRESH_MS", str(REFRESH_MS)).replace("TOKEN_HEADER", controls.TOKEN_HEADER)


def _duration(seconds) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"


def _details(key: str, summary: str, body: str) -> str:
    if not body:
        return html.escape(summary)
    return (
        f'<details data-key="{html.escape(key)}"><summary>{html.escape(summary)}</summary>'
        f"<pre>{html.escape(body)}</pre></details>"
    )


def _latency(seconds) -> str:
    if seconds is None:
        return ""
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch))


def _state_cell(module: dict) -> str:
    state = html.escape(module["state"])
    cell = f'<span class="state {state}">{state}</span>'
    restart_in = module.get("restart_in")
    if restart_in is not None:  # the page's script counts it down between refreshes
        cell += (
            f'<span class="countdown" data-seconds="{restart_in:g}">'
            f"restart in {math.ceil(restart_in)} s</span>"
        )
    return cell


def _restarts_cell(name: str, module: dict) -> str:
    history = "\n".join(
        f"{_clock(r['time'])} {r['cause']}: {r['detail']}"
        for r in reversed(module.get("restart_history") or [])
    )
    return _details(f"{name}/restarts", str(module.get("restarts", 0)), history)


def _controls_cell(name: str, module: dict) -> str:
    cell = (
        f'<button data-action="restart" data-module="{html.escape(name)}" '
        f'title="stop this worker (its __exit__ runs) and start a fresh one">restart</button>'
    )
    lease = module.get("lease")
    if lease:
        cell += (
            f' <button data-action="break-lease" data-module="{html.escape(name)}" '
            f'title="end {html.escape(lease["holder"])}\'s lease now">break lease</button>'
        )
    return cell


def _lease_cell(module: dict) -> str:
    lease = module.get("lease")
    if not lease:
        return ""
    text = f"{lease['holder']} until {lease['until']} ({math.ceil(lease['seconds_left'])} s left)"
    waiting = module.get("lease_waiting") or []
    if waiting:
        text += "; waiting: " + ", ".join(waiting)
    return html.escape(text)


def _waiting_cell(module: dict) -> str:
    by_client = module.get("waiting_by_client") or {}
    return html.escape(", ".join(f"{who}: {count}" for who, count in by_client.items()))


def render_row(name: str, module: dict, admin: bool = False) -> str:
    """One module's table row; with the controls for an administrator."""
    state = module["state"]
    current = module.get("current_call")
    doing = ""
    if current:
        doing = f"{current['function']}() for {current['seconds']:.1f} s from {current['client']}"
    error = module.get("last_error")
    error_cell = _details(f"{name}/error", error["reason"], error["traceback"]) if error else ""
    log = module.get("log") or []
    last = log[-1].splitlines()[0] if log else ""
    log_cell = _details(f"{name}/log", last, "\n".join(log))
    latency = module.get("latency") or {}
    timeout = module.get("timeout")
    cells = [
        f'<td class="name">{html.escape(name)}</td>',
        f"<td>{_state_cell(module)}</td>",
        f'<td class="num pid">{module.get("pid") or ""}</td>',
        f'<td class="num uptime">{_duration(module.get("uptime"))}</td>',
        f'<td class="num restarts">{_restarts_cell(name, module)}</td>',
        f'<td class="num calls">{module.get("calls", 0)}</td>',
        f'<td class="num errors">{module.get("errors", 0)}</td>',
        f'<td class="num timeouts">{module.get("timeouts", 0)}</td>',
        f'<td class="num p50">{_latency(latency.get("p50"))}</td>',
        f'<td class="num p99">{_latency(latency.get("p99"))}</td>',
        f'<td class="num queue">{module.get("queue", 0)}'
        f'<span class="limit"> / {module.get("queue_limit", "")}</span></td>',
        f'<td class="waiting">{_waiting_cell(module)}</td>',
        f'<td class="lease">{_lease_cell(module)}</td>',
        f'<td class="num timeout">{"none" if timeout is None else f"{timeout:g} s"}</td>',
        f'<td class="current">{html.escape(doing)}</td>',
        f'<td class="exit">{html.escape(module.get("last_exit") or "")}</td>',
        f'<td class="error">{error_cell}</td>',
        f'<td class="log">{log_cell}</td>',
    ]
    if admin:
        cells.append(f'<td class="controls">{_controls_cell(name, module)}</td>')
    return (
        f'<tr data-module="{html.escape(name)}" data-state="{html.escape(state)}">'
        + "".join(cells)
        + "</tr>"
    )


def render_rows(status: dict, admin: bool = False) -> str:
    return "\n".join(render_row(name, module, admin) for name, module in status["modules"].items())


HEADINGS = [
    "module",
    "state",
    "pid",
    "up",
    "restarts",
    "calls",
    "errors",
    "timeouts",
    "p50",
    "p99",
    "queue",
    "waiting",
    "lease",
    "timeout",
    "current call",
    "last exit",
    "last error",
    "recent log",
]

# What the headings mean, shown when the mouse rests on them.
HEADING_TITLES = {
    "calls": "calls answered since the server started",
    "errors": "calls answered with an error (the module raised, timed out, died or refused)",
    "timeouts": "calls that ran past their timeout",
    "p50": f"median time from arrival to reply, over the last {stats.LATENCY_WINDOW:g} s",
    "p99": f"99th percentile of that time, over the last {stats.LATENCY_WINDOW:g} s",
    "queue": "calls waiting / the module's queue_limit",
    "timeout": "the module's call timeout",
    "waiting": "calls waiting, by client (they are served in turns)",
    "lease": "who holds the module's lease, until when; who waits to take it",
    "restarts": "workers replaced; click for when and why",
}


def render_readings(status: dict) -> str:
    """The watched readings: the config's and clients', with their last value and its age."""
    rows = []
    for module, facts in status["modules"].items():
        for reading in facts.get("readings", []):
            error = reading.get("last_error") or ""
            value = json.dumps(reading["value"]) if reading["time"] is not None else ""
            rows.append(
                f'<tr data-reading="{html.escape(reading["reading"])}">'
                f'<td class="name">{html.escape(module)}</td>'
                f"<td>{html.escape(reading.get('name') or reading['reading'])}</td>"
                f'<td class="num value">{html.escape(value[:80])}</td>'
                f'<td class="num age">{_duration(reading["age"])}</td>'
                f'<td class="num">{reading["period"]:g} s</td>'
                f'<td class="num">{reading["watchers"]}</td>'
                f'<td class="error">{html.escape(error)}</td></tr>'
            )
    if not rows:
        return ""
    head = "".join(
        f"<th>{h}</th>"
        for h in ("module", "reading", "value", "age", "every", "watchers", "last error")
    )
    return (
        '<h2>Readings</h2><table class="readings"><thead><tr>'
        + head
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def render_live(status: dict, admin: bool = False) -> str:
    """What the page refreshes: the server's facts and the modules' table."""
    server = status["server"]
    facts = [
        f"modserver {server['version']}",
        f"pid {server['pid']}",
        f"up {_duration(server['uptime'])}",
        f"config {server['config']}" + (" (bundled demo)" if server.get("demo") else ""),
        "listening on " + ", ".join(server["listen"]),
        f"{server.get('connections', 0)} client connections",
    ]
    problems = "".join(f"<li>{html.escape(p)}</li>" for p in server.get("config_problems", []))
    config_error = server.get("config_error")
    warning = (
        f'<p class="config-error">The config file on disk is not in use: '
        f"{html.escape(config_error)}</p>"
        if config_error
        else ""
    )
    headings = HEADINGS + (["controls"] if admin else [])
    head = "".join(
        f'<th title="{html.escape(HEADING_TITLES[h])}">{h}</th>'
        if h in HEADING_TITLES
        else f"<th>{h}</th>"
        for h in headings
    )
    return (
        f'<p class="facts">{html.escape(" · ".join(facts))}</p>'
        + warning
        + (f'<ul class="problems">{problems}</ul>' if problems else "")
        + f"<table><thead><tr>{head}</tr></thead>"
        + f"<tbody>{render_rows(status, admin)}</tbody></table>"
        + render_readings(status)
        + render_lab(status.get("lab"))
    )


def render_lab(lab: dict | None) -> str:
    """The other modservers announced on the lab network, linked to their status pages."""
    if lab is None:
        return ""
    if lab["state"] == "announced":
        said = f"This server is announced as \u201c{lab['instance']}\u201d."
    elif lab["state"] == "announcing":
        said = "This server is being announced."
    else:
        said = lab["reason"] or "This server is not announced."
    rows = "".join(_peer_row(peer) for peer in lab["peers"])
    if rows:
        head = "".join(f"<th>{h}</th>" for h in ("server", "address", "TLS port", "version"))
        table = f'<table class="peers"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
    elif lab["state"] == "announced":
        table = '<p class="facts">No other modserver seen on the lab network.</p>'
    else:
        table = ""
    return (
        '<h2 id="lab">Other servers on the lab network</h2>'
        f'<p class="facts">{html.escape(said)}</p>{table}'
    )


def _peer_row(peer: dict) -> str:
    name = html.escape(peer["instance"])
    page = peer.get("status_page")
    if page:
        name = f'<a href="{html.escape(page)}">{name}</a>'
    port = peer["port"] if peer["port"] is not None else peer["tls_port"]
    where = ", ".join(f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in peer["addresses"])
    return (
        f'<tr data-peer="{html.escape(peer["instance"])}"><td class="name">{name}</td>'
        f'<td class="address">{html.escape(where)}</td>'
        f'<td class="num">{peer["tls_port"] or ""}</td>'
        f"<td>{html.escape(peer['version'])}</td></tr>"
    )


def render_page(status: dict, token: str | None = None) -> str:
    """The whole page; with the controls when ``token`` is given (an administrator's)."""
    name = html.escape(status["server"]["name"])
    admin = token is not None
    meta = f'<meta name="modserver-token" content="{html.escape(token)}">' if admin else ""
    controls_bar = (
        '<p class="controls"><button data-action="reload-config" '
        'title="re-read the config file and apply its changes">re-read the config</button> '
        '<span id="control-result"></span></p>'
        if admin
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{name}: modserver status</title>{meta}
<noscript><meta http-equiv="refresh" content="{REFRESH_MS // 1000}"></noscript>
<style>{_STYLE}</style></head>
<body>
<h1>{name}</h1>
{controls_bar}
<div id="live">{render_live(status, admin)}</div>
<p class="facts" id="updated">updated {time.strftime("%H:%M:%S")}</p>
<script>{_SCRIPT}</script>
</body></html>
"""


def host_name(header: bytes | None) -> str | None:
    """The name in a ``Host`` header, without its port, lower case; None if absent."""
    if not header:
        return None
    text = header.decode("latin-1").strip().lower()
    if text.startswith("["):  # [2001:db8::1]:8080
        return text[1 : text.find("]")] if "]" in text else text
    if text.count(":") == 1:
        text = text.split(":", 1)[0]
    return text.rstrip(".")


def host_allowed(name: str | None, names: frozenset[str]) -> bool:
    """Does a request for ``name`` address this server?

    Browsers send the name they looked up: a page on another site that
    makes its name resolve to this computer (DNS rebinding) still sends its
    own name, so only IP literals, localhost and this server's own names
    are answered.  A request without Host (not from a browser) is answered.
    """
    if name is None or name in names or name == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def own_names(extra=()) -> frozenset[str]:
    """This computer's own names (short and full) and ``extra`` ones, lower case."""
    names = {name.lower().rstrip(".") for name in extra}
    hostname = socket.gethostname().lower()
    if hostname:
        names.update({hostname, hostname.split(".", 1)[0]})
    return frozenset(names)


class StatusPage(resource.Resource):
    """``/`` (the page; ``?part=live`` for its changing part), ``/status.json``,
    ``/metrics``, and ``POST /control`` for the page's buttons.

    Only clients the server admits (``--allow``) are answered (403 for the
    rest), and only requests for one of this server's names (421).
    """

    isLeaf = True  # noqa: N815 - twisted.web's name

    def __init__(self, server, hosts=()) -> None:
        super().__init__()
        self.server = server
        self.names = own_names(hosts)
        self.token = controls.new_token()

    def render(self, request) -> bytes:
        """Every method: refuse clients not admitted and names not ours first."""
        who = _identity(request)
        if not self.server.access.admits(who):
            self.server.refused(who, "http", f"{who} may not use the status page (--allow)")
            return _plain(
                request,
                403,
                f"Forbidden: {who} may not use this server; "
                "the operator can admit it with --allow\n",
            )
        name = host_name(request.getHeader(b"host"))
        if not host_allowed(name, self.names):
            return _plain(
                request,
                421,
                f"Misdirected Request: this status page does not answer to the name "
                f"{name!r}; use its address, or the operator can add the name with "
                "--http-host\n",
            )
        if request.path == controls.PATH:
            return self._control(request)
        return super().render(request)

    def render_GET(self, request) -> bytes:  # noqa: N802 - twisted.web's name
        request.setHeader(b"Cache-Control", b"no-store")
        who = _identity(request)
        if request.path == b"/metrics":
            body, content_type = metrics.render(self.server, who, _header(request, b"accept"))
            request.setHeader(b"Content-Type", content_type.encode())
            return body
        status = self.server.status(None, who)
        if request.path == b"/status.json":
            request.setHeader(b"Content-Type", b"application/json")
            return json.dumps(status).encode()
        if request.path != b"/":
            request.setResponseCode(404)
            return b"not found"
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        status["lab"] = self.server.announcer.snapshot()  # the page's own panel
        admin = self.server.access.is_admin(who)
        if request.args.get(b"part") == [b"live"]:
            return render_live(status, admin).encode()
        return render_page(status, self.token if admin else None).encode()

    def _control(self, request) -> bytes:
        """``/control``: a button of the page, if every check of controls.refusal passes."""
        who = _identity(request)
        asked = controls.ControlRequest(
            method=request.method.decode("latin-1"),
            who=who,
            admin=self.server.access.is_admin(who),
            host=_header(request, b"host"),
            secure=request.isSecure(),
            origin=_header(request, b"origin"),
            fetch_site=_header(request, b"sec-fetch-site"),
            content_type=_header(request, b"content-type"),
            token=_header(request, controls.TOKEN_HEADER.lower().encode()),
        )
        refused = controls.refusal(asked, self.token)
        if refused is not None:
            if refused.code == 405:
                request.setHeader(b"Allow", b"POST")
            return _plain(request, refused.code, refused.reason + "\n")
        try:
            action, module = controls.parse_action(request.content.read(controls.MAX_BODY))
        except ValueError as exc:
            return _plain(request, 400, f"Bad Request: {exc}\n")
        code, text = controls.perform(self.server, action, module, who)
        return _plain(request, code, text + "\n")


def _header(request, name: bytes) -> str | None:
    value = request.getHeader(name)
    return value.decode("latin-1") if value is not None else None


def _identity(request) -> Identity:
    return Identity.of(getattr(request.getClientAddress(), "host", ""))


def _plain(request, code: int, text: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    return text.encode("utf-8")


class StatusSite(server.Site):
    """The status page's site, without a log line per request (it refreshes itself)."""

    noisy = False

    def log(self, request) -> None:
        """Requests for the status page are not logged."""
