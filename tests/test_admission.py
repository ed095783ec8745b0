"""Admission (modserver.admission): who may wait for a module, and for how long.

The sans-IO parts with a task.Clock, then the supervisor that asks them,
on a fake reactor.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

import pytest
from twisted.internet import task

from modserver.supervision.admission import (
    ByteBudget,
    ConnectionLimits,
    QueueRules,
    WaitingLine,
    backoff_refusal,
    connection_limit,
)
from modserver.supervision.lifecycle import State
from tests.fakes import make_call, make_supervisor


@dataclass(eq=False)
class Request:
    client: str
    received: float | None


def line(**rules) -> WaitingLine:
    return WaitingLine("laser", QueueRules(**rules))


# The waiting line ----------------------------------------------------------------------


def test_a_client_may_fill_the_queue_but_for_a_quarter_kept_for_the_others():
    waiting = line(limit=8)
    for _ in range(6):
        assert waiting.refusal("flood") is None
        waiting.add(Request("flood", 0.0))
    refused = waiting.refusal("flood")
    assert refused.reason == (
        "Busy: flood already has 6 requests waiting for laser, its share of the queue "
        "(queue_share 6); wait for their replies"
    )
    assert waiting.refusal("someone else") is None  # a second client always gets in


@pytest.mark.parametrize(
    "limit, share", [(0, 0), (1, 1), (2, 1), (3, 2), (4, 3), (8, 6), (100, 75)]
)
def test_the_default_share(limit, share):
    assert QueueRules(limit=limit).client_share == share


def test_the_queue_limit_holds_for_everyone():
    waiting = line(limit=2, share=2)
    waiting.add(Request("a", 0.0))
    waiting.add(Request("b", 0.0))
    assert waiting.refusal("c").reason.startswith(
        "Busy: laser already has 2 requests waiting (queue_limit 2)"
    )


def test_shares_are_given_back_as_calls_leave():
    waiting = line(limit=4, share=1)
    waiting.add(Request("a", 0.0))
    assert waiting.refusal("a") is not None
    assert waiting.next_call().client == "a"
    assert waiting.refusal("a") is None


def test_requests_that_waited_too_long_are_taken_out_in_order():
    clock = task.Clock()
    waiting = line(limit=10, wait=5.0)
    early, late = Request("a", clock.seconds()), None
    waiting.add(early)
    clock.advance(3)
    late = Request("b", clock.seconds())
    waiting.add(late)
    assert waiting.next_deadline() == 5.0
    clock.advance(2)
    assert waiting.overdue(clock.seconds()) == [early]
    assert waiting.next_deadline() == 8.0
    error = waiting.overdue_error(early, clock.seconds())
    assert error.reason == (
        "Unavailable: laser did not get to this request within 5 s (its queue_wait limit "
        "is 5 s); try again later"
    )
    clock.advance(3)
    assert waiting.overdue(clock.seconds()) == [late] and len(waiting) == 0


def test_the_session_holding_the_module_goes_first():
    waiting = line()
    waiting.add(Request("a", 0.0))
    mine = Request("holder", 0.0)
    waiting.add(mine, first=True)
    assert waiting.next_call(lambda call: call is mine) is mine
    assert waiting.next_call(lambda call: call is mine) is None


def test_a_module_in_backoff_holds_requests_only_for_a_start_due_soon():
    assert backoff_refusal("laser", 3, 0.8) is None
    refused = backoff_refusal("laser", 3, 4.25, "how it died")
    assert refused.reason == "Unavailable: laser is restarting after 3 crashes; next try in 4.2 s"
    assert refused.traceback == "how it died"
    assert backoff_refusal("laser", 1, 2).reason.startswith(
        "Unavailable: laser is restarting after 1 crash;"
    )


# Bytes and connections -------------------------------------------------------------------


def test_the_byte_budget_refuses_what_would_exceed_it():
    budget = ByteBudget(100)
    assert budget.take(60) and not budget.take(50) and budget.held == 60
    budget.give_back(60)
    assert budget.take(100)
    assert budget.refusal().reason.startswith("Busy: the server already holds 0 KiB of requests")
    assert (
        ByteBudget(256 * 1024 * 1024)
        .refusal()
        .reason.endswith("(its budget is 256 MiB, --max-held-requests); try again later")
    )


def test_connection_limits_in_total_and_per_address():
    limits = ConnectionLimits(total=3, per_address=2)
    for address in ("10.0.0.1", "10.0.0.1", "10.0.0.2"):
        assert limits.refusal(address) is None
        limits.opened(address)
    assert limits.refusal("10.0.0.3").reason.startswith(
        "Busy: the server has 3 connections open, its limit (--max-connections)"
    )
    limits.closed("10.0.0.2")
    assert limits.refusal("10.0.0.1").reason.startswith(
        "Busy: 10.0.0.1 has 2 connections open, the limit for one address"
    )
    assert limits.refusal("10.0.0.3") is None
    assert (limits.open, limits.accepted) == (2, 3)


def test_the_default_connection_limit_leaves_descriptors_for_workers_and_logs():
    assert connection_limit(1024, modules=4) == 1024 - 64 - 32
    assert connection_limit(100, modules=10) == 8  # never below a few
    assert connection_limit(1 << 20, modules=4) == 10000
    assert connection_limit(None, modules=4) == 10000  # Windows


# The supervisor asking them ---------------------------------------------------------------


def ready(**options):
    supervisor, reactor, signals = make_supervisor(**options)
    supervisor.start()
    reactor.last.ready()
    return supervisor, reactor, signals


def test_a_flooding_client_does_not_lock_out_another():
    supervisor, _, _ = ready(queue_limit=4)
    calls = [make_call(client="flood") for _ in range(6)]
    for call in calls:
        supervisor.submit(call)
    refused = [c for c in calls if c.sink.events]  # 1 running, 3 waiting, 2 refused
    assert len(refused) == 2 and all(
        c.sink.reply()["response"].startswith("Busy: flood") for c in refused
    )
    other = make_call(client="other")
    supervisor.submit(other)
    assert other.sink.events == []  # it waits: its turn will come


def test_calls_that_wait_longer_than_the_queue_wait_get_unavailable():
    supervisor, reactor, _ = ready(queue_wait=10.0)
    running, waiting = make_call(function="long"), make_call(function="waits")
    supervisor.submit(running)
    reactor.advance(4)
    supervisor.submit(waiting)
    reactor.advance(9.9)
    assert waiting.sink.events == []
    reactor.advance(0.1)
    assert waiting.sink.reply()["response"].startswith(
        "Unavailable: laser did not get to this request within 10 s"
    )
    assert supervisor.snapshot()["queue"] == 0


def test_a_worker_that_served_and_died_is_back_at_once_and_its_queue_waits_for_it():
    supervisor, reactor, _ = ready()
    first = make_call(function="works")
    supervisor.submit(first)
    reactor.advance(3)
    reactor.last.replies(1, b'{"response": 1}')
    dying, waiting = make_call(function="dies"), make_call(function="waits")
    supervisor.submit(dying)
    supervisor.submit(waiting)
    reactor.advance(2)
    reactor.last.exits(code=None, signal=9)
    assert dying.sink.reply()["response"].startswith("WorkerDied")
    assert supervisor.state is State.STARTING and waiting.sink.events == []
    reactor.last.ready()
    assert reactor.last.calls()[0][2]["function"] == "waits"


def test_requests_to_a_module_in_a_long_backoff_are_answered_at_once():
    supervisor, reactor, _ = ready()
    for _ in range(3):  # it dies right after becoming ready: a crash loop
        reactor.last.exits(code=1)
        reactor.advance(supervisor.life.next_start_in())
        reactor.last.ready()
    running, waiting = make_call(function="running"), make_call(function="waiting")
    supervisor.submit(running)
    supervisor.submit(waiting)
    reactor.last.protocol.childDataReceived(2, b"driver: instrument not found\n")
    reactor.last.exits(code=1)  # the fourth death: 4 s to wait
    assert running.sink.reply()["response"].startswith("WorkerDied")
    reply = waiting.sink.reply()
    assert reply["response"] == (
        "Unavailable: laser is restarting after 4 crashes; next try in 4.0 s"
    )
    assert "instrument not found" in reply["traceback"]
    reactor.advance(2.9)
    assert supervisor.hello_error().reason.endswith("next try in 1.1 s")
    reactor.advance(0.2)
    assert supervisor.hello_error() is None  # due within the hold: a request may wait
    held = make_call(function="held")
    supervisor.submit(held)
    reactor.advance(0.9)
    reactor.last.ready()
    assert reactor.last.calls()[0][2]["function"] == "held" and held.sink.events == []


def test_a_spawn_that_fails_for_want_of_descriptors_is_retried():
    supervisor, reactor, _ = make_supervisor()
    real_spawn = supervisor.settings.platform.spawn
    failures = [OSError(errno.EMFILE, "Too many open files")] * 2

    def spawn(*args):
        if failures:
            raise failures.pop()
        return real_spawn(*args)

    supervisor.settings.platform = type("P", (), {"spawn": staticmethod(spawn)})()
    supervisor.start()
    assert supervisor.state is State.BACKOFF
    assert supervisor.hello_error().reason == (
        "Unavailable: laser cannot start its worker now (Too many open files); retrying in 1 s"
    )
    reactor.advance(1)
    assert supervisor.state is State.BACKOFF  # failed again: 1 s more
    reactor.advance(1)
    assert supervisor.state is State.STARTING
    reactor.last.ready()
    assert supervisor.state is State.READY and supervisor.hello_error() is None


def test_a_request_frees_its_bytes_when_it_reaches_the_worker_or_is_answered():
    supervisor, reactor, _ = ready()
    freed = []
    running, waiting, dropped = make_call(), make_call(), make_call()
    for name, call in (("running", running), ("waiting", waiting), ("dropped", dropped)):
        call.release = lambda name=name: freed.append(name)
        supervisor.submit(call)
    assert freed == ["running"]  # sent to the worker
    supervisor.release(dropped.sink)
    assert freed == ["running", "dropped"]
    reactor.last.replies(1, b'{"response": 1}')
    assert freed == ["running", "dropped", "waiting"]
