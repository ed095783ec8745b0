"""Prints to stdout and writes to fd 1 while it is imported: must not corrupt the channel."""

import os

print("loud_import: hello from print at import time")
os.write(1, b"loud_import: hello from fd 1 at import time\n")


class Loud:
    def ping(self):
        print("loud_import: ping")
        return "pong"
