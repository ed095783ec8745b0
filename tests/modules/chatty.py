"""A module that logs, raises, prints and floods, for the logging tests."""

import logging
import os
import sys

logger = logging.getLogger("chatty.instrument")


class Chatty:
    def report(self, text):
        """Log at INFO and DEBUG, and a caught exception with its traceback."""
        logger.info("measured %s", text)
        logger.debug("debug detail for %s", text)
        try:
            {}["missing-key-" + text]
        except KeyError:
            logger.exception("lookup failed for %s", text)
        return True

    def talk(self, text):
        """Write to stdout with print, and with a C-level write to fd 1."""
        print("print says", text)
        sys.stdout.flush()
        os.write(1, ("fd 1 says " + text + "\n").encode())
        os.write(1, b"no newline at the end")
        return True

    def flood(self, megabytes):
        """Write ``megabytes`` MB of output lines as fast as the pipe takes them."""
        line = b"flood " + b"x" * 93 + b"\n"
        chunk = line * 10000
        for _ in range(int(megabytes * 1_000_000 // len(chunk))):
            os.write(1, chunk)
        return megabytes

    def log_flood(self, count):
        """Log ``count`` records as fast as possible."""
        for i in range(count):
            logger.info("record %d", i)
        return count
