"""Twisted's side of the wire, for the server and the async client alike.

What belongs here: transport pieces with no opinion about modules or
calls: a line receiver for long lines (``lines``), sending a small reply
now rather than at the reactor's next turn (``flush``), and the ``mtls:``
endpoint with TLS error wording (``endpoints``).

What it may import: Twisted, ``modserver.wire``; nothing of the server.
"""
