"""The numbers per module, without a server: counters, the latency window, restarts."""

from __future__ import annotations

import math

import pytest

from modserver.supervision import stats
from modserver.supervision.stats import ModuleStats, outcome_of, percentile


def test_outcomes_are_counted_and_errors_include_every_failure():
    numbers = ModuleStats()
    numbers.call_answered(False, False, 0.0, 0.1)
    numbers.call_answered(True, False, 0.0, 0.1)
    numbers.call_failed("Timeout", 0.0, 5.0)
    numbers.call_failed("Busy", 0.0, 0.0)
    numbers.call_failed("WorkerDied", 0.0, 1.0)
    snap = numbers.snapshot(5.0)
    assert snap["calls"] == 5 and snap["errors"] == 4 and snap["timeouts"] == 1
    assert snap["outcomes"] == {"ok": 1, "error": 1, "timeout": 1, "died": 1, "refused": 1}


def test_a_call_abandoned_at_its_clients_timeout_is_counted_once():
    numbers = ModuleStats()
    numbers.call_failed("Timeout", 0.0, 2.0)  # the client's own timeout answered it
    numbers.call_answered(False, True, 0.0, 9.0)  # the worker finished it later
    assert numbers.outcomes["timeout"] == 1 and numbers.calls == 1


@pytest.mark.parametrize(
    ("kind", "outcome"),
    [
        ("Timeout", "timeout"),
        ("WorkerDied", "died"),
        ("Busy", "refused"),
        ("LoadError", "refused"),
        ("ServerStopping", "refused"),
    ],
)
def test_server_errors_map_to_a_few_outcomes(kind, outcome):
    assert outcome_of(kind) == outcome


def test_refused_calls_do_not_count_towards_latency():
    numbers = ModuleStats()
    numbers.call_failed("Busy", 0.0, 0.0)
    assert numbers.timed_calls == 0 and numbers.snapshot(0.0)["latency"]["p50"] is None


def test_p50_and_p99_of_the_recent_window():
    numbers = ModuleStats()
    for i in range(1, 101):  # 1 ms .. 100 ms
        numbers.call_answered(False, False, 10.0, 10.0 + i / 1000)
    latency = numbers.snapshot(11.0)["latency"]
    assert latency["calls"] == 100
    assert latency["p50"] == pytest.approx(0.050) and latency["p99"] == pytest.approx(0.099)


def test_calls_older_than_the_window_leave_the_percentiles_but_not_the_counts():
    numbers = ModuleStats()
    numbers.call_answered(False, False, 0.0, 2.0)  # slow, long ago
    numbers.call_answered(False, False, 1000.0, 1000.001)
    latency = numbers.snapshot(1000.0 + stats.LATENCY_WINDOW - 1)["latency"]
    assert latency["calls"] == 1 and latency["p99"] == pytest.approx(0.001)
    assert numbers.calls == 2


def test_the_window_keeps_the_newest_samples_only():
    numbers = ModuleStats()
    for i in range(stats.LATENCY_SAMPLES + 50):
        numbers.call_answered(False, False, 0.0, 1.0 if i < 50 else 0.5)
    assert numbers.recent_latencies(1.0) == [0.5] * stats.LATENCY_SAMPLES


def test_histogram_buckets_are_cumulative_and_end_with_inf():
    numbers = ModuleStats()
    for seconds in (0.0005, 0.001, 0.003, 100.0):
        numbers.call_answered(False, False, 0.0, seconds)
    buckets = dict(numbers.cumulative_buckets())
    assert buckets[0.001] == 2  # a bucket holds calls at most as slow as its bound
    assert buckets[0.005] == 3 and buckets[60.0] == 3 and buckets[math.inf] == 4
    assert numbers.latency_sum == pytest.approx(100.0045)


def test_percentile_is_nearest_rank():
    assert percentile([], 0.5) is None
    assert percentile([3.0], 0.99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0


def test_restarts_remember_time_cause_and_detail():
    numbers = ModuleStats()
    numbers.restarted(10.0, "died", "signal 9 (SIGKILL)")
    numbers.restart_requested("files", "laser.py changed")
    numbers.restarted(20.0)
    numbers.restarted(30.0)  # nothing requested since: an explicit restart
    assert numbers.snapshot(30.0)["restart_history"] == [
        {"time": 10.0, "cause": "died", "detail": "signal 9 (SIGKILL)"},
        {"time": 20.0, "cause": "files", "detail": "laser.py changed"},
        {"time": 30.0, "cause": "reload", "detail": "restart requested"},
    ]
    assert numbers.restarts_by_cause == {
        "died": 1,
        "spawn": 0,
        "timeout": 0,
        "reload": 1,
        "files": 1,
        "config": 0,
    }


def test_the_restart_history_is_bounded_and_the_counts_go_on():
    numbers = ModuleStats()
    for i in range(stats.RESTART_HISTORY + 5):
        numbers.restarted(float(i), "died", "exit code 1")
    history = numbers.snapshot(100.0)["restart_history"]
    assert len(history) == stats.RESTART_HISTORY and history[-1]["time"] == 24.0
    assert numbers.restarts_by_cause["died"] == stats.RESTART_HISTORY + 5
