"""The status page's panel of other servers on the lab network (rendering only)."""

from __future__ import annotations

from modserver.web import status as web

PEER = {
    "instance": "laser-pc on labpc2",
    "name": "laser-pc",
    "version": "0.1.0",
    "addresses": ["10.0.0.6"],
    "port": 36577,
    "tls_port": None,
    "status_page": "http://10.0.0.6:8080/",
}


def lab(state="announced", peers=(), reason=""):
    return {"state": state, "instance": "wavemeter-pc on labpc1", "reason": reason, "peers": peers}


def test_other_servers_are_linked_to_their_status_pages():
    without_page = dict(PEER, instance="stage-pc on labpc3", status_page=None, tls_port=36578)
    html = web.render_lab(lab(peers=[PEER, without_page]))
    assert "This server is announced as \u201cwavemeter-pc on labpc1\u201d." in html
    assert '<a href="http://10.0.0.6:8080/">laser-pc on labpc2</a>' in html
    assert '<td class="address">10.0.0.6:36577</td>' in html
    assert '<td class="name">stage-pc on labpc3</td>' in html  # no page: no link
    assert '<td class="num">36578</td>' in html


def test_the_panel_says_when_nobody_else_is_seen_or_why_it_does_not_look():
    assert "No other modserver seen on the lab network." in web.render_lab(lab())
    off = web.render_lab(lab("off", reason="Not announced (--no-announce)."))
    assert "Not announced (--no-announce)." in off and "<table" not in off


def test_names_from_the_network_are_escaped():
    html = web.render_lab(lab(peers=[dict(PEER, instance="<b>evil</b>")]))
    assert "<b>evil</b>" not in html and "&lt;b&gt;evil&lt;/b&gt;" in html


def test_a_page_without_the_panel_data_has_no_panel():
    assert web.render_lab(None) == ""
