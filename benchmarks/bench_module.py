"""The module the benchmarks call: cheap methods and canned payloads."""

import os

VERSION = 0


class Bench:
    def __init__(self):
        self._blobs = {}
        self._floats = {}

    def noop(self):
        """Return at once: what is left is the server's own cost."""
        return None

    def echo(self, value):
        return value

    def blob(self, size):
        """A string of ``size`` bytes (made once, so only its transport is timed)."""
        if size not in self._blobs:
            self._blobs[size] = "x" * size
        return self._blobs[size]

    def float_list(self, count):
        """``count`` floats, as a module returning a trace would (made once)."""
        if count not in self._floats:
            self._floats[count] = [i * 1.2345678901 for i in range(count)]
        return self._floats[count]

    def version(self):
        """Which edit of this file is loaded (the reload benchmark rewrites it)."""
        return VERSION

    def array(self, count, dtype="float64"):
        """``count`` values of ``dtype`` as a numpy array (made once; numpy imported here)."""
        key = (count, dtype)
        if key not in self._floats:
            import numpy

            self._floats[key] = numpy.arange(count).astype(dtype)
        return self._floats[key]

    def frame(self, rows=2048, cols=2048):
        """A uint16 camera frame (made once)."""
        return self.array(rows * cols, "uint16").reshape(rows, cols)

    def take(self, value):
        """Accept an argument (an array, a list): how many bytes or items came."""
        return getattr(value, "nbytes", None) or len(value)

    def pid(self):
        return os.getpid()
