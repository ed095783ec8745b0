"""ModServer's config application and file polling, with a fake reactor."""

from __future__ import annotations

import json

from modserver.server import listeners, service
from modserver.server.config import read_config
from modserver.server.service import ModServer, ServerSettings
from modserver.supervision.lifecycle import State
from modserver.supervision.supervisor import WorkerSettings
from tests.fakes import FakeReactor, GroupSignals

LASER = ["laser", "Laser", None]


def make_server(tmp_path, config):
    path = tmp_path / "server.config"
    path.write_text(json.dumps(config))
    reactor = FakeReactor()
    settings = ServerSettings(
        listen=("tcp:0",), workers=WorkerSettings(signal_group=GroupSignals())
    )
    server = ModServer(read_config(str(path)), settings, reactor)
    server.startService()
    for spawned in reactor.spawned:
        spawned.ready()
    return server, reactor, path


def spawned_for(reactor, name):
    return [s for s in reactor.spawned if s.args[3] == name]


def test_config_changes_start_restart_and_stop_only_what_changed(tmp_path):
    server, reactor, path = make_server(tmp_path, {"keep": LASER, "change": LASER, "gone": LASER})
    path.write_text(json.dumps({"keep": LASER, "change": ["laser", "Laser2", None], "new": LASER}))
    server.reload_config()
    assert server.module_names() == ["keep", "change", "new"]
    assert len(spawned_for(reactor, "keep")) == 1
    assert len(spawned_for(reactor, "new")) == 1
    assert server.module("change").state is State.STOPPING
    spawned_for(reactor, "change")[0].exits(0)
    assert len(spawned_for(reactor, "change")) == 2
    assert b'"entry": "Laser2"' in spawned_for(reactor, "change")[1].transport.frames()[0][3]


def test_a_module_added_back_waits_for_its_old_worker_to_stop(tmp_path):
    server, reactor, path = make_server(tmp_path, {"laser": LASER})
    old = spawned_for(reactor, "laser")[0]
    path.write_text("{}")
    server.reload_config()
    path.write_text(json.dumps({"laser": LASER}))
    server.reload_config()
    assert len(spawned_for(reactor, "laser")) == 1  # never two workers on one instrument
    old.exits(0)
    assert len(spawned_for(reactor, "laser")) == 2


def test_the_poll_loop_reloads_a_module_whose_file_changed(tmp_path):
    source = tmp_path / "laser.py"
    source.write_text("v1")
    server, reactor, _ = make_server(tmp_path, {"laser": LASER})
    supervisor = server.module("laser")
    from modserver.server.watcher import content_digest

    supervisor.life.files = {str(source): content_digest(b"v1")}
    reactor.advance(0.5)
    assert supervisor.state is State.READY
    source.write_text("v2")
    reactor.advance(0.5)
    assert supervisor.state is State.STOPPING


def test_the_poll_loop_survives_an_error(tmp_path, monkeypatch):
    server, reactor, _ = make_server(tmp_path, {"laser": LASER})
    calls = []

    def broken():
        calls.append(1)
        raise OSError("disk gone")

    monkeypatch.setattr(server._watch, "poll", broken)
    reactor.advance(0.5)
    reactor.advance(0.5)
    assert len(calls) == 2 and server._poller.running


def test_stopping_the_server_stops_every_worker(tmp_path):
    server, reactor, _ = make_server(tmp_path, {"a": LASER, "b": LASER})
    done = server.stopService()
    assert not done.called
    for spawned in reactor.spawned:
        spawned.exits(0)
    assert done.called and not server._poller.running


def test_counts_in_the_log_are_grammatical():
    assert service.plural(1, "module") == "1 module"
    assert [service.plural(n, "module") for n in (0, 2)] == ["0 modules", "2 modules"]


def test_a_status_page_on_every_address_is_named_by_this_pcs_addresses():
    local = ["127.0.0.1", "10.0.0.7", "::1", "fe80::1%2", "2001:db8::7"]
    assert listeners.page_urls("0.0.0.0", 8080, local) == [
        "http://localhost:8080/",
        "http://10.0.0.7:8080/",
    ]
    v6 = listeners.page_urls("::", 8080, local)
    assert v6[:2] == ["http://localhost:8080/", "http://[2001:db8::7]:8080/"]
    assert not any("fe80" in url or "[::" in url for url in v6)
    assert listeners.page_urls("127.0.0.1", 8080, local) == ["http://127.0.0.1:8080/"]
    assert "0.0.0.0" not in " ".join(listeners.page_urls("0.0.0.0", 8080))  # this PC's own
