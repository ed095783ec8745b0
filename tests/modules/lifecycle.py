"""A module for lifecycle tests: it can crash, hang, and start children."""

import ctypes
import os
import subprocess
import sys
import threading
import time

VERSION = 1


class Life:
    def version(self):
        """Which version of this file is loaded."""
        return VERSION

    def pid(self):
        return os.getpid()

    def threads(self):
        """The names of the worker's threads."""
        return sorted(thread.name for thread in threading.enumerate())

    def sleep(self, seconds):
        time.sleep(seconds)
        return seconds

    def hang(self):
        """An instrument that never answers."""
        while True:
            time.sleep(1)

    def die(self, code):
        """End the worker abruptly, as a crashing driver does."""
        sys.stderr.write(f"about to exit with {code}\n")
        sys.stderr.flush()
        os._exit(code)

    def segfault(self):
        """Crash in C code."""
        if os.name == "nt":
            # ctypes catches an access violation in the function it calls and
            # raises OSError instead; faulthandler's test hook reads address 0
            # in its own C code, which nothing catches.
            import faulthandler

            faulthandler._read_null()
        ctypes.string_at(0)

    def spawn_child(self):
        """Start a long-lived child process, as some vendor tools do."""
        self.child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        return self.child.pid
