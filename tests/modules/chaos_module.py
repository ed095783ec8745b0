"""A module for chaos runs: echoes, slow calls, and a version the runs rewrite."""

import os
import time

EDIT = 0


class Chaos:
    def echo(self, value):
        return value

    def slow(self, value, seconds):
        time.sleep(seconds)
        return value

    def edit(self):
        return EDIT

    def pid(self):
        return os.getpid()
