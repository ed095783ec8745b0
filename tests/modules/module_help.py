"""A module with its own module-level _help()."""


def _help():
    return "custom help for module_help"


class Helped:
    def ping(self):
        return "pong"
