"""The log plumbing: levels at the source, flood budgets, log tails, the status page HTML."""

from __future__ import annotations

from twisted.internet import task
from twisted.logger import LogLevel, globalLogPublisher

from modserver.server import logs
from modserver.web import status as web
from modserver.worker.budget import Budget


def captured(action):
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        action()
    finally:
        globalLogPublisher.removeObserver(events.append)
    return events


def test_events_say_which_module_they_concern():
    (event,) = captured(lambda: logs.for_module("laser").info("tuned", module="laser"))
    assert event["log_system"] == "laser#info"
    assert event["log_namespace"] == "modserver.lifecycle" and event["module"] == "laser"
    (event,) = captured(lambda: logs.for_module("laser", "module").warn("hot"))
    assert event["log_namespace"] == "modserver.module.laser"


def test_events_below_the_level_are_not_created():
    log = logs.for_module("laser")
    try:
        logs.set_level(LogLevel.warn)
        events = captured(lambda: (log.info("quiet"), log.error("loud")))
    finally:
        logs.set_level(LogLevel.info)
    assert [e["log_format"] for e in events] == ["loud"]


def test_stdlib_levels_map_to_twisted_levels():
    assert logs.level_for(10) is LogLevel.debug and logs.level_for(25) is LogLevel.info
    assert logs.level_for(30) is LogLevel.warn and logs.level_for(50) is LogLevel.critical


def test_budget_allows_a_burst_then_the_rate_and_counts_the_rest():
    budget = Budget(rate=10, burst=3)
    assert [budget.take(0.0, 5) for _ in range(5)] == [True, True, True, False, False]
    assert budget.tally() == (2, 10) and budget.tally() == (0, 0)
    assert budget.take(0.1) is True  # one token back after 0.1 s at 10 a second
    assert budget.take(0.1) is False


def test_output_flood_is_cut_and_reported_on_a_clock():
    clock = task.Clock()
    output = logs.ModuleOutput("laser", clock, rate=1, burst=2, report_every=5)

    def flood():
        for i in range(10):
            output.line(b"line %d" % i)
        clock.advance(5)
        clock.advance(5)

    events = captured(flood)
    logged = [e["line"] for e in events if e.get("output")]
    assert logged == ["line 0", "line 1"]
    warnings = [e for e in events if e["log_level"] is LogLevel.warn]
    assert "output flood: logging at most" in warnings[0]["log_format"]
    assert warnings[1]["dropped_lines"] == 8 and warnings[1]["dropped_bytes"] == 48
    assert len(warnings) == 2  # once the flood is over, nothing more to say


def test_log_tail_keeps_each_modules_last_lines_without_access_lines():
    tail = logs.LogTail(lines=2)
    for i in range(3):
        tail(
            {
                "module": "laser",
                "log_format": "event {i}",
                "i": i,
                "log_level": LogLevel.info,
                "log_time": 0,
                "log_namespace": "modserver.lifecycle",
            }
        )
    tail(
        {
            "module": "laser",
            "log_format": "call",
            "log_level": LogLevel.info,
            "log_time": 0,
            "log_namespace": "modserver.access",
        }
    )
    assert [line.split(" ", 2)[2] for line in tail.lines("laser")] == ["event 1", "event 2"]
    assert tail.lines("stage") == []


def test_status_page_escapes_what_modules_say():
    status = {
        "server": {
            "name": "<lab>",
            "version": "0",
            "pid": 1,
            "uptime": 3725,
            "config": "c",
            "demo": False,
            "listen": ["tcp:1"],
            "config_problems": ["<bad>"],
        },
        "modules": {
            "m<1>": {
                "state": "failed",
                "pid": None,
                "uptime": None,
                "restarts": 2,
                "queue": 0,
                "calls_served": 5,
                "current_call": None,
                "last_exit": "exit code 3",
                "last_error": {"reason": "E: <x>", "traceback": "<tb>"},
                "log": ["one", "two\n  more"],
            }
        },
    }
    page = web.render_page(status)
    assert "<lab>" not in page and "&lt;lab&gt;" in page and "&lt;bad&gt;" in page
    assert 'data-module="m&lt;1&gt;"' in page and "&lt;tb&gt;" in page
    assert "up 1h 02m" in page
    assert "<summary>two</summary>" in page
