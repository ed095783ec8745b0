"""The server process: from the command line to a client's connection.

What belongs here: ``twistd modserver``'s options (``tap``) and the
ModuleServer-style ``modserver.server.main`` (``run``); the service that
owns listeners, the config and one supervisor per module (``service``,
``listeners``, ``endpoint_help``); a client's connection, its hello and
requests (``protocol``); who may do what (``access``, ``refusals``); the
config file and file watching (``config``, ``watcher``); the log (``logs``).

What it may import: everything below it (``supervision``, ``wire``,
``net``, ``worker.platforms``) and ``web`` and ``lab`` for what it serves
and announces. ``supervision`` imports ``config`` and ``logs`` from here.
"""

__all__ = ["main"]


def __getattr__(name):
    # modserver.server.main, as ModuleServer's server.py called it; imported
    # on use, so that the submodules here load without the whole server.
    if name == "main":
        from modserver.server.run import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
