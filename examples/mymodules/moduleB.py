# ruff: noqa: N801, N999 - file and class names follow the original README's example
"""moduleB: clients call the methods of the instance directly.

The config entry ``["mymodules.moduleB", "bar", null]`` has no dispatch
method, so a request for ``fun1`` calls ``bar().fun1(*args)``.
"""

import logging

logger = logging.getLogger(__name__)


class bar:
    """A module whose public methods are called by name."""

    def fun1(self, *args):
        """Log the arguments and answer with a fixed message."""
        logger.info("fun1 called directly with %r", args)
        return "No dispatching method necessary."
