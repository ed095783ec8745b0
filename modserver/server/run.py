"""``modserver.server.main``: run the server the way ModuleServer's server.py did.

For server.py files written for the original::

    import modserver.server as server
    server.main("HW Server", CONFIG_PATH, "localhost", 36577, logging.INFO, LOGFILE)
"""

from __future__ import annotations

import logging
import os
import sys

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile

from modserver.server import tap

_LEVEL_NAMES = {10: "debug", 20: "info", 30: "warn", 40: "error", 50: "critical"}


def _level_name(loglevel: int) -> str:
    for number in sorted(_LEVEL_NAMES, reverse=True):
        if loglevel >= number:
            return _LEVEL_NAMES[number]
    return "debug"


def main(
    server_name: str,
    config_path: str,
    server_addr: str = "localhost",
    server_port: int = 36577,
    loglevel: int = logging.DEBUG,
    logfile: str | None = None,
) -> None:
    """Run the server in the foreground until SIGINT or SIGTERM."""
    from twisted.internet import reactor

    level = _level_name(loglevel)
    options = tap.Options()
    options.parseOptions(
        [
            "--config",
            config_path,
            "--name",
            server_name,
            "--log-level",
            level,
            "--port",
            str(server_port),
            "--interface",
            server_addr,
        ]
    )
    observers = [textFileLogObserver(sys.stdout)]
    if logfile:
        os.makedirs(os.path.dirname(os.path.abspath(logfile)), exist_ok=True)
        stream = LogFile.fromFullPath(logfile, rotateLength=10 * 1024 * 1024, maxRotatedFiles=5)
        observers.append(textFileLogObserver(stream))
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(o, [predicate]) for o in observers], redirectStandardIO=False
    )
    service = tap.makeService(options, reactor)
    service.privilegedStartService()
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
