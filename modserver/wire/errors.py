"""Errors that reach a client as an error reply."""

from __future__ import annotations

from modserver.wire import codec as wire


class ReplyError(Exception):
    """A failure to report to a client: ``kind`` is shown as its type.

    The reply's one-line reason is ``"kind: message"``; ``traceback`` says
    where it came from (the module's or the server's), never empty.
    """

    def __init__(self, kind: str, message: str, traceback: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.traceback = traceback

    @property
    def reason(self) -> str:
        return wire.error_reason(self.kind, self.message)

    def line(self, plain: bool) -> bytes:
        """The encoded error reply, newline included."""
        return wire.encode_error(self.reason, self.traceback or self.reason + "\n", plain)


def bad_request(message: str) -> ReplyError:
    return ReplyError("BadRequest", message)
