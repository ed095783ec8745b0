"""An instrument that takes a few seconds to connect."""

import os
import time


class SlowStart:
    def __init__(self):
        time.sleep(float(os.environ.get("SLOW_START_SECONDS", "3")))

    def ping(self):
        return "pong"
