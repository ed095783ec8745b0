"""Writing a message now instead of at the reactor's next turn.

``transport.write`` queues data and sends it when the reactor next finds the
descriptor writable: one more reactor event per message.  A call crosses
four descriptors (client, worker pipe, worker pipe, client), and on the
request/reply path those extra events cost more than the rest of the
server's work.  When nothing is queued, ``write_now`` sends at once with
the transport's own ``writeSomeData``; whatever is not sent, or any
transport without that machinery, goes through ``transport.write`` as usual,
which keeps ordering, flow control and error handling Twisted's.
"""

from __future__ import annotations


def _nothing_queued(transport) -> bool:
    try:
        return (
            not transport._tempDataBuffer
            and len(transport.dataBuffer) == transport.offset
            and transport.connected
            and not transport.disconnecting
        )
    except AttributeError:  # not a FileDescriptor (a test double, another reactor)
        return False


def write_now(transport, data: bytes) -> None:
    """Send ``data`` on ``transport`` now if it is idle, else queue it."""
    if data and _nothing_queued(transport):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int) and sent > 0:
            data = data[sent:]
    if data:
        transport.write(data)
