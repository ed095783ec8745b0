"""The worker child: one module's process (``worker.py``, run as a script).

What belongs here: what runs in the worker (``worker``) and the
standard-library helpers it shares with the server: what differs between
POSIX and Windows (``platforms``) and a token bucket (``budget``).

What it may import: the standard library only, in Python 3.7 syntax: a
module may need another interpreter (a 32-bit one for a vendor DLL) that has
neither Twisted nor this package. ``worker.py`` loads its siblings and
``wire``'s ``codec``, ``channel`` and ``binary`` by path, never as
``modserver.*``; ``platforms`` imports Windows job objects from
``supervision`` only on the server's side.
"""
