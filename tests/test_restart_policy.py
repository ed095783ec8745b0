"""lifecycle.RestartPolicy: crash loops back off, served workers come back at once.

Time comes from a task.Clock; each test reads as the story of a module.
"""

from __future__ import annotations

from twisted.internet import task

from modserver.supervision.lifecycle import RestartPolicy


class Module:
    """A worker's life told to the policy: it loads, serves a while, dies."""

    def __init__(self, **policy) -> None:
        self.clock = task.Clock()
        self.policy = RestartPolicy(**policy)

    def dies_loading(self) -> float:
        delay = self.policy.next_delay(self.clock.seconds(), None, served=False)
        self.clock.advance(delay)
        return delay

    def dies_after(self, seconds: float, served: bool = True) -> float:
        self.clock.advance(seconds)
        delay = self.policy.next_delay(self.clock.seconds(), seconds, served)
        self.clock.advance(delay)
        return delay


def test_a_module_that_cannot_load_backs_off_doubling_up_to_the_cap():
    module = Module(initial=1, cap=30)
    assert [module.dies_loading() for _ in range(8)] == [0, 1, 2, 4, 8, 16, 30, 30]
    assert module.policy.crashes == 8


def test_a_worker_that_dies_soon_after_ready_without_serving_is_a_crash_loop():
    module = Module()
    assert [module.dies_after(0.5, served=False) for _ in range(4)] == [0, 1, 2, 4]
    assert [module.dies_after(3.0, served=False) for _ in range(2)] == [8, 16]


def test_a_worker_that_served_and_died_restarts_at_once():
    module = Module()
    # Killed every 3 to 9 s while serving: never a wait.
    assert [module.dies_after(s) for s in (3, 9, 4, 6, 5, 8, 3)] == [0] * 7
    assert module.policy.crashes == 7


def test_a_module_that_dies_on_every_call_still_backs_off():
    module = Module(burst=10, window=60, initial=1, cap=30)
    delays = [module.dies_after(1.5) for _ in range(16)]
    assert delays[:10] == [0] * 10  # ten quick restarts a minute
    assert delays[10:] == [1, 1, 2, 4, 8, 16]  # then it waits, and longer each time


def test_quick_restarts_come_back_once_the_window_has_passed():
    module = Module(burst=2, window=60)
    assert [module.dies_after(2) for _ in range(3)] == [0, 0, 1]
    module.clock.advance(60)
    assert module.dies_after(2) == 0


def test_a_death_within_the_settle_time_is_a_crash_loop_even_after_a_call():
    module = Module(settle=1.0)
    assert [module.dies_after(0.2, served=True) for _ in range(3)] == [0, 1, 2]


def test_a_worker_that_stayed_up_starts_the_ladder_over():
    module = Module(stable=10)
    assert [module.dies_loading() for _ in range(4)] == [0, 1, 2, 4]
    assert module.dies_after(11, served=False) == 0
    assert module.policy.crashes == 1
    assert module.dies_after(0.1, served=False) == 1


def test_a_worker_that_served_resets_the_crash_loop_ladder():
    module = Module()
    assert [module.dies_after(0.2, served=False) for _ in range(4)] == [0, 1, 2, 4]
    assert module.dies_after(3) == 0  # served a while: back at once
    assert module.dies_loading() == 0  # a death while loading starts the ladder anew
    assert module.dies_loading() == 1
