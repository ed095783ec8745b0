"""Turns and leases (modserver.turns, modserver.leases): the decisions with a task.Clock,
then the supervisor that asks them, on a fake reactor."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import pytest
from twisted.internet import task

from modserver.server.config import ModuleSpec
from modserver.supervision.admission import QueueRules, WaitingLine
from modserver.supervision.leases import ModuleLease, parse_request
from modserver.supervision.lifecycle import State
from modserver.supervision.supervisor import WorkerSettings
from modserver.supervision.turns import ARRIVAL, SessionHold, Turns
from modserver.wire.errors import ReplyError
from tests.fakes import RecordingSink, make_call, make_supervisor

OK = b'{"response": 1, "error": false, "traceback": ""}'


@dataclass(eq=False)
class Request:
    client: str
    name: str = ""
    received: float | None = 0.0


def taken(turns, count: int) -> list[str]:
    return [turns.take().name for _ in range(count)]


# Turns ------------------------------------------------------------------------------------


def test_turns_go_round_the_identities_in_arrival_order_within_each():
    turns = Turns()
    for name in ("a1", "a2", "a3"):
        turns.add(Request("A", name))
    turns.add(Request("B", "b1"))
    turns.add(Request("B", "b2"))
    assert taken(turns, 5) == ["a1", "b1", "a2", "b2", "a3"]
    assert turns.take() is None and len(turns) == 0


def test_a_client_with_nothing_waiting_goes_right_after_the_current_call():
    turns = Turns()
    for number in range(75):
        turns.add(Request("flood", f"f{number}"))
    assert taken(turns, 2) == ["f0", "f1"]
    turns.add(Request("B", "b"))
    assert taken(turns, 1) == ["b"]  # not 73 calls later
    turns.add(Request("C", "c"))
    turns.add(Request("B", "b2"))
    assert taken(turns, 3) == ["c", "b2", "f2"]


def test_the_client_whose_call_runs_goes_after_one_that_just_arrived():
    turns = Turns()
    turns.add(Request("A", "a1"))
    assert taken(turns, 1) == ["a1"]  # it runs; A's queue is empty
    for name in ("a2", "a3"):
        turns.add(Request("A", name))
    turns.add(Request("B", "b1"))
    assert taken(turns, 3) == ["b1", "a2", "a3"]


def test_arrival_order_serves_calls_as_they_came():
    turns = Turns(ARRIVAL)
    for name, who in (("a1", "A"), ("a2", "A"), ("b1", "B")):
        turns.add(Request(who, name))
    assert taken(turns, 3) == ["a1", "a2", "b1"]


def test_only_eligible_identities_are_served_and_the_others_keep_their_places():
    turns = Turns()
    turns.add(Request("A", "a"))
    turns.add(Request("B", "b"))
    assert turns.take(lambda who: who == "B").name == "b"
    assert turns.take(lambda who: who == "B") is None
    assert turns.by_identity() == {"A": 1}


def test_the_waiting_line_counts_shares_by_identity_and_serves_in_turns():
    line = WaitingLine("laser", QueueRules(limit=10, share=2))
    for name in ("a1", "a2"):
        line.add(Request("A", name))
    assert line.refusal("A") is not None and line.refusal("B") is None
    line.add(Request("B", "b1"))
    assert [line.next_call().name for _ in range(3)] == ["a1", "b1", "a2"]


# A keep-alive session's hold ------------------------------------------------------------


def test_a_session_keeps_the_module_for_its_limit_once_others_wait():
    clock = task.Clock()
    hold = SessionHold(limit=2.0)
    assert hold.keeps(clock.seconds(), others_waiting=False)
    clock.advance(100)  # no one else waited: no limit ran
    assert hold.keeps(clock.seconds(), others_waiting=True)
    assert hold.deadline() == 102.0
    clock.advance(1.9)
    assert hold.keeps(clock.seconds(), others_waiting=True)
    clock.advance(0.1)
    assert not hold.keeps(clock.seconds(), others_waiting=True)


def test_a_limit_of_zero_keeps_the_module_as_long_as_the_session_calls():
    clock = task.Clock()
    hold = SessionHold(limit=0)
    hold.keeps(clock.seconds(), others_waiting=True)
    clock.advance(3600)
    assert hold.keeps(clock.seconds(), others_waiting=True) and hold.deadline() is None


# Leases -------------------------------------------------------------------------------------


def lease_book(max_seconds: float = 600) -> tuple[ModuleLease, task.Clock]:
    clock = task.Clock()
    clock.advance(1000)
    wall = time.mktime((2026, 5, 4, 14, 0, 0, 0, 0, -1))
    return ModuleLease("laser", max_seconds, wall=lambda: wall + clock.seconds() - 1000), clock


def test_a_lease_refuses_others_with_its_holder_and_time_left():
    leases, clock = lease_book()
    leases.grant("10.0.1.7", 600, clock.seconds())
    clock.advance(59.5)
    refusal = leases.refusal("10.0.1.8", clock.seconds())
    assert refusal.reason == "Busy: laser is leased by 10.0.1.7 until 14:10:00 (541 s left)"
    assert leases.refusal("10.0.1.7", clock.seconds()) is None


def test_a_lease_expires_and_renewing_it_then_says_so():
    leases, clock = lease_book()
    leases.grant("A", 10, clock.seconds())
    clock.advance(10)
    assert leases.refusal("B", clock.seconds()) is None
    assert leases.expire(clock.seconds()).holder == "A"
    with pytest.raises(ReplyError) as raised:
        leases.renew("A", 10, clock.seconds())
    assert raised.value.reason == (
        "BadRequest: A holds no lease on laser to renew (it expired at 14:00:10); take a new one"
    )


def test_a_lease_is_renewed_released_and_broken_only_by_whom_may():
    leases, clock = lease_book()
    leases.grant("A", 10, clock.seconds())
    clock.advance(5)
    assert leases.renew("A", 10, clock.seconds()).until == clock.seconds() + 10
    with pytest.raises(ReplyError, match="laser is leased by A, not by B"):
        leases.release("B", clock.seconds())
    assert leases.release("A", clock.seconds()).holder == "A"
    with pytest.raises(ReplyError, match="laser is not leased"):
        leases.break_(clock.seconds())
    leases.grant("B", 10, clock.seconds())
    assert leases.break_(clock.seconds()).holder == "B"


def test_a_lease_longer_than_the_modules_maximum_is_refused():
    leases, clock = lease_book(max_seconds=60)
    with pytest.raises(ReplyError, match="61 s is longer than laser grants"):
        leases.grant("A", 61, clock.seconds())


@pytest.mark.parametrize(
    "function, args, message",
    [
        ("take", ["laser", 0], "positive number of seconds, not 0"),
        ("take", ["laser", -5], "positive number of seconds, not -5"),
        ("take", ["laser", math.nan], "positive number of seconds, not nan"),
        ("take", ["laser", math.inf], "positive number of seconds, not inf"),
        ("take", ["laser", "long"], "positive number of seconds, not 'long'"),
        ("take", ["laser", True], "positive number of seconds, not True"),
        ("take", ["laser"], "_lease take takes 2 to 3 arguments"),
        ("take", [5, 10], "the module must be a name"),
        ("renew", ["laser", 10, 1, 2], "_lease renew takes 2 arguments"),
        ("steal", ["laser"], "_lease does not know 'steal'"),
    ],
)
def test_bad_lease_requests_get_one_clear_error(function, args, message):
    with pytest.raises(ReplyError) as raised:
        parse_request(function, args)
    assert raised.value.kind == "BadRequest" and message in raised.value.message


# The supervisor asks them -----------------------------------------------------------------


def ready(**options):
    supervisor, reactor, signals = make_supervisor(**options)
    supervisor.start()
    reactor.last.ready()
    return supervisor, reactor


def answer_last(reactor, body: bytes = OK) -> None:
    request_id = reactor.last.calls()[-1][0]
    reactor.last.replies(request_id, body)


def test_a_keep_alive_session_gives_way_after_its_hold_while_others_wait():
    supervisor, reactor = ready(keep_alive_hold=2.0)
    holder = RecordingSink()
    supervisor.submit(make_call(holder, function="loop", keep_alive=True, client="A"))
    answer_last(reactor)
    other = make_call(function="other", client="B")
    supervisor.submit(other)
    for _ in range(3):  # the session keeps calling within its hold
        reactor.advance(0.5)
        supervisor.submit(make_call(holder, function="loop", keep_alive=True, client="A"))
        answer_last(reactor)
    assert [c[2]["function"] for c in reactor.last.calls()] == ["loop"] * 4
    reactor.advance(0.4)
    supervisor.submit(make_call(holder, function="loop", keep_alive=True, client="A"))
    reactor.advance(0.6)  # 2.1 s since B began to wait, in the session's call
    answer_last(reactor)  # which ends its hold
    assert reactor.last.calls()[-1][2]["function"] == "other"
    assert supervisor.snapshot()["held_by_session"] is False
    supervisor.submit(make_call(holder, function="loop", keep_alive=True, client="A"))
    answer_last(reactor)
    assert reactor.last.calls()[-1][2]["function"] == "loop"  # its turn, after B's


def test_an_idle_session_gives_way_when_its_hold_runs_out():
    supervisor, reactor = ready(keep_alive_hold=1.0)
    holder = RecordingSink()
    supervisor.submit(make_call(holder, keep_alive=True, client="A"))
    answer_last(reactor)
    supervisor.submit(make_call(function="other", client="B"))
    reactor.advance(0.99)
    assert len(reactor.last.calls()) == 1
    reactor.advance(0.01)
    assert reactor.last.calls()[-1][2]["function"] == "other"


def test_a_hold_of_zero_keeps_the_module_while_the_session_calls():
    supervisor, reactor = ready(keep_alive_hold=0)
    holder = RecordingSink()
    supervisor.submit(make_call(holder, keep_alive=True, client="A"))
    answer_last(reactor)
    supervisor.submit(make_call(function="other", client="B"))
    reactor.advance(3600)
    assert len(reactor.last.calls()) == 1


def test_a_lease_is_granted_after_the_current_call_and_the_waiting_get_busy():
    supervisor, reactor = ready()
    supervisor.submit(make_call(function="running", client="B"))
    waiting = make_call(function="waiting", client="C")
    supervisor.submit(waiting)
    granted = supervisor.take_lease("A", 60)
    assert waiting.sink.reply()["response"].startswith("Busy: laser is leased by A until ")
    assert not granted.called  # B's call still runs
    answer_last(reactor)
    assert granted.result["holder"] == "A"
    refused = make_call(client="B")
    supervisor.submit(refused)
    assert "(60 s left)" in refused.sink.reply()["response"]
    supervisor.submit(make_call(function="mine", client="A"))
    assert reactor.last.calls()[-1][2]["function"] == "mine"


def test_a_lease_taker_waiting_gets_the_lease_when_it_is_released():
    supervisor, reactor = ready()
    supervisor.take_lease("A", 60)
    results = []
    supervisor.take_lease("B", 30, wait=10).addBoth(results.append)
    reactor.advance(5)
    assert results == [] and supervisor.snapshot()["lease_waiting"] == ["B"]
    supervisor.release_lease("A")
    assert results[0]["holder"] == "B" and results[0]["seconds_left"] == 30


def test_a_lease_taker_waits_no_longer_than_it_said():
    supervisor, reactor = ready()
    supervisor.take_lease("A", 60)
    results = []
    supervisor.take_lease("B", 30, wait=10).addErrback(lambda f: results.append(f.value))
    reactor.advance(10)
    assert results[0].reason.startswith("Busy: laser is leased by A until ")
    assert results[0].reason.endswith("(50 s left); waited 10 s for the lease")


def test_a_lease_expires_on_time_and_the_calls_that_waited_for_it_run():
    supervisor, reactor = ready()
    supervisor.take_lease("A", 5)
    patient = make_call(function="patient", client="B")
    patient.lease_wait, patient.wait_limit = True, 30
    supervisor.submit(patient)
    reactor.advance(4.9)
    assert reactor.last.calls() == []
    reactor.advance(0.1)
    assert reactor.last.calls()[-1][2]["function"] == "patient"
    assert supervisor.snapshot()["lease"] is None


def test_a_call_waiting_for_a_lease_gets_busy_after_its_own_timeout():
    supervisor, reactor = ready()
    supervisor.take_lease("A", 60)
    patient = make_call(client="B")
    patient.lease_wait, patient.wait_limit = True, 2
    supervisor.submit(patient)
    reactor.advance(2)
    assert patient.sink.reply()["response"].startswith("Busy: laser is leased by A")


def test_a_lease_survives_a_worker_restart():
    supervisor, reactor = ready()
    supervisor.take_lease("A", 60)
    supervisor.restart()
    reactor.last.exits(0)
    reactor.last.ready()
    refused = make_call(client="B")
    supervisor.submit(refused)
    assert refused.sink.reply()["response"].startswith("Busy: laser is leased by A")


# The call flow on its own, with a worker that is always ready -----------------------------


class ReadyWorker:
    """What CallFlow needs of worker_life.WorkerLife: a worker taking calls."""

    state = State.READY
    pending = None
    stop_reason = None
    process = None

    def __init__(self) -> None:
        self.sent: list[dict] = []

    def hello_error(self):
        return None

    def send(self, head, meta, request) -> None:
        self.sent.append(json.loads(request))

    def busy(self) -> None:
        self.state = State.BUSY

    def answered(self) -> None:
        self.state = State.READY


def test_the_call_flow_serves_turns_without_a_worker_process():
    from modserver.supervision.call_flow import CallFlow
    from modserver.supervision.stats import ModuleStats

    worker, clock = ReadyWorker(), task.Clock()
    spec = ModuleSpec(name="laser", module="m", entry="E")
    flow = CallFlow(spec, WorkerSettings(access_log=False), clock, ModuleStats(), worker)
    for name, who in (("a1", "A"), ("a2", "A"), ("a3", "A"), ("b1", "B")):
        flow.submit(make_call(function=name, client=who))
    for _ in range(3):
        flow.reply_started(None, 0, flow.current.request_id, 10)
        flow.reply_data(OK + b"\n")
        flow.reply_ended()
    assert [request["function"] for request in worker.sent] == ["a1", "b1", "a2", "a3"]


# The fast path: a call to an idle module nobody waits for goes straight to the worker ------


def _fast_path_transcript(monkeypatch, fast: bool) -> dict:
    """A script of calls through a CallFlow, with the fast path on or forced off."""
    from modserver.supervision.call_flow import CallFlow
    from modserver.supervision.stats import ModuleStats

    if not fast:
        monkeypatch.setattr(CallFlow, "_runs_at_once", lambda self, call: False)
    worker, clock = ReadyWorker(), task.Clock()
    spec = ModuleSpec(name="laser", module="m", entry="E", keep_alive_hold=2.0)
    flow = CallFlow(spec, WorkerSettings(access_log=False), clock, ModuleStats(), worker)
    sinks = {who: RecordingSink() for who in "ABCD"}

    def submit(name: str, who: str, keep_alive: bool = False) -> None:
        flow.submit(make_call(sinks[who], function=name, keep_alive=keep_alive, client=who))

    def answer(body: bytes = OK) -> None:
        clock.advance(0.25)
        flow.reply_started(None, 0, flow.current.request_id, len(body) + 1)
        flow.reply_data(body + b"\n")
        flow.reply_ended()

    submit("a1", "A")  # idle module: at once
    submit("a2", "A")  # these two wait; A just had its turn, so B goes first
    submit("b1", "B")
    answer(), answer(), answer()
    submit("c1", "C", keep_alive=True)  # at once, and C's session holds the module
    answer()
    submit("c2", "C", keep_alive=True)  # the holding session's call: at once
    answer()
    submit("d1", "D")  # waits while C holds the module, for at most its hold
    clock.advance(1.0)
    submit("c3", "C", keep_alive=True)
    answer()
    clock.advance(2.0)  # the hold is over: D's turn
    answer()
    submit("a3", "A")
    answer()
    return {
        "sent": [request["function"] for request in worker.sent],
        "replies": {who: sink.events for who, sink in sinks.items()},
        "flow": flow.snapshot(),
        "stats": flow.stats.snapshot(clock.seconds()),
        "line empty": flow.line.empty(),
    }


def test_the_fast_path_serves_calls_and_turns_exactly_as_queuing_them_would(monkeypatch):
    fast = _fast_path_transcript(monkeypatch, fast=True)
    monkeypatch.undo()
    queued = _fast_path_transcript(monkeypatch, fast=False)
    assert fast == queued
    assert fast["sent"] == ["a1", "b1", "a2", "c1", "c2", "c3", "d1", "a3"]
    assert fast["stats"]["calls"] == 8 and fast["stats"]["latency"]["calls"] == 8


def test_a_call_to_an_idle_module_never_enters_the_waiting_line(monkeypatch):
    from modserver.supervision.call_flow import CallFlow
    from modserver.supervision.stats import ModuleStats

    added = []
    monkeypatch.setattr(WaitingLine, "add", lambda self, call, first=False: added.append(call))
    worker, clock = ReadyWorker(), task.Clock()
    spec = ModuleSpec(name="laser", module="m", entry="E")
    flow = CallFlow(spec, WorkerSettings(access_log=False), clock, ModuleStats(), worker)
    sink = RecordingSink()
    for _ in range(3):
        flow.submit(make_call(sink, function="read", keep_alive=True, client="A"))
        assert flow.current is not None and flow.current.started == flow.current.received
        flow.reply_started(None, 0, flow.current.request_id, len(OK) + 1)
        flow.reply_data(OK + b"\n")
        flow.reply_ended()
    assert added == [] and [r["function"] for r in worker.sent] == ["read"] * 3
    assert flow.snapshot()["held_by_session"] is True


def test_the_fast_path_stands_aside_for_a_lease():
    supervisor, reactor = ready()
    supervisor.take_lease("A", 60)
    refused = make_call(client="B")
    supervisor.submit(refused)  # the module is idle, but B may not use it
    assert refused.sink.reply()["response"].startswith("Busy: laser is leased by A")
    supervisor.submit(make_call(function="mine", client="A"))
    assert reactor.last.calls()[-1][2]["function"] == "mine"


def test_the_calls_lifecycle_transitions_set_without_a_check_are_legal():
    from modserver.supervision.lifecycle import check_transition

    check_transition(State.READY, State.BUSY)  # WorkerLife.busy
    check_transition(State.BUSY, State.READY)  # WorkerLife.answered


# The access line of a keep-alive loop: logged while the worker works ----------------------


def test_an_access_line_is_logged_when_the_next_call_goes_to_the_worker_or_soon_after():
    """Never lost, never out of order, never later than ACCESS_DELAY after its reply."""
    from twisted.logger import globalLogPublisher

    from modserver.supervision.call_flow import ACCESS_DELAY, CallFlow
    from modserver.supervision.stats import ModuleStats

    lines: list[str] = []

    def observer(event):
        if event.get("log_format") == "{access}" and event.get("module") == "laser":
            lines.append(event["access"])

    globalLogPublisher.addObserver(observer)
    try:
        worker, clock = ReadyWorker(), task.Clock()
        spec = ModuleSpec(name="laser", module="m", entry="E")
        flow = CallFlow(spec, WorkerSettings(access_log=True), clock, ModuleStats(), worker)
        sink = RecordingSink()

        def answer() -> None:
            flow.reply_started(None, 0, flow.current.request_id, len(OK) + 1)
            flow.reply_data(OK + b"\n")
            flow.reply_ended()

        flow.submit(make_call(sink, function="first", keep_alive=True, client="A"))
        answer()
        assert sink.events and lines == []  # replied; its line waits for the next call
        flow.submit(make_call(sink, function="second", keep_alive=True, client="A"))
        assert [line.split()[1] for line in lines] == ["first()"]  # logged once it was sent
        answer()
        clock.advance(ACCESS_DELAY * 0.9)
        assert len(lines) == 1
        clock.advance(ACCESS_DELAY * 0.2)  # no next call: logged within ACCESS_DELAY
        assert [line.split()[1] for line in lines] == ["first()", "second()"]

        flow.submit(make_call(sink, function="third", keep_alive=True, client="A"))
        answer()
        flow.stop(ReplyError("ModuleRemoved", "laser was removed"))  # none lost at a stop
        assert [line.split()[1] for line in lines] == ["first()", "second()", "third()"]
        clock.advance(ACCESS_DELAY)
        assert len(lines) == 3  # and never twice
    finally:
        globalLogPublisher.removeObserver(observer)
