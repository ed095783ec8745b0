"""Watches without I/O: the board's decisions and the hub's polls on a task.Clock."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
from twisted.internet import task

from modserver.supervision.watches import Sample, WatchBoard, check_period
from modserver.supervision.watching import WatchHub
from modserver.wire.errors import ReplyError


class FakeModule:
    """A supervisor that records the calls submitted to it."""

    def __init__(self, min_period: float = 0.1) -> None:
        self.spec = SimpleNamespace(min_period=min_period)
        self.calls = []

    def submit(self, call) -> None:
        self.calls.append(call)

    def answer(self, value=None, error: str | None = None) -> None:
        call = self.calls.pop(0)
        if error is None:
            line = {"response": value, "error": False, "traceback": ""}
        else:
            line = {"response": error, "error": True, "traceback": "tb\n"}
        call.sink.reply_started(error is not None)
        call.sink.reply_data(json.dumps(line).encode() + b"\n")
        call.sink.reply_finished(True)


def hub_with(module: FakeModule, **limits):
    clock = task.Clock()
    hub = WatchHub(WatchBoard(**limits), {"wm": module}.get, clock)
    return hub, clock


def watch(hub, got, period=0.1, who="a", function="read", args=(), ends=None):
    return hub.watch(
        who,
        "wm",
        function,
        list(args),
        period,
        got.append,
        ends if ends is not None else (lambda reason, stuck: None),
    )


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, 1e9, True, "1", None])
def test_bad_periods_are_one_bad_request(bad):
    with pytest.raises(ReplyError) as caught:
        check_period(bad)
    assert caught.value.kind == "BadRequest"
    assert '"every"' in caught.value.message


def test_many_watchers_share_one_poll_at_the_fastest_period():
    module = FakeModule(min_period=0.05)
    hub, clock = hub_with(module)
    slow, fast = [], []
    watch(hub, slow, period=1.0)
    clock.advance(0)
    assert len(module.calls) == 1
    module.answer(1.5)
    watch(hub, fast, period=0.2, who="b")
    assert fast == [Sample(0.0, 1.5)]  # the latest value at once
    for _ in range(10):
        clock.advance(0.2)
        module.answer(2.0)
    assert module.calls == []
    assert len(slow) == 11 and len(fast) == 11  # one poll for both, every 0.2 s
    assert hub.board.readings[("wm", "read", "[]")].polls == 11


def test_period_is_bounded_below_by_min_period():
    module = FakeModule(min_period=0.5)
    hub, clock = hub_with(module)
    got = []
    watch(hub, got, period=0.01)
    clock.advance(0)
    module.answer(1)
    clock.advance(0.49)
    assert module.calls == []
    clock.advance(0.01)
    assert len(module.calls) == 1


def test_different_args_are_different_readings():
    module = FakeModule()
    hub, clock = hub_with(module)
    watch(hub, [], args=[1])
    watch(hub, [], args=[2])
    clock.advance(0)
    assert sorted(json.loads(c.request)["args"] for c in module.calls) == [[1], [2]]


def test_a_poll_is_an_ordinary_call_one_at_a_time():
    module = FakeModule()
    hub, clock = hub_with(module)
    watch(hub, [])
    clock.advance(0)
    (call,) = module.calls
    assert json.loads(call.request) == {"function": "read", "args": []}
    assert call.plain and call.function == "read" and call.timeout is None
    clock.advance(5)  # the module is slow: no second poll while one is out
    assert len(module.calls) == 1
    module.answer(3)
    clock.advance(0)
    assert len(module.calls) == 1  # overdue: the next one at once


def test_down_is_told_once_then_values_again():
    module = FakeModule()
    hub, clock = hub_with(module)
    got = []
    watch(hub, got)
    clock.advance(0)
    module.answer(1)
    clock.advance(0.1)
    module.answer(error="WorkerDied: the worker exited")
    for _ in range(5):
        clock.advance(0.1)
        module.answer(error="Unavailable: restarting after 2 crashes; next try in 1.0 s")
    clock.advance(0.1)
    module.answer(2)
    assert [s.value if s.error is None else s.kind for s in got] == [1, "WorkerDied", 2]


def test_other_errors_are_sent_and_polling_goes_on():
    module = FakeModule()
    hub, clock = hub_with(module)
    got = []
    watch(hub, got)
    for value in (None, None, 4):
        clock.advance(0.1)
        module.answer(value, error=None if value else "ValueError: no light")
    assert [s.kind for s in got] == ["ValueError", "ValueError", None]


def test_unknown_function_ends_the_watch_with_one_error():
    module = FakeModule()
    hub, clock = hub_with(module)
    got, ends = [], []
    watcher = watch(hub, got, function="nope", ends=lambda *a: ends.append(a))
    clock.advance(0)
    module.answer(error='BadRequest: Meter has no function "nope" (case matters)')
    assert got == []
    ((reason, stuck),) = ends
    assert reason.reason == 'BadRequest: Meter has no function "nope" (case matters)'
    assert not stuck
    clock.advance(1)
    assert module.calls == []  # polled no more
    hub.unwatch(watcher)
    assert len(hub.board) == 0


def test_slow_watcher_gets_only_the_latest_and_counts_the_rest():
    module = FakeModule()
    hub, clock = hub_with(module)
    got = []
    watcher = watch(hub, got)
    watcher.pause(clock.seconds())
    for value in range(100):
        clock.advance(0.1)
        module.answer(value)
    assert got == [] and watcher.pending.value == 99 and watcher.dropped == 99
    watcher.resume()
    assert [s.value for s in got] == [99] and watcher.pending is None


def test_a_watcher_stuck_past_the_limit_is_ended_with_a_reason():
    module = FakeModule()
    hub, clock = hub_with(module, stuck_limit=5.0)
    ends = []
    watcher = watch(hub, [], ends=lambda *a: ends.append(a))
    watcher.pause(clock.seconds())
    for _ in range(60):
        clock.advance(0.1)
        if module.calls:
            module.answer(1)
    ((reason, stuck),) = ends
    assert stuck and reason.kind == "Busy" and "read nothing" in reason.message
    assert len(hub.board) == 0 and hub.board.readings == {}


def test_limits_per_identity_and_per_server():
    module = FakeModule()
    hub, clock = hub_with(module, max_per_identity=2, max_watches=3)
    watch(hub, [], who="a")
    watch(hub, [], who="a")
    with pytest.raises(ReplyError) as caught:
        watch(hub, [], who="a")
    assert caught.value.kind == "Busy" and "a holds its limit of 2" in caught.value.message
    watch(hub, [], who="b")
    with pytest.raises(ReplyError) as caught:
        watch(hub, [], who="c")
    assert caught.value.kind == "Busy" and "server" in caught.value.message


def test_last_watcher_leaving_stops_the_polls():
    module = FakeModule()
    hub, clock = hub_with(module)
    first, second = watch(hub, []), watch(hub, [], who="b")
    clock.advance(0)
    module.answer(1)
    hub.unwatch(first)
    clock.advance(0.1)
    module.answer(1)
    hub.unwatch(second)
    clock.advance(10)
    assert module.calls == [] and hub.board.readings == {}


def test_a_standing_reading_is_polled_without_watchers():
    module = FakeModule()
    hub, clock = hub_with(module)
    reading = hub.stand("wm", "read", [], 1.0)
    for _ in range(3):
        clock.advance(1.0)
        module.answer(7.5)
    assert reading.last_good.value == 7.5 and reading.polls == 3
