"""An instrument whose __exit__ fails (the stage cannot be parked)."""


class BadExit:
    def ping(self):
        return "pong"

    def __exit__(self, *exc_info):
        self._park()

    def _park(self):
        raise RuntimeError("the stage did not park")
