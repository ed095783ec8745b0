"""A module with nothing to drive: for trying the protocol by hand."""

import logging
import time

logger = logging.getLogger(__name__)


class Echo:
    """Answers with what it is given."""

    def echo(self, *args):
        """Return the arguments as a list."""
        return list(args)

    def add(self, a, b):
        """Return a + b."""
        return a + b

    def sleep(self, seconds):
        """Wait, then return how long it waited (the module is busy meanwhile)."""
        time.sleep(seconds)
        return seconds

    def fail(self, message="on purpose"):
        """Raise RuntimeError(message): what an error reply looks like."""
        raise RuntimeError(message)

    def log(self, message):
        """Log message at INFO level from inside the module."""
        logger.info("%s", message)
        return True
