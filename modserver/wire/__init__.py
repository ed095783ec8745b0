"""The wire: the formats everyone shares, as bytes and values (no I/O).

What belongs here: how a client's lines become messages and replies become
lines (``codec``), arrays and bytes as binary segments (``binary``), the
frames between the server and a worker (``channel``), what a client's
hello and requests must hold (``messages``) and the error replies
(``errors``).

What it may import: the standard library and itself; never Twisted.
``codec``, ``binary`` and ``channel`` are also loaded by path into the
worker, which may run on another (older, down to 3.7) Python without this
package: in those three, Python 3.7 syntax and no ``modserver`` imports.
"""
