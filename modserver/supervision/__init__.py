"""One module under the server: its worker's life and the flow of its calls.

What belongs here: the supervisor that is a module's one face to the
server (``supervisor``); the worker process from spawn to exit, restarts
and reloads (``worker_life``, ``process``, ``lifecycle``, ``winjobs``);
each call from admission to reply (``call_flow``, ``calls``,
``admission``, ``turns``, ``leases``, ``lease_keeper``); watches (``watches``,
``watching``) and the numbers kept about calls (``stats``).

What it may import: ``wire``, ``worker.platforms``, and the server's
``config`` (a module's spec) and ``logs``; never ``server.protocol`` or
``server.service`` (they call in here, not the other way).
Modules whose docstring says "no I/O" take decisions only, tested with a
fake clock.
"""
