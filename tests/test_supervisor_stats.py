"""What the supervisor reports to its ModuleStats, with a fake reactor and pretend workers."""

from __future__ import annotations

import pytest

from tests.fakes import make_call, make_supervisor

OK = b'{"response": 1, "error": false, "traceback": ""}'
FAILED = b'{"response": "ValueError: no", "error": true, "traceback": "..."}'


def ready_supervisor(**options):
    supervisor, reactor, signals = make_supervisor(**options)
    supervisor.start()
    reactor.last.ready()
    return supervisor, reactor, signals


def test_answered_calls_are_counted_with_their_latency_from_arrival():
    supervisor, reactor, _ = ready_supervisor()
    first, second = make_call(), make_call()
    supervisor.submit(first)
    supervisor.submit(second)  # waits 0.25 s for the first
    reactor.advance(0.25)
    reactor.last.replies(reactor.last.calls()[0][0], OK)
    reactor.advance(0.5)
    reactor.last.replies(reactor.last.calls()[1][0], FAILED, error=True)
    snap = supervisor.snapshot()
    assert (snap["calls"], snap["errors"], snap["timeouts"]) == (2, 1, 0)
    assert snap["latency"]["p50"] == pytest.approx(0.25)
    assert snap["latency"]["p99"] == pytest.approx(0.75)


def test_a_full_queue_counts_as_refused():
    supervisor, _, _ = ready_supervisor(queue_limit=0)
    supervisor.submit(make_call())
    supervisor.submit(make_call())
    assert supervisor.snapshot()["outcomes"]["refused"] == 1


def test_a_timeout_is_counted_and_its_restart_remembered_with_its_cause():
    supervisor, reactor, _ = ready_supervisor(timeout=2.0)
    supervisor.submit(make_call(function="hang"))
    reactor.advance(2)
    reactor.last.exits(code=None, signal=9)
    snap = supervisor.snapshot()
    assert snap["timeouts"] == 1 and snap["latency"]["p99"] == pytest.approx(2.0)
    ((restart,),) = [snap["restart_history"]]
    assert restart["cause"] == "timeout" and restart["detail"] == "hang() ran over 2 s"
    assert restart["time"] == pytest.approx(2.0)
    assert snap["restarts"] == 1


def test_a_death_is_remembered_with_how_the_worker_ended():
    supervisor, reactor, _ = ready_supervisor()
    call = make_call(function="measure")
    supervisor.submit(call)
    reactor.advance(3)
    reactor.last.exits(code=None, signal=11)
    snap = supervisor.snapshot()
    assert snap["outcomes"]["died"] == 1
    assert snap["restart_history"] == [
        {"time": 3.0, "cause": "died", "detail": "signal 11 (SIGSEGV)"}
    ]


def test_restarts_for_changed_files_and_config_name_their_cause():
    supervisor, reactor, _ = ready_supervisor()
    supervisor.files_changed(["/config/mymodules/laser.py"])
    reactor.last.exits(0)
    reactor.last.ready()
    supervisor.update(supervisor.spec.__class__(name="laser", module="other.mod", entry="X"))
    reactor.last.exits(0)
    causes = [(r["cause"], r["detail"]) for r in supervisor.snapshot()["restart_history"]]
    assert causes == [
        ("files", "/config/mymodules/laser.py changed"),
        ("config", "config entry changed"),
    ]


def test_the_snapshot_shows_the_modules_timeout_and_queue_limit():
    supervisor, _, _ = ready_supervisor(timeout=30.0, queue_limit=7)
    snap = supervisor.snapshot()
    assert (snap["timeout"], snap["queue_limit"]) == (30.0, 7)


def test_a_worker_dying_while_loading_shows_only_its_own_last_output():
    supervisor, reactor, _ = make_supervisor()
    supervisor.start()
    for attempt in range(3):
        reactor.advance(5)  # past the backoff (1 s, 2 s): the next attempt starts
        reactor.last.protocol.childDataReceived(2, f"driver init failed ({attempt})\n".encode())
        reactor.last.exits(code=None, signal=6)
    assert len(reactor.spawned) == 3
    trace = supervisor.hello_error().traceback
    assert trace.count("driver init failed") == 1 and "(2)" in trace
