"""A pretend wavemeter with a dispatch method, like many vendor wrappers."""

import math
import time


def _help():
    return (
        "wavemeter: GetWavelength(channel) -> nm, GetPower(channel) -> mW, "
        "Channels() -> number of channels"
    )


class Wavemeter:
    """Every call arrives at dispatch(client_ip, function, *args)."""

    CHANNELS = 8

    def dispatch(self, client_ip, function, *args):
        handler = {
            "GetWavelength": self._wavelength,
            "GetPower": self._power,
            "Channels": lambda: self.CHANNELS,
        }.get(function)
        if handler is None:
            raise AttributeError(f"the wavemeter has no function {function!r}")
        return handler(*args)

    def _wavelength(self, channel):
        return 780.0 + channel + 0.001 * math.sin(time.time())

    def _power(self, channel):
        return round(1.5 + 0.1 * math.cos(time.time() + channel), 4)
