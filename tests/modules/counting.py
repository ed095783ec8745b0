"""Counts the calls that really ran, for tests of requests that must not run."""

import time


class Counting:
    def __init__(self):
        self.marks = 0

    def sleep(self, seconds):
        time.sleep(seconds)
        return seconds

    def mark(self):
        """Count one call; return the count."""
        self.marks += 1
        return self.marks

    def count(self):
        return self.marks

    def echo(self, value):
        return value

    def stamp(self):
        """Count one call; return the time it returns (for latency from the module's return)."""
        self.marks += 1
        return time.time()

    def stamp_blob(self, size):
        """A reading of ``size`` bytes, counted (a large value for slow-watcher tests)."""
        self.marks += 1
        return "x" * size
