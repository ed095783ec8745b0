"""The module the benchmarks call: cheap methods and canned payloads."""

import os

VERSION = 0


class Bench:
    def __init__(self):
        self._blobs = {}

    def noop(self):
        """Return at once: what is left is the server's own cost."""
        return None

    def blob(self, size):
        """A string of ``size`` bytes (made once, so only transport is timed)."""
        if size not in self._blobs:
            self._blobs[size] = "x" * size
        return self._blobs[size]

    def floats(self, count):
        """``count`` floats."""
        return [i * 0.001 for i in range(count)]

    def version(self):
        """Which edit of this file is loaded (the reload benchmark rewrites it)."""
        return VERSION

    def pid(self):
        return os.getpid()
