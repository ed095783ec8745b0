"""Reports facts about the worker process it runs in."""

import os
import sys


class WhoAmI:
    def facts(self):
        return {
            "executable": sys.executable,
            "version": list(sys.version_info[:3]),
            "cwd": os.getcwd(),
            "env": os.environ.get("MODSERVER_TEST_VALUE"),
            "pid": os.getpid(),
            "sys_path_head": sys.path[:2],
        }
