"""Publishes values from its own thread, as a streaming instrument's SDK callback would."""

import threading

try:
    from modserver_worker import publish
except ImportError:  # imported outside a modserver worker

    def publish(name, value):
        pass


class Publisher:
    def __init__(self):
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.02):
            self.count += 1
            publish("count", self.count)

    def publish_now(self, name, value):
        """Publish from the calling (main) thread."""
        publish(name, value)
        return True

    def publish_bad(self):
        try:
            publish("bad", object())
        except TypeError as exc:
            return str(exc)
        return "no error"

    def __exit__(self, *exc_info):
        self._stop.set()
