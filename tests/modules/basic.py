"""A module exercising every kind of call and return value."""

import logging
import os
import sys
import time

logger = logging.getLogger(__name__)


class Basic:
    """Direct calls: the client names a method and it is called with *args."""

    def __init__(self):
        self.count = 0

    def add(self, a, b):
        """Return a + b."""
        return a + b

    def echo(self, *args):
        """Return the arguments."""
        return list(args)

    def counter(self):
        """Count calls on this instance."""
        self.count += 1
        return self.count

    def pid(self):
        """The worker's process id."""
        return os.getpid()

    def big(self, n):
        """A string of n bytes."""
        return "x" * n

    def floats(self, n):
        """n floats."""
        return [i * 0.5 for i in range(n)]

    def array(self, n):
        """A numpy array of n floats."""
        import numpy

        return numpy.arange(n, dtype=float) / 4

    def scalars(self):
        """numpy scalars."""
        import numpy

        return [numpy.float32(1.5), numpy.int64(7), numpy.bool_(True)]

    def pair(self):
        """A tuple."""
        return (1, "two")

    def unencodable(self):
        """A set cannot be sent as JSON."""
        return {1, 2}

    def boom(self, message="boom"):
        """Raise ValueError(message)."""
        raise ValueError(message)

    def exit_call(self):
        """Raise SystemExit, which must not end the worker."""
        raise SystemExit(3)

    def noisy(self, text):
        """Write text to stdout through print and through fd 1 directly."""
        print("print:", text)
        sys.stdout.flush()
        os.write(1, ("fd1: " + text + "\n").encode())
        return "quiet reply"

    def log(self, message):
        """Log at INFO."""
        logger.info("%s", message)
        return True

    def sleep(self, seconds):
        """Sleep, then return seconds."""
        time.sleep(seconds)
        return seconds

    def argcount(self, *args):
        """How many arguments arrived."""
        return len(args)

    @property
    def prop(self):
        """Reading this would touch hardware."""
        raise RuntimeError("the property was read")

    value = 42

    def _private(self):
        return "private"
