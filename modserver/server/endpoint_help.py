"""Why an endpoint string (``--listen``, ``--http``) was refused, and what to write instead.

Twisted's own reasons are right but terse: ``0.0.0.0:8080`` is an
"Unknown endpoint type: '0.0.0.0'", and a ``systemd:`` endpoint with no
socket handed over is "list index out of range".
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping

# HOST:PORT, as people write addresses elsewhere: 0.0.0.0:8080, [::1]:8080, lab-pc:8080.
_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[\w.-]+)):(?P<port>\d+)$")

_SOCKET_UNIT = (
    "start modserver from its systemd .socket unit (examples/systemd/), or try it with "
    "systemd-socket-activate --fdname=modserver -l 36577 twistd -n --pidfile= modserver ..."
)


def explain(description: str, exc: Exception, environ: Mapping[str, str] | None = None) -> str:
    """The reason ``description`` cannot be used (``exc`` is Twisted's), with advice."""
    if description.split(":", 1)[0].strip().lower() == "systemd":
        return systemd_problem(description, os.environ if environ is None else environ)
    reason = str(exc) or type(exc).__name__
    written = host_port(description)
    if written is None:
        return reason
    return f"{reason}; to listen on {written[0]} port {written[1]}, write {written[2]}"


def host_port(description: str) -> tuple[str, str, str] | None:
    """``(host, port, endpoint string)`` for a ``HOST:PORT`` written instead of an endpoint."""
    match = _HOST_PORT.match(description.strip())
    if match is None:
        return None
    host, port = match.group("v6") or match.group("host"), match.group("port")
    if host.lower() == "localhost":
        host = "127.0.0.1"
    try:
        interface = str(ipaddress.ip_address(host)).replace(":", "\\:")
    except ValueError:
        return None  # a name: tcp: listens on addresses only
    return host, port, f"tcp:{port}:interface={interface}"


def systemd_problem(description: str, environ: Mapping[str, str]) -> str:
    """Why a ``systemd:`` endpoint found no socket to take over, from the environment.

    Twisted takes the sockets handed over to this process when it is
    imported, removing LISTEN_FDS and LISTEN_PID (not LISTEN_FDNAMES);
    those left were not for this process, or not usable by Twisted.
    """
    names = [name for name in environ.get("LISTEN_FDNAMES", "").split(":") if name]
    if "LISTEN_FDS" not in environ:
        if not names:
            return f"no socket was handed over to modserver (LISTEN_FDS is not set): {_SOCKET_UNIT}"
        count = len(names)
        return (
            f"systemd handed over {count} socket{'s' if count != 1 else ''} (names: "
            f"{', '.join(names)}); {description} names none of them: use index=0 to "
            f"{count - 1} or name=NAME"
        )
    if environ.get("LISTEN_PID") != str(os.getpid()):
        return (
            f"the sockets in LISTEN_FDS were handed over to process {environ.get('LISTEN_PID')}, "
            f"not to this one ({os.getpid()}): {_SOCKET_UNIT}"
        )
    return (
        "LISTEN_FDS is set without a matching LISTEN_FDNAMES, which Twisted needs "
        "(systemd sets both; systemd-socket-activate needs --fdname=NAME)"
    )
