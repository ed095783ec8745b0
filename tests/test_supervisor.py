"""The supervisor's decisions, with a fake reactor: time and processes are pretend."""

from __future__ import annotations

import dataclasses
import os

import pytest

from modserver.supervision.lifecycle import State, check_transition
from modserver.supervision.supervisor import LoadFailed
from modserver.wire import channel
from modserver.wire.errors import ReplyError
from tests.fakes import RecordingSink, make_call, make_supervisor


@pytest.fixture
def setup():
    return make_supervisor()


def ready_supervisor(**options):
    supervisor, reactor, signals = make_supervisor(**options)
    supervisor.start()
    reactor.last.ready()
    return supervisor, reactor, signals


# Starting ---------------------------------------------------------------------


def test_start_spawns_the_worker_script_with_an_absolute_interpreter(setup):
    supervisor, reactor, _ = setup
    supervisor.start()
    spawned = reactor.last
    assert spawned.executable == supervisor.spec.python and os.path.isabs(spawned.executable)
    assert spawned.args[1:3] == ["-u", supervisor.settings.script]
    assert spawned.args[3] == "laser"
    assert supervisor.state is State.STARTING


def test_start_sends_what_to_load(setup):
    supervisor, reactor, _ = setup
    supervisor.start()
    ((kind, _, _, payload),) = reactor.last.transport.frames()
    assert kind == channel.LOAD
    assert b'"module": "mymodules.laser"' in payload and b'"paths": ["/config", "/cwd"]' in payload


def test_ready_worker_is_ready(setup):
    supervisor, reactor, _ = setup
    supervisor.start()
    reactor.last.ready(files=["/config/mymodules/laser.py"])
    assert supervisor.state is State.READY
    assert supervisor.files == {"/config/mymodules/laser.py": bytes(16)}
    assert supervisor.snapshot()["files"] == ["/config/mymodules/laser.py"]
    assert supervisor.snapshot()["pid"] == reactor.last.transport.pid


# Calls ------------------------------------------------------------------------------


def test_a_call_is_sent_and_its_reply_passed_on_unchanged():
    supervisor, reactor, _ = ready_supervisor()
    call = make_call(function="read", args=[3])
    supervisor.submit(call)
    assert supervisor.state is State.BUSY
    ((request_id, meta, request),) = reactor.last.calls()
    assert meta == {"client": "10.0.0.7"} and request["args"] == [3]
    reactor.last.replies(request_id, b'{"response": 7, "error": false, "traceback": ""}')
    assert call.sink.reply() == {"response": 7, "error": False, "traceback": ""}
    assert call.sink.events[0] == ("started", False) and call.sink.events[-1] == ("finished", True)
    assert supervisor.state is State.READY and supervisor.calls_served == 1


def test_calls_run_one_at_a_time_in_arrival_order():
    supervisor, reactor, _ = ready_supervisor()
    calls = [make_call(function=f"f{i}") for i in range(3)]
    for call in calls:
        supervisor.submit(call)
    assert len(reactor.last.calls()) == 1 and supervisor.snapshot()["queue"] == 2
    for i in range(3):
        request_id, _, request = reactor.last.calls()[i]
        assert request["function"] == f"f{i}"
        reactor.last.replies(request_id, b'{"response": null, "error": false, "traceback": ""}')
    assert all(call.sink.finished for call in calls)


def test_a_full_queue_answers_busy_at_once():
    supervisor, _, _ = ready_supervisor(queue_limit=2)
    for client in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        supervisor.submit(make_call(client=client))
    refused = make_call(client="10.0.0.4")
    supervisor.submit(refused)
    reply = refused.sink.reply()
    assert reply["error"] is True and reply["response"].startswith("Busy: laser already has 2")


def test_queue_limit_zero_serves_an_idle_module_and_refuses_waiting():
    supervisor, reactor, _ = ready_supervisor(queue_limit=0)
    first, second = make_call(), make_call()
    supervisor.submit(first)
    supervisor.submit(second)
    assert len(reactor.last.calls()) == 1
    assert second.sink.reply()["response"].startswith("Busy: ")


def test_keep_alive_session_holds_the_module_until_released():
    supervisor, reactor, _ = ready_supervisor()
    holder = RecordingSink()
    supervisor.submit(make_call(holder, function="a", keep_alive=True))
    request_id, _, _ = reactor.last.calls()[0]
    reactor.last.replies(request_id, b'{"response": 1, "error": false, "traceback": ""}')
    other = make_call(function="other")
    supervisor.submit(other)
    assert len(reactor.last.calls()) == 1  # held: the other call waits
    supervisor.submit(make_call(holder, function="b", keep_alive=True))
    request_id, _, request = reactor.last.calls()[1]
    assert request["function"] == "b"
    reactor.last.replies(request_id, b'{"response": 2, "error": false, "traceback": ""}')
    assert len(reactor.last.calls()) == 2
    supervisor.release(holder)
    assert reactor.last.calls()[2][2]["function"] == "other"


def test_an_error_reply_ends_the_hold():
    supervisor, reactor, _ = ready_supervisor()
    holder = RecordingSink()
    supervisor.submit(make_call(holder, keep_alive=True))
    reactor.last.replies(1, b'{"response": "E", "error": true, "traceback": "t"}', error=True)
    supervisor.submit(make_call(function="next"))
    assert reactor.last.calls()[1][2]["function"] == "next"


def test_a_departed_clients_waiting_calls_are_dropped():
    supervisor, reactor, _ = ready_supervisor()
    supervisor.submit(make_call(function="first"))
    gone = RecordingSink()
    supervisor.submit(make_call(gone, function="gone"))
    supervisor.submit(make_call(function="stays"))
    supervisor.release(gone)
    reactor.last.replies(1, b'{"response": null, "error": false, "traceback": ""}')
    assert reactor.last.calls()[1][2]["function"] == "stays"
    assert gone.events == []


def test_a_reply_for_another_request_is_dropped():
    supervisor, reactor, _ = ready_supervisor()
    call = make_call()
    supervisor.submit(call)
    reactor.last.replies(99, b'{"response": 1, "error": false, "traceback": ""}')
    assert call.sink.events == [] and supervisor.state is State.BUSY


# Load failures ------------------------------------------------------------------


def test_load_failure_fails_waiting_calls_and_later_hellos_at_once(setup):
    supervisor, reactor, _ = setup
    supervisor.start()
    waiting = make_call()
    supervisor.submit(waiting)
    reactor.last.load_failed("ModuleNotFoundError: No module named 'x'", "Traceback: x\n")
    assert supervisor.state is State.FAILED
    reply = waiting.sink.reply()
    assert (
        reply["response"]
        == "LoadError: laser failed to load: ModuleNotFoundError: No module named 'x'"
    )
    assert reply["traceback"] == "Traceback: x\n"
    later = make_call()
    supervisor.submit(later)
    assert later.sink.reply()["error"] is True
    assert supervisor.snapshot()["last_error"]["traceback"] == "Traceback: x\n"


def test_a_failed_module_is_not_respawned_by_itself(setup):
    supervisor, reactor, _ = setup
    supervisor.start()
    reactor.last.load_failed()
    reactor.last.exits(3)
    reactor.advance(3600)
    assert len(reactor.spawned) == 1 and supervisor.state is State.FAILED


def test_reload_of_a_failed_module_tries_again(setup):
    supervisor, reactor, _ = setup
    supervisor.start()
    reactor.last.load_failed()
    reactor.last.exits(3)
    ready = supervisor.restart()
    assert len(reactor.spawned) == 2
    reactor.last.ready()
    assert ready.called and supervisor.state is State.READY and supervisor.load_error is None


def test_restart_that_fails_to_load_fails_its_deferred():
    supervisor, reactor, _ = ready_supervisor()
    done = supervisor.restart()
    reactor.last.exits(0)
    reactor.last.load_failed("SyntaxError: bad")
    failures = []
    done.addErrback(failures.append)
    assert failures[0].check(LoadFailed)
    assert "SyntaxError: bad" in failures[0].value.error.reason


# Deaths and backoff ------------------------------------------------------------------


def test_death_mid_call_answers_the_call_and_names_how_it_ended():
    supervisor, reactor, _ = ready_supervisor()
    call = make_call(function="measure")
    supervisor.submit(call)
    reactor.last.protocol.childDataReceived(2, b"Fatal Python error: Segmentation fault\n")
    reactor.last.exits(code=None, signal=11)
    reply = call.sink.reply()
    assert reply["error"] is True
    assert reply["response"] == (
        "WorkerDied: the worker of laser died during measure() (signal 11 (SIGSEGV))"
    )
    assert "Segmentation fault" in reply["traceback"]


def test_first_death_respawns_at_once_and_waiting_calls_go_to_the_new_worker():
    supervisor, reactor, _ = ready_supervisor()
    supervisor.submit(make_call(function="dies"))
    waiting = make_call(function="waits")
    supervisor.submit(waiting)
    reactor.last.exits(code=1)
    assert len(reactor.spawned) == 2 and supervisor.state is State.STARTING
    reactor.last.ready()
    ((request_id, _, request),) = reactor.last.calls()
    assert request["function"] == "waits"
    assert supervisor.restarts == 1 and supervisor.last_exit == "exit code 1"


def test_death_while_loading_answers_waiting_calls_and_hellos_while_retrying(setup):
    supervisor, reactor, _ = setup
    supervisor.start()
    waiting = make_call()
    supervisor.submit(waiting)
    reactor.last.protocol.childDataReceived(2, b"bash: python3.7: command not found\n")
    reactor.last.exits(code=127)
    reply = waiting.sink.reply()
    assert reply["response"].startswith("WorkerDied: the worker of laser died while loading (exit")
    assert "command not found" in reply["traceback"]
    assert len(reactor.spawned) == 2  # the first retry is immediate
    assert supervisor.hello_error() is None  # while it loads again, clients may wait
    reactor.last.exits(code=127)
    assert supervisor.state is State.BACKOFF
    assert supervisor.hello_error().kind == "WorkerDied"
    later = make_call()
    supervisor.submit(later)
    assert later.sink.reply()["error"] is True
    reactor.advance(1)
    reactor.last.ready()
    assert supervisor.hello_error() is None and supervisor.state is State.READY


def test_repeated_deaths_back_off_doubling_up_to_the_cap():
    supervisor, reactor, _ = ready_supervisor()
    delays = []
    for _ in range(9):
        spawned = len(reactor.spawned)
        reactor.last.exits(code=1)
        waited = 0.0
        while len(reactor.spawned) == spawned:
            reactor.advance(0.25)
            waited += 0.25
        delays.append(waited if waited else 0.0)
        assert supervisor.state is State.STARTING
    # the first restart is immediate (the loop above measures it as 0)
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_backoff_state_is_visible_in_status():
    supervisor, reactor, _ = ready_supervisor()
    reactor.last.exits(code=1)
    reactor.last.exits(code=1)
    snapshot = supervisor.snapshot()
    assert snapshot["state"] == "backoff" and snapshot["restart_in"] == 1.0


def test_a_worker_that_stayed_up_starts_the_backoff_over():
    supervisor, reactor, _ = ready_supervisor()
    reactor.last.exits(code=1)  # immediate
    reactor.last.ready()
    reactor.last.exits(code=1)  # 1 s
    reactor.advance(1)
    reactor.last.ready()
    reactor.advance(60)  # stable for a while
    spawned = len(reactor.spawned)
    reactor.last.exits(code=1)
    assert len(reactor.spawned) == spawned + 1  # immediate again


def test_a_worker_is_gone_only_when_its_channel_closed_too():
    supervisor, reactor, _ = ready_supervisor()
    call = make_call()
    supervisor.submit(call)
    proto = reactor.last.protocol
    from twisted.internet import error
    from twisted.python.failure import Failure

    proto.processExited(Failure(error.ProcessTerminated(exitCode=1)))
    assert call.sink.events == []  # its reply may still be in the pipe
    reactor.last.replies(1, b'{"response": 5, "error": false, "traceback": ""}')
    proto.childConnectionLost(1)
    assert call.sink.reply()["response"] == 5
    assert len(reactor.spawned) == 2


def test_a_grandchild_holding_the_channel_delays_the_verdict_half_a_second():
    supervisor, reactor, _ = ready_supervisor()
    call = make_call()
    supervisor.submit(call)
    from twisted.internet import error
    from twisted.python.failure import Failure

    reactor.last.protocol.processExited(Failure(error.ProcessTerminated(exitCode=1)))
    reactor.advance(0.4)
    assert call.sink.events == []
    reactor.advance(0.2)
    assert call.sink.reply()["response"].startswith("WorkerDied")


def test_leftover_children_are_killed_with_the_worker():
    supervisor, reactor, signals = ready_supervisor()
    pid = reactor.last.transport.pid
    reactor.last.exits(code=1)
    assert (pid, "KILL") in signals.sent


def test_messages_from_a_replaced_worker_are_ignored():
    supervisor, reactor, _ = ready_supervisor()
    old = reactor.last
    supervisor.restart()
    old.exits(0)
    old.ready()  # a late frame from the old process
    assert supervisor.state is State.STARTING


# Stopping and restarting -------------------------------------------------------------


def test_stop_asks_then_terminates_then_kills():
    supervisor, reactor, signals = ready_supervisor()
    pid = reactor.last.transport.pid
    done = supervisor.stop(ReplyError("ServerStopping", "bye"))
    assert reactor.last.transport.kinds()[-1] == channel.STOP
    reactor.advance(4.9)
    assert signals.sent == []
    reactor.advance(0.1)
    assert signals.sent == [(pid, "TERM")]
    reactor.advance(2)
    assert signals.sent == [(pid, "TERM"), (pid, "KILL")]
    reactor.last.exits(code=None, signal=9)
    assert done.called and supervisor.state is State.STOPPED


def test_stop_lets_the_call_in_flight_finish_and_fails_waiting_calls():
    supervisor, reactor, _ = ready_supervisor()
    in_flight, waiting = make_call(), make_call()
    supervisor.submit(in_flight)
    supervisor.submit(waiting)
    supervisor.stop(ReplyError("ModuleRemoved", "laser was removed from the config"))
    assert waiting.sink.reply()["response"] == "ModuleRemoved: laser was removed from the config"
    reactor.last.replies(1, b'{"response": 1, "error": false, "traceback": ""}')
    assert in_flight.sink.reply()["response"] == 1
    reactor.last.exits(0)
    assert supervisor.state is State.STOPPED


def test_explicit_restart_stops_after_the_call_in_flight_and_fires_when_ready():
    supervisor, reactor, _ = ready_supervisor()
    call = make_call()
    supervisor.submit(call)
    done = supervisor.restart(when_idle=False)
    assert reactor.last.transport.kinds()[-1] == channel.STOP
    reactor.last.replies(1, b'{"response": 1, "error": false, "traceback": ""}')
    assert call.sink.reply()["response"] == 1
    reactor.last.exits(0)
    assert len(reactor.spawned) == 2 and not done.called
    reactor.last.ready()
    assert done.called and supervisor.restarts == 1


def test_restart_when_idle_waits_for_the_keep_alive_session():
    supervisor, reactor, _ = ready_supervisor()
    holder = RecordingSink()
    supervisor.submit(make_call(holder, keep_alive=True))
    reactor.last.replies(1, b'{"response": 1, "error": false, "traceback": ""}')
    supervisor.restart(when_idle=True)
    assert channel.STOP not in reactor.last.transport.kinds()
    supervisor.release(holder)
    assert reactor.last.transport.kinds()[-1] == channel.STOP


def test_changed_spec_restarts_with_the_new_spec():
    supervisor, reactor, _ = ready_supervisor()
    supervisor.update(supervisor.spec.__class__(name="laser", module="other.mod", entry="X"))
    reactor.last.exits(0)
    assert b'"module": "other.mod"' in reactor.last.transport.frames()[0][3]


# Call timeouts ----------------------------------------------------------------------


def test_a_hung_call_times_out_kills_the_worker_and_the_next_call_gets_a_new_one():
    supervisor, reactor, signals = ready_supervisor(timeout=2.0)
    hung, after = make_call(function="hang"), make_call(function="after")
    supervisor.submit(hung)
    supervisor.submit(after)
    pid = reactor.last.transport.pid
    reactor.advance(2)
    reply = hung.sink.reply()
    assert reply["response"].startswith("Timeout: laser.hang did not answer within 2 s")
    assert (pid, "KILL") in signals.sent
    reactor.last.exits(code=None, signal=9)
    assert len(reactor.spawned) == 2
    reactor.last.ready()
    assert reactor.last.calls()[0][2]["function"] == "after"


def test_per_request_timeout_overrides_the_module_timeout():
    supervisor, reactor, _ = ready_supervisor(timeout=100.0)
    call = make_call(timeout=0.5)
    supervisor.submit(call)
    reactor.advance(0.5)
    assert call.sink.reply()["response"].startswith(
        "Timeout: laser.read did not answer within 0.5 s"
    )


def test_a_short_timeout_from_a_non_administrator_ends_its_wait_but_not_the_worker():
    supervisor, reactor, signals = ready_supervisor(timeout=100.0)
    keep = RecordingSink()
    call, after = make_call(sink=keep, timeout=0.5, admin=False, keep_alive=True), make_call()
    supervisor.submit(call)
    supervisor.submit(after)
    reactor.advance(0.5)
    assert call.sink.reply()["response"] == (
        "Timeout: laser.read() did not answer within 0.5 s (the request's timeout); it goes "
        "on running in the worker, because only an administrator's timeout (--admin-allow) "
        "may restart a worker"
    )
    assert signals.sent == [] and supervisor.state is State.BUSY
    events = list(keep.events)
    reactor.last.replies(1, b'{"response": 1}')  # the late reply goes nowhere
    assert keep.events == events
    assert reactor.last.calls()[-1][2]["function"] == "read"  # `after` runs next,
    assert [c[0] for c in reactor.last.calls()] == [1, 2]  # not held by the keep-alive
    reactor.advance(99.5)
    assert signals.sent == []  # the module's own timeout counts for the next call afresh


def test_the_module_timeout_still_ends_a_call_whose_client_gave_up():
    supervisor, reactor, signals = ready_supervisor(timeout=2.0)
    call = make_call(timeout=0.5, admin=False)
    supervisor.submit(call)
    reactor.advance(0.5)
    assert call.sink.reply()["response"].startswith("Timeout: laser.read() did not answer")
    reactor.advance(1.5)
    assert (reactor.last.transport.pid, "KILL") in signals.sent


def test_a_longer_timeout_from_a_non_administrator_does_not_extend_the_modules():
    supervisor, reactor, signals = ready_supervisor(timeout=1.0)
    call = make_call(timeout=60, admin=False)
    supervisor.submit(call)
    reactor.advance(1.0)
    assert call.sink.reply()["response"].startswith("Timeout: laser.read did not answer within 1 s")
    assert (reactor.last.transport.pid, "KILL") in signals.sent


def test_a_reply_that_started_is_not_timed_out():
    supervisor, reactor, signals = ready_supervisor(timeout=1.0)
    call = make_call()
    supervisor.submit(call)
    header = channel.header(channel.REPLY, 100, 0, 1)
    reactor.last.protocol.childDataReceived(1, header + b"x" * 10)
    reactor.advance(5)
    assert signals.sent == [] and call.sink.events == []  # short: passed on once whole
    reactor.last.protocol.childDataReceived(1, b"x" * 90)
    assert call.sink.events == [("started", False), ("data", b"x" * 100), ("finished", True)]


def test_a_worker_dying_in_the_middle_of_a_short_reply_is_answered_not_cut():
    supervisor, reactor, _ = ready_supervisor()
    call = make_call(function="measure")
    supervisor.submit(call)
    header = channel.header(channel.REPLY, 5000, 0, 1)
    reactor.last.protocol.childDataReceived(1, header + b"x" * 4096)
    reactor.last.exits(code=None, signal=9)
    assert call.sink.reply()["response"].startswith(
        "WorkerDied: the worker of laser died during measure()"
    )


# Lifecycle rules -----------------------------------------------------------------------


def test_illegal_transitions_are_refused():
    with pytest.raises(AssertionError):
        check_transition(State.STOPPED, State.BUSY)
    with pytest.raises(AssertionError):
        check_transition(State.FAILED, State.READY)
    check_transition(State.READY, State.BUSY)


def test_a_module_answers_within_its_queue_wait_and_its_timeout():
    supervisor, _, _ = ready_supervisor(timeout=5.0, queue_wait=30.0)
    assert supervisor.answers_within() == 35.0
    supervisor.update(dataclasses.replace(supervisor.spec, queue_wait=10.0))  # applies at once
    assert supervisor.answers_within() == 15.0
    without, _, _ = ready_supervisor()
    assert without.answers_within() is None  # no timeout: a call runs as long as it runs
