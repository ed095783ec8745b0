"""The module the benchmarks call: cheap methods and canned payloads."""


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
