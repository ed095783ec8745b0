# ruff: noqa: N801, N999 - file and class names follow the original README's example
"""moduleA: every call goes through one dispatch method.

The config entry ``["mymodules.moduleA", "moduleA", "foo"]`` names ``foo``
as the dispatch method, so a client asking moduleA for *any* function name
ends up in ``foo(client_ip, fn_name, *args)``.
"""

import logging
import time

logger = logging.getLogger(__name__)


class moduleA:
    """A module that is slow to start, like an instrument that needs to warm up."""

    def __init__(self):
        logger.info("connecting to the instrument (this takes 3 s)")
        time.sleep(3)  # clients that ask meanwhile simply wait for the module
        logger.info("connected")

    def foo(self, client_ip, fn_name, *args):
        """Receive every request: who asked, which function, and its arguments."""
        logger.info("%s asked for %s%r", client_ip, fn_name, args)
        return "You successfully called the dispatching method!"
