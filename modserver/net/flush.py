"""Sending a small message now instead of at the reactor's next turn.

``transport.write`` only queues: the bytes leave when the reactor next
polls and finds the descriptor writable, one more reactor turn per message.
A keep-alive call crosses two such writes (the request to the worker's
pipe, the reply to the client), so queuing alone made the small call about
a third slower than writing at once (benchmarks/versions.py).

``flush`` asks the descriptor to write what it holds, through its public
``IWriteDescriptor.doWrite``, the same call the reactor makes when the
descriptor is writable.  Nothing is bypassed: the bytes are the ones
``write`` queued, in order; a TLS connection's ciphertext is what its TCP
transport holds; what does not fit stays queued for the reactor; an error
leaves the descriptor registered, so the reactor sees it on its next turn
and closes the connection as it would have.  It is called only on an open
connection (never after ``loseConnection``).  A transport that is not a
descriptor (a test double, another reactor) is left to the reactor.
"""

from __future__ import annotations

from twisted.internet.interfaces import IWriteDescriptor


def flush(transport) -> None:
    """Write what ``transport`` has queued now, as far as the descriptor takes it."""
    if transport is not None and IWriteDescriptor.providedBy(transport):
        transport.doWrite()
