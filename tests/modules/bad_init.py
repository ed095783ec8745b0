"""Imports fine but its constructor raises (an instrument that is not plugged in)."""


class BadInit:
    def __init__(self):
        raise ConnectionError("instrument not found on COM3")
