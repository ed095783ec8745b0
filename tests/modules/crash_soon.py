"""Loads, then dies a moment later: a module stuck in a crash loop."""

import os
import threading


def _die():
    os._exit(9)


class CrashSoon:
    def __init__(self):
        threading.Timer(0.3, _die).start()

    def ping(self):
        return "pong"
