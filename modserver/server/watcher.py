"""Which watched files changed since the last look (hot reload's eyes; no Twisted).

A file changed when its content did: its stat signature (mtime, size, inode)
is compared first, and only when that moved is the file read and hashed, so
a ``touch`` or a save of identical bytes changes nothing.  A file that is
missing (an editor replacing it) is not a change; it is looked at again
when it is back.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

Signature = tuple[int, int, int]


def signature(path: str) -> Signature | None:
    """``(mtime_ns, size, inode)`` of ``path``, or None if it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def content_digest(data: bytes) -> bytes:
    """The hash compared to tell changed content (workers compute the same)."""
    return hashlib.blake2b(data, digest_size=16).digest()


def digest(path: str) -> bytes | None:
    """A hash of the file's content, or None if it cannot be read."""
    try:
        with open(path, "rb") as stream:
            return content_digest(stream.read())
    except OSError:
        return None


@dataclass
class _Seen:
    signature: Signature | None
    digest: bytes | None  # None: unknown, so the next content seen is a change


class FileWatch:
    """A set of files and the content each had when last looked at."""

    def __init__(self) -> None:
        self._seen: dict[str, _Seen] = {}

    @property
    def paths(self) -> set[str]:
        return set(self._seen)

    def track(self, path: str, read: bytes | None = None) -> None:
        """Watch ``path`` from now on (nothing happens if it is watched already).

        ``read`` is the digest of the content that was actually used (the
        code a worker imported, the config the server parsed): the next poll
        compares against it, so a save made in between is not missed.
        Without it, the content now is the starting point.
        """
        if path in self._seen:
            return
        if read is not None:
            self._seen[path] = _Seen(None, read)
        else:
            self._seen[path] = _Seen(signature(path), digest(path))

    def forget(self, path: str) -> None:
        self._seen.pop(path, None)

    def poll(self) -> list[str]:
        """The watched files whose content changed since the last poll."""
        changed = []
        for path, seen in self._seen.items():
            now = signature(path)
            if now is None or now == seen.signature:
                continue
            content = digest(path)
            if content is None:
                continue
            seen.signature = now
            if content != seen.digest:
                seen.digest = content
                changed.append(path)
        return changed
