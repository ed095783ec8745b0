"""Start the example server the way ModuleServer's server.py did.

Run it with ``python server.py`` (from any directory).  It serves the
modules in server.config next to this file on localhost:36577 and writes
its log to logs/server.log (the directory is created if it is missing).
Stop it with Ctrl-C.
"""

import logging
import os

import modserver.server as server

BASE_PATH = os.path.dirname(os.path.abspath(__file__))

LOGLEVEL = logging.INFO
CONFIG_PATH = os.path.join(BASE_PATH, "server.config")
SERVER_IP = "localhost"  # "0.0.0.0" to accept clients from other machines
SERVER_PORT = 36577
LOGFILE = os.path.join(BASE_PATH, "logs", "server.log")

if __name__ == "__main__":
    server.main("HW Server", CONFIG_PATH, SERVER_IP, SERVER_PORT, LOGLEVEL, LOGFILE)
