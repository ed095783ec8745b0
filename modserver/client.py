"""A blocking Python client for modserver (and the original ModuleServer).

Standard library only, so it runs in a bare Python on any lab PC (3.7 or
newer); copy this one file if the package is not installed::

    from modserver.client import Client
    lab = Client("lab-pc")
    lab.com("laser", "set_wavelength", 795.5)
    with lab.session("stage") as stage:     # one connection, the stage is ours
        stage.move(1.0)
        position = stage.position()
    lab.module("wavemeter").GetWavelength(1)

Over TLS, verifying the server's certificate against the lab's CA, and
showing a client certificate where the server asks for one (mutual TLS)::

    lab = Client("lab-pc", 36578, tls_ca="lab-ca.pem",
                 tls_cert="alice.pem", tls_key="alice.key")

Code written for ModuleServer's ``client.py`` keeps working after changing
its import: ``from modserver.client import client``.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import ssl
import sys
import threading
import time

try:  # the package's fast codec, when the package is installed
    from modserver.wire.codec import quote_plus as _quote
    from modserver.wire.codec import unquote_plus as _unquote
except ImportError:  # this file on its own
    import urllib.parse

    def _quote(data: bytes) -> bytes:
        return urllib.parse.quote_plus(data).encode("ascii")

    def _unquote(data: bytes) -> str:
        return urllib.parse.unquote_to_bytes(data.replace(b"+", b" ")).decode("utf-8", "replace")


try:  # arrays and bytes as binary segments: with the package and numpy only
    from modserver.wire import binary as _binary
except ImportError:  # this file on its own: JSON, as the original
    _binary = None


def _numpy():
    """numpy, if this Python has it (imported on first use: it takes a while)."""
    try:
        import numpy
    except ImportError:
        return None
    return numpy


def binary_available() -> bool:
    """True if this client can take arrays as binary segments (numpy and the package)."""
    return _binary is not None and _numpy() is not None


DEFAULT_HOST = "localhost"
DEFAULT_PORT = 36577
# No timeout given: wait as long as the server will.  A module's ack then
# says how long that is (its queue wait limit and call timeout); the client
# adds NETWORK_MARGIN.  The server's other answers are prompt: ANSWER_WAIT
# bounds connecting and them, RELOAD_WAIT a reload (it waits for the module).
DEFAULT_TIMEOUT = None
ANSWER_WAIT = 10.0
RELOAD_WAIT = 120.0
NETWORK_MARGIN = 5.0
ORIGINAL_TIMEOUT = 2.0  # ModuleServer's client.py, kept by the ``client`` class

# What sets the client's timeout, named in its ReplyTimeout messages.
PYTHON_TIMEOUT_OPTION = "timeout= (of the Client, or of one call)"
CLI_TIMEOUT_OPTION = "--timeout SECONDS"

__all__ = [
    "Client",
    "ClientError",
    "ConnectionFailed",
    "Lab",
    "ModuleProxy",
    "ReplyTimeout",
    "ServerError",
    "Session",
    "client",
    "tls_context",
]


class ClientError(Exception):
    """Anything that kept a call from being answered."""


class ServerError(ClientError):
    """The server answered with an error reply.

    ``reason`` is its one line (``"ValueError: out of range"``), ``kind`` the
    type it names, ``traceback`` where it came from (the module's code, or
    the server's).
    """

    def __init__(self, reason: str, traceback: str = "") -> None:
        self.reason = reason
        self.kind = reason.split(":", 1)[0]
        self.traceback = traceback
        lines = traceback_before(reason, traceback).strip().replace("\n", "\n|")
        super().__init__("Server Error: " + reason + ("\n|" + lines if lines else ""))


def traceback_before(reason: str, traceback: str) -> str:
    """``traceback`` without its last line when that line is ``reason`` (shown already)."""
    lines = traceback.rstrip("\n").split("\n")
    if lines[-1].strip() == reason.strip():
        lines.pop()
    return "\n".join(lines) + "\n" if any(line.strip() for line in lines) else ""


class ConnectionFailed(ClientError, ConnectionError):
    """The server could not be reached, or hung up without answering."""


class ReplyTimeout(ClientError, TimeoutError):
    """The server did not answer in time."""


def tls_context(ca: str = None, cert: str = None, key: str = None) -> ssl.SSLContext:
    """A TLS context for talking to modserver.

    It verifies the server's certificate, and that it names the host
    connected to, against the CA certificates in the file ``ca`` (else the
    system's); with ``cert`` (and ``key``, unless the key is in ``cert``'s
    file) it shows a client certificate, as a server with mutual TLS asks.
    """
    for what, path in (("CA", ca), ("certificate", cert), ("key", key)):
        if path and not os.path.isfile(path):
            raise ClientError("the TLS %s file %s does not exist" % (what, path))
    try:
        context = ssl.create_default_context(cafile=ca)
    except ssl.SSLError as exc:
        raise ClientError("%s holds no usable CA certificate: %s" % (ca, exc)) from None
    if cert:
        try:
            context.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            where = "%s and %s" % (cert, key) if key else cert
            hint = "" if key else "; if its key is in a file of its own, give it with tls_key="
            raise ClientError(
                "cannot use the client certificate and key in %s: %s%s" % (where, exc, hint)
            ) from None
    return context


def client_tls(tls=None, ca: str = None, cert: str = None, key: str = None):
    """The SSLContext that Client's TLS arguments ask for, or None for plain TCP."""
    if isinstance(tls, ssl.SSLContext):
        return tls
    if tls or ca or cert:
        return tls_context(ca, cert, key)
    return None


# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH.
_NAME_MISMATCH = (62, 64)


def _tls_failure(where: str, exc: ssl.SSLError) -> ConnectionFailed:
    """A TLS error as a reason people can act on."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in _NAME_MISMATCH:
            return ConnectionFailed(
                "the TLS certificate of modserver at %s does not name that host (%s): "
                "connect with a name or address the certificate was made for"
                % (where, exc.verify_message)
            )
        return ConnectionFailed(
            "the TLS certificate of modserver at %s is not trusted: %s (give the lab's CA "
            "with tls_ca= or --tls-ca)" % (where, exc.verify_message or exc)
        )
    reason = getattr(exc, "reason", None) or str(exc)
    hint = ""
    if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER_FAILURE" in reason:
        hint = "; that port does not speak TLS (use the server's TLS port, or no TLS options)"
    elif "CERTIFICATE" in reason.upper() or "UNKNOWN_CA" in reason:
        hint = (
            "; it accepts only clients with a certificate signed by its CA "
            "(tls_cert=/tls_key= or --tls-cert/--tls-key)"
        )
    return ConnectionFailed(
        "modserver at %s refused the TLS connection: %s%s" % (where, reason, hint)
    )


class _Connection:
    """One TCP (or TLS) connection speaking the line protocol (URL-encoded, as the original).

    ``timeout_option`` names what sets ``timeout``, for the message when it runs out.
    """

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float,
        tls: ssl.SSLContext = None,
        timeout_option: str = PYTHON_TIMEOUT_OPTION,
        binary: bool = False,
    ) -> None:
        self.where = "%s:%s" % (host, port)
        self.binary = binary  # requests ask for binary segments, and may send them
        self.timeout_option = timeout_option
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except socket.timeout:
            raise ReplyTimeout(
                "no connection to modserver at %s within %g s (the client's timeout, "
                "which %s sets)" % (self.where, timeout, timeout_option)
            ) from None
        except OSError as exc:
            raise ConnectionFailed(
                "cannot connect to modserver at %s: %s" % (self.where, exc.strerror or exc)
            ) from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            self._start_tls(tls, host, timeout)
        self.timeout = timeout
        self._pending = b""
        self._answered = False  # a reply came: the port speaks this protocol

    def _start_tls(self, tls: ssl.SSLContext, host: str, timeout: float) -> None:
        plain = self.sock
        try:
            self.sock = tls.wrap_socket(plain, server_hostname=host)
        except socket.timeout:
            plain.close()
            raise ReplyTimeout(
                "no TLS handshake with modserver at %s within %g s" % (self.where, timeout)
            ) from None
        except ssl.SSLError as exc:
            plain.close()
            raise _tls_failure(self.where, exc) from None
        except OSError as exc:
            plain.close()
            raise ConnectionFailed(
                "lost the connection to modserver at %s during the TLS handshake: %s"
                % (self.where, exc)
            ) from None

    def send(self, message: dict) -> None:
        segments = ()
        if self.binary and "function" in message:
            message = dict(message, binary=1)
            encoder = _binary.Encoder()
            line = _binary.dumps(message, encoder).encode("utf-8")
            segments = encoder.segments
        else:
            line = json.dumps(message).encode("utf-8")
        try:
            self.sock.sendall(_quote(line) + b"\n")
            for segment in segments:
                self.sock.sendall(segment)
        except ssl.SSLError as exc:
            raise _tls_failure(self.where, exc) from None
        except OSError as exc:
            raise ConnectionFailed(
                "lost the connection to modserver at %s while sending: %s" % (self.where, exc)
            ) from None

    def receive(self, what: str, timeout: float = None, bound: str = None):
        """Read one reply; its response, or ServerError for an error reply."""
        return self.receive_reply(what, timeout, bound).get("response")

    def receive_reply(self, what: str, timeout: float = None, bound: str = None) -> dict:
        """Read one whole reply (a dict); ServerError for an error reply.

        ``timeout`` None: the connection's (UNBOUNDED: none); ``bound`` says
        where a timeout came from when it was not the client's own option.
        """
        reply = self.receive_line(what, timeout, bound=bound)
        if reply.get("error"):
            raise ServerError(str(reply.get("response")), reply.get("traceback") or "")
        return reply

    def receive_line(
        self, what: str, timeout: float = None, wait_forever: bool = False, bound: str = None
    ) -> dict:
        """Read one line, decoded (``wait_forever``: no timeout, as a watch waits)."""
        timeout = self.timeout if timeout is None else timeout
        if timeout == UNBOUNDED:
            _keep_alive(self.sock)  # no bound: at least notice a peer that is gone
        self.sock.settimeout(None if wait_forever or timeout == UNBOUNDED else timeout)
        chunks, data = [], self._pending
        try:
            while b"\n" not in data:
                if data:
                    chunks.append(data)
                data = self.sock.recv(1 << 20)
                if not data:
                    raise ConnectionFailed(
                        "modserver at %s closed the connection while %s%s"
                        % (self.where, what, self._closed_hint())
                    )
        except ConnectionFailed:
            raise
        except socket.timeout:
            if bound:
                source = "%s; %s sets another" % (bound, self.timeout_option)
            else:
                source = "the client's timeout, which %s sets" % self.timeout_option
            raise ReplyTimeout(
                "no reply from modserver at %s within %g s while %s: %s; a call already "
                "running goes on in the module" % (self.where, timeout, what, source)
            ) from None
        except ssl.SSLError as exc:
            raise _tls_failure(self.where, exc) from None
        except OSError as exc:
            raise ConnectionFailed(
                "lost the connection to modserver at %s while %s: %s" % (self.where, what, exc)
            ) from None
        self._answered = True
        end = data.index(b"\n")
        chunks.append(data[:end])
        self._pending = data[end + 1 :]
        text = _unquote(b"".join(chunks))
        reply = json.loads(text)
        if self.binary and isinstance(reply, dict) and reply.get("segments"):
            reply = self._with_segments(text, reply["segments"], what, timeout)
        return reply

    def _with_segments(self, text: str, sizes, what: str, timeout: float):
        """The reply with its arrays: its segments read into one buffer, arrays made
        on it (numpy.frombuffer: no copy)."""
        try:
            sizes = _binary.segment_sizes(sizes, 1 << 62)
        except _binary.BinaryError as exc:
            raise ClientError("a malformed binary reply from %s: %s" % (self.where, exc)) from None
        buffer = bytearray(sum(sizes))
        view = memoryview(buffer)
        have = min(len(self._pending), len(buffer))
        view[:have] = self._pending[:have]
        self._pending = self._pending[have:]
        try:
            while have < len(buffer):
                got = self.sock.recv_into(view[have:], min(len(buffer) - have, 1 << 24))
                if not got:
                    raise ConnectionFailed(
                        "modserver at %s closed the connection in the middle of a binary "
                        "reply while %s" % (self.where, what)
                    )
                have += got
        except socket.timeout:
            raise ReplyTimeout(
                "the binary reply from modserver at %s stopped for %g s while %s"
                % (self.where, timeout, what)
            ) from None
        except ssl.SSLError as exc:
            raise _tls_failure(self.where, exc) from None
        except ConnectionFailed:
            raise
        except OSError as exc:
            raise ConnectionFailed(
                "lost the connection to modserver at %s while %s: %s" % (self.where, what, exc)
            ) from None
        try:
            return _binary.loads(text, sizes, buffer, _binary.numpy_rebuild(_numpy()))
        except _binary.BinaryError as exc:
            raise ClientError("a malformed binary reply from %s: %s" % (self.where, exc)) from None

    def _closed_hint(self) -> str:
        if isinstance(self.sock, ssl.SSLSocket) or self._answered:
            return ""
        return " (if that port serves TLS, give the client TLS options: --tls-ca or tls_ca=)"

    def ask(self, message: dict, what: str, timeout: float = None, bound: str = None):
        self.send(message)
        return self.receive(what, timeout, bound)

    def open_module(self, module: str, learn_bound: bool) -> tuple:
        """The hello to ``module``: ``(seconds, why)`` to wait for each reply
        as the server bounds it if ``learn_bound``, else ``(None, None)``."""
        hello = {"name": module}
        if learn_bound:
            hello["answer_within"] = True  # (ext) asked for: the ack says it
        self.send(hello)
        acked = self.receive_reply("waiting for %s to acknowledge" % module)
        if acked.get("response") != "ack":
            raise ClientError(
                "unexpected answer to the hello for %s: %r" % (module, acked.get("response"))
            )
        if not learn_bound:
            return None, None
        return server_bound(acked)

    def closed_by_server(self) -> bool:
        """True if the server has closed its end (idle keep-alive, after an error)."""
        readable, _, _ = select.select([self.sock], [], [], 0)
        if not readable:
            return False
        # A TLS socket cannot peek, and may be readable for TLS's own records
        # (session tickets): read without waiting and keep what came.
        self.sock.setblocking(False)
        try:
            data = self.sock.recv(1)
        except (ssl.SSLWantReadError, BlockingIOError):
            return False
        except OSError:
            return True
        finally:
            self.sock.settimeout(None if self.timeout == UNBOUNDED else self.timeout)
        self._pending += data
        return data == b""

    def close(self) -> None:
        self.sock.close()


UNBOUNDED = float("inf")  # a wait without bound: the server said its module has none


def server_bound(ack: dict) -> tuple:
    """``(seconds, why)``: how long to wait for each call's reply, from a module's ack.

    The server says within how many seconds it answers (``answer_within``:
    the module's queue wait limit and call timeout); the client adds
    NETWORK_MARGIN.  ``null`` (the module has no timeout, so a call may run
    as long as it runs), or a server that does not say (the original
    ModuleServer, an older modserver): no bound.
    """
    within = ack.get("answer_within")
    if within is None:
        return UNBOUNDED, None
    return float(within) + NETWORK_MARGIN, (
        "the server's own bound of %g s (the module's queue wait limit and timeout) "
        "plus %g s for the network" % (float(within), NETWORK_MARGIN)
    )


def _keep_alive(sock: socket.socket) -> None:
    """TCP keep-alive probes, so a wait without bound still ends if the server's PC goes."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 6)):
        if hasattr(socket, option):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
            except OSError:
                pass


class Client:
    """Talks to one modserver; each call opens its own connection.

    ``timeout`` (seconds) bounds connecting and each wait for a reply; a
    call can be given its own (``com(..., timeout=30)``).  Without one the
    client waits as long as the server will: a module's calls as long as
    the server says it may take (its queue wait limit and the module's
    timeout, plus NETWORK_MARGIN; without a module timeout, no bound), the
    server's other answers ANSWER_WAIT (a reload RELOAD_WAIT).

    TLS: ``tls_ca`` (the CA file that signed the server's certificate),
    ``tls_cert`` and ``tls_key`` (this client's certificate, for a server
    with mutual TLS), ``tls=True`` (TLS, trusting the system's CAs), or
    ``tls=`` an ``ssl.SSLContext`` of your own.  The server's certificate
    is always verified.
    """

    # What sets the timeout, named when it runs out (the command line names its option).
    timeout_option = PYTHON_TIMEOUT_OPTION

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        timeout: float = DEFAULT_TIMEOUT,
        tls=None,
        tls_ca: str = None,
        tls_cert: str = None,
        tls_key: str = None,
        binary: bool = None,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.tls = client_tls(tls, tls_ca, tls_cert, tls_key)
        if binary and not binary_available():
            raise ClientError("binary=True needs numpy and the modserver package")
        # Arrays and bytes as binary segments: by default when numpy can be imported.
        self.binary = binary_available() if binary is None else bool(binary)

    def __repr__(self) -> str:
        tls = ", tls=True" if self.tls is not None else ""
        return "Client(%r, %r, timeout=%r%s)" % (self.host, self.port, self.timeout, tls)

    def _connect(self, timeout: float = None) -> _Connection:
        wait = self.timeout if timeout is None else timeout
        wait = ANSWER_WAIT if wait is None else wait
        return _Connection(self.host, self.port, wait, self.tls, self.timeout_option, self.binary)

    def _hello(self, name: str, what: str, wait: float = ANSWER_WAIT):
        connection = self._connect()
        try:
            return connection.ask({"name": name}, what, wait if self.timeout is None else None)
        finally:
            connection.close()

    def ping(self) -> list:
        """``[your ip, your port]`` as the server sees them."""
        return self._hello("_ping", "waiting for the answer to _ping")

    def help(self) -> str:
        """The server's help text, listing its modules."""
        return self._hello("_help", "waiting for the help text")

    def get_modules(self, prefix: str = "") -> list:
        """The names of the configured modules that start with ``prefix``."""
        return self._hello("_get_modules." + prefix, "waiting for the module list")

    def status(self, module: str = None) -> dict:
        """The state of the server and its modules (or of one module)."""
        name = "_status" if module is None else "_status." + module
        return self._hello(name, "waiting for the status")

    def reload(self, module: str = "") -> str:
        """Restart ``module``'s worker (or re-read the config with no name).

        Raises ServerError if there is no such module, as the original did.
        """
        encoded = _quote(module.encode("utf-8")).decode("ascii")
        answer = self._hello(
            "_reload_" + encoded, "waiting for the reload of %r" % module, RELOAD_WAIT
        )
        if module and answer == 'Failed to find module "%s"' % module:
            raise ServerError(answer)
        return answer

    def com(self, module: str, funcname: str = "_help", *args, timeout: float = None):
        """Call ``funcname(*args)`` on ``module`` and return what it returned.

        With no function, the module's help text.  ``timeout``: seconds to
        wait for this reply instead of the client's timeout.
        """
        what = "waiting for %s.%s()" % (module, funcname)
        if timeout is None:
            timeout = self.timeout
        connection = self._connect()
        try:
            wait, bound = connection.open_module(module, learn_bound=timeout is None)
            request = {"function": funcname, "args": list(args), "keep_alive": False}
            return connection.ask(request, what, wait if timeout is None else timeout, bound)
        finally:
            connection.close()

    def session(self, module: str, timeout: float = None) -> Session:
        """A keep-alive connection to ``module`` for several calls (use with ``with``)."""
        return Session(self, module, timeout)

    def lease_request(self, operation: str, *args, timeout: float = None):
        """One request to the server's ``_lease`` service: ``take``, ``renew``,
        ``release``, ``show`` or ``break``, with its arguments (see ``lease``)."""
        return self.com(LEASE, operation, *args, timeout=timeout)

    def lease(self, module: str, seconds: float = 600, wait: float = 0) -> Lease:
        """An exclusive lease on ``module`` for a ``with`` block.

        ``with client.lease("laser", seconds=600, wait=30): ...`` takes it
        (waiting up to ``wait`` seconds while someone else holds it), renews
        it in the background while the block runs, and releases it when the
        block ends, also on an exception.
        """
        return Lease(self, module, seconds, wait)

    def module(self, module: str) -> ModuleProxy:
        """An object whose methods call ``module``'s, one connection per call."""
        return ModuleProxy(self, module)

    def watch(
        self, module: str, function: str, *args, every: float = 1.0, timeout: float = None
    ) -> Watch:
        """Values of ``module.function(*args)`` as the server reads them, every ``every`` s.

        ``for t, value in client.watch("wavemeter", "get_wavelength", every=0.1): ...``
        ``t`` is the server's Unix time of the reading.  A failed reading
        comes as ``(t, ServerError)``; a mistake (unknown function, bad
        period) raises ServerError.  ``timeout``: seconds to wait for each
        value (None: no limit).  Close it (``close()`` or ``with``) to stop.
        """
        request = {"module": module, "function": function, "args": list(args), "every": every}
        return Watch(self, request, "%s.%s" % (module, function), timeout)

    def watch_published(self, module: str, name: str, timeout: float = None) -> Watch:
        """The values ``module`` publishes itself under ``name`` (``publish(name, value)``)."""
        request = {"module": module, "published": name}
        return Watch(self, request, "%s's %s" % (module, name), timeout)


class Watch:
    """An open watch: iterate for ``(time, value)``; ``close()`` stops it."""

    def __init__(self, client: Client, request: dict, name: str, timeout: float = None) -> None:
        self.name = name
        self.timeout = timeout
        self.closed = False
        self._connection = client._connect()
        self._connection.binary = False  # a watch's values come as JSON lines
        try:
            acked = self._connection.ask({"name": "_watch"}, "waiting for the watch service")
            if acked != "ack":
                raise ClientError("unexpected answer to the _watch hello: %r" % (acked,))
            self._connection.send(request)
        except BaseException:
            self.close()
            raise

    def __iter__(self) -> Watch:
        return self

    def __next__(self):
        if self.closed:
            raise StopIteration
        try:
            line = self._connection.receive_line(
                "watching %s" % self.name, self.timeout, wait_forever=self.timeout is None
            )
        except ConnectionFailed:
            if self.closed:
                raise StopIteration from None
            self.close()
            raise
        if "value" in line:
            return line["time"], line["value"]
        if "time" in line:  # a failed reading; the watch goes on unless the server ends it
            return line["time"], ServerError(str(line.get("error")), line.get("traceback") or "")
        self.close()  # an error reply: the watch was refused or ended
        raise ServerError(str(line.get("response")), line.get("traceback") or "")

    def close(self) -> None:
        """Stop watching (the server stops polling if nobody else watches)."""
        if not self.closed:
            self.closed = True
            try:
                self._connection.send({"stop": True})
            except ClientError:
                pass
            self._connection.close()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class ModuleProxy:
    """``lab.module("laser").set_wavelength(795)`` calls ``laser.set_wavelength(795)``.

    Call it with a name for functions that are not valid attribute names,
    or for the module's help: ``proxy("_help")``.
    """

    def __init__(self, client: Client, module: str) -> None:
        self._client = client
        self._module = module

    def __call__(self, function: str, *args, timeout: float = None):
        return self._client.com(self._module, function, *args, timeout=timeout)

    def __getattr__(self, function: str):
        if function.startswith("_"):
            raise AttributeError(function)

        def call(*args, timeout: float = None):
            return self._client.com(self._module, function, *args, timeout=timeout)

        call.__name__ = function
        return call

    def __repr__(self) -> str:
        return "<module %r on %s:%s>" % (self._module, self._client.host, self._client.port)


class Session:
    """Several calls to one module over one connection, which holds the module.

    While the connection is open the module serves nobody else. The server
    closes it after an error reply, or when it idles longer than its
    keep-alive timeout (1 s by default); the next call then opens a new one.
    """

    def __init__(self, client: Client, module: str, timeout: float = None) -> None:
        self.client = client
        self.module = module
        self.timeout = client.timeout if timeout is None else timeout
        self._connection = None
        self._wait = self._bound = None  # what the server said, without a timeout

    def __enter__(self) -> Session:
        self.open()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def open(self) -> None:
        """Connect and say hello (done by the first call if not done before)."""
        if self._connection is not None and not self._connection.closed_by_server():
            return
        self._drop()
        connection = self.client._connect(self.timeout)
        try:
            self._wait, self._bound = connection.open_module(
                self.module, learn_bound=self.timeout is None
            )
        except BaseException:
            connection.close()
            raise
        self._connection = connection

    def call(self, function: str, *args, timeout: float = None):
        """Call ``function(*args)`` on the module and return its result."""
        self.open()
        request = {"function": function, "args": list(args), "keep_alive": True}
        what = "waiting for %s.%s()" % (self.module, function)
        if timeout is None:
            timeout = self._wait if self.timeout is None else self.timeout
            bound = self._bound
        else:
            bound = None
        try:
            return self._connection.ask(request, what, timeout, bound)
        except ServerError:
            self._drop()  # the server closes the connection after an error reply
            raise
        except ClientError:
            self._drop()
            raise

    def __getattr__(self, function: str):
        if function.startswith("_"):
            raise AttributeError(function)

        def call(*args, timeout: float = None):
            return self.call(function, *args, timeout=timeout)

        call.__name__ = function
        return call

    def close(self) -> None:
        """Say goodbye and close the connection (the module is free again)."""
        if self._connection is not None:
            try:
                self._connection.send({"function": None, "args": [], "keep_alive": False})
            except OSError:
                pass
        self._drop()

    def _drop(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


LEASE = "_lease"


class Lease:
    """A lease on a module held while a ``with`` block runs (see ``Client.lease``).

    A background thread renews it every third of its length; if a renewal
    fails (an administrator broke the lease), ``lost`` holds the error.
    """

    def __init__(self, client: Client, module: str, seconds: float, wait: float = 0) -> None:
        self.client = client
        self.module = module
        self.seconds = seconds
        self.wait = wait
        self.info = None  # the server's description of the lease (holder, until, ...)
        self.lost = None  # the error of a failed renewal
        self._stop = threading.Event()
        self._renewer = None

    def __enter__(self) -> Lease:
        self.take()
        return self

    def __exit__(self, kind, value, traceback) -> None:
        try:
            self.release()
        except ClientError:
            if kind is None:
                raise  # an exception from the block matters more

    def take(self) -> dict:
        """Take the lease (waiting up to ``wait`` s) and start renewing it."""
        # Without the client's timeout the server bounds the wait (its _lease answers).
        timeout = None if self.client.timeout is None else self.wait + self.client.timeout
        self.info = self.client.lease_request(
            "take", self.module, self.seconds, self.wait, timeout=timeout
        )
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew, daemon=True)
        self._renewer.start()
        return self.info

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self.info = self.client.lease_request("renew", self.module, self.seconds)
            except ClientError as exc:
                self.lost = exc
                return

    def release(self) -> None:
        """Stop renewing and give the lease back."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        if self.lost is None:
            self.client.lease_request("release", self.module)


class client(Client):  # noqa: N801 (the original's name)
    """ModuleServer's client class, under its name: same arguments (its 2 s
    timeout too), same methods, same returns, the same bytes on the wire.

    Arrays come back as lists, as they did from the original, unless
    ``binary=True`` is given.
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        timeout=ORIGINAL_TIMEOUT,
        *args,
        **kwargs,
    ):
        kwargs.setdefault("binary", False)
        super().__init__(host, port, timeout, *args, **kwargs)


class Lab:
    """Calls modules by name on whichever modserver of the lab network offers them::

        lab = Lab()
        lab.com("wavemeter", "read")

    Servers announce themselves with DNS-SD (multicast DNS); finding them
    needs the modserver package and python-zeroconf (``pip install
    '.[discovery]'`` in modserver's checkout).  The first call for a module
    looks around for ``wait`` seconds and asks every server for its modules; the answer
    is remembered until a server appears, leaves or fails to answer.  A
    module offered by two servers is an error naming both, never a guess.
    """

    def __init__(
        self,
        wait: float = None,
        timeout: float = DEFAULT_TIMEOUT,
        tls=None,
        tls_ca: str = None,
        tls_cert: str = None,
        tls_key: str = None,
    ) -> None:
        discovery = load_discovery()
        self.timeout = timeout
        self.wait = discovery.DEFAULT_WAIT if wait is None else wait
        # With TLS files (as Client takes them), servers are used over their TLS ports.
        self.tls = client_tls(tls, tls_ca, tls_cert, tls_key)
        finding = discovery.DEFAULT_TIMEOUT if timeout is None else timeout
        self._finder = discovery.Finder(self.wait, finding, tls=self.tls)

    def client(self, module: str) -> Client:
        """A Client for the server that offers ``module``."""
        listing = self._finder.locate(module)
        return Client(listing.host, listing.port, self.timeout, tls=self.tls)

    def com(self, module: str, funcname: str = "_help", *args, timeout: float = None):
        """``Client.com`` on the server that offers ``module``."""
        try:
            return self.client(module).com(module, funcname, *args, timeout=timeout)
        except (ConnectionFailed, ReplyTimeout):
            self._finder.forget(module)  # it may have moved: look again next time
            raise

    def session(self, module: str, timeout: float = None) -> Session:
        """A keep-alive Session with ``module`` on the server that offers it."""
        return self.client(module).session(module, timeout)

    def servers(self) -> list:
        """Every server announced now, with its modules (``discovery.Listing``)."""
        return self._finder.servers()

    def close(self) -> None:
        """Stop watching the network."""
        self._finder.close()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def load_discovery():
    """modserver.discovery, once zeroconf is known to be there."""
    try:
        from modserver.lab import discovery
    except ImportError:  # this file copied on its own
        raise ClientError(
            "finding servers on the lab network needs the modserver package and "
            "python-zeroconf: pip install '.[discovery]' in modserver's checkout"
        ) from None
    discovery.load_zeroconf()
    return discovery


# The command line: modserver-client (or python client.py) --------------------------

EXIT_SERVER_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
DISCOVER_WAIT = 2.0  # discovery.DEFAULT_WAIT, which this file alone cannot import


def _seconds(text: str) -> float:
    """--timeout: a positive number of seconds."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    if seconds is None or not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError("%r is not a positive number of seconds" % text)
    return seconds


def _port(text: str) -> int:
    """--port: a TCP port number."""
    try:
        port = int(text)
    except ValueError:
        port = None
    if port is None or not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError("%r is not a port number (1 to 65535)" % text)
    return port


def _argument(text: str):
    """A command-line argument: JSON when it parses (5, 1.5, true, [1,2]), else text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


EXIT_STATUSES = """\
exit status:
  0  done
  1  the server answered with an error (its reason and traceback on standard error)
  2  usage: a mistake in the command line, or TLS files that cannot be used
  3  the server could not be reached, or did not answer within --timeout
"""


def version() -> str:
    """modserver's version, when this file is part of the installed package."""
    try:
        from modserver import __version__
    except ImportError:
        return "(client.py on its own, version unknown)"
    return __version__


def _options(suppress: bool) -> argparse.ArgumentParser:
    """The options every command takes, before or after it.

    The copy each command gets (``suppress``) has no defaults, so an option
    given before the command is not overwritten by the command's own.
    """

    def default(value):
        return argparse.SUPPRESS if suppress else value

    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--host", default=default(DEFAULT_HOST), help="server host (%s)" % DEFAULT_HOST
    )
    options.add_argument(
        "--port", type=_port, default=default(DEFAULT_PORT), help="server port (%d)" % DEFAULT_PORT
    )
    options.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        default=default(DEFAULT_TIMEOUT),
        help="seconds to wait for an answer (default: as long as the server will, which "
        "it says for each module, plus %g s); a call already running goes on in the "
        "module after it" % NETWORK_MARGIN,
    )
    options.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print the response as one line of JSON",
    )
    tls = options.add_argument_group(
        "TLS", "for a server listening with ssl: or mtls: (its certificate is always verified)"
    )
    tls.add_argument(
        "--tls",
        action="store_true",
        default=default(False),
        help="use TLS, trusting the system's CAs",
    )
    tls.add_argument(
        "--tls-ca",
        metavar="FILE",
        default=default(None),
        help="use TLS; the CA that signed the server's certificate",
    )
    tls.add_argument(
        "--tls-cert",
        metavar="FILE",
        default=default(None),
        help="this client's certificate (mutual TLS)",
    )
    tls.add_argument(
        "--tls-key",
        metavar="FILE",
        default=default(None),
        help="its private key (if not in --tls-cert's file)",
    )
    return options


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modserver-client",
        description="Talk to a modserver (or ModuleServer) from the shell. Options may "
        "come before or after the command.",
        epilog="Arguments of 'call' are read as JSON when they parse (5, 2.5, true, "
        'null, [1,2], "text") and as plain text otherwise.\n\n' + EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_options(suppress=False)],
    )
    parser.add_argument("--version", action="version", version="modserver-client " + version())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    shared = [_options(suppress=True)]

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=summary,
            description=summary[0].upper() + summary[1:] + ".",
            parents=shared,
            epilog=EXIT_STATUSES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    command("ping", "check the server answers; prints your address")
    help_command = command("help", "the server's help text and module list, or a module's help")
    help_command.add_argument("module", nargs="?", help="this module's help")
    modules = command("modules", "list the module names")
    modules.add_argument("prefix", nargs="?", default="", help="only names starting with this")
    reload = command("reload", "restart a module (or re-read the config)")
    reload.add_argument("name", nargs="?", default="", help="the module (none: the config)")
    status = command(
        "status", "the state of the server and its modules (a table; --json for programs)"
    )
    status.add_argument("name", nargs="?", help="just this module")
    call = command("call", "call a module's function and print the result")
    call.add_argument("module")
    call.add_argument(
        "function", nargs="?", default="_help", help="the function (none: the module's help)"
    )
    call.add_argument("args", nargs="*", default=[], metavar="ARG")
    call.add_argument(
        "--save",
        metavar="FILE.npy",
        help="write an array result to this .npy file (numpy.load reads it)",
    )
    lease = command(
        "lease",
        "take, renew, release, show or break (administrators) a module's exclusive lease",
    )
    lease.add_argument("operation", choices=("take", "renew", "release", "show", "break"))
    lease.add_argument("module", nargs="?", help="the module (show: none for every module)")
    lease.add_argument("seconds", nargs="?", type=float, help="take, renew: how long")
    lease.add_argument(
        "--wait",
        dest="lease_wait",
        type=float,
        default=0,
        help="take: seconds to wait while another client holds it (0)",
    )
    watch = command("watch", "print a reading's values as the server reads them")
    watch.add_argument("module")
    watch.add_argument("function")
    watch.add_argument("args", nargs="*", metavar="ARG")
    watch.add_argument(
        "--every", type=float, default=1.0, help="seconds between readings (%(default)s)"
    )
    watch.add_argument("--csv", action="store_true", help="print time,value,error lines")
    watch.add_argument("--count", type=int, default=0, help="stop after this many lines")
    discover = command(
        "discover", "list the servers announced on the lab network and their modules"
    )
    discover.add_argument(
        "--wait", type=float, default=DISCOVER_WAIT, help="seconds to listen (%(default)s)"
    )
    parser.set_defaults(wait=DISCOVER_WAIT)
    return parser


def _run(lab: Client, options):
    command = options.command
    if command == "ping":
        return lab.ping()
    if command == "help":
        return lab.com(options.module) if options.module else lab.help()
    if command == "modules":
        return lab.get_modules(options.prefix)
    if command == "reload":
        return lab.reload(options.name)
    if command == "status":
        return lab.status(options.name)
    if command == "discover":
        discovery = load_discovery()
        timeout = discovery.DEFAULT_TIMEOUT if options.timeout is None else options.timeout
        return discovery.discover(options.wait, timeout, lab.tls)
    if command == "lease":
        return _lease(lab, options)
    if command == "watch":
        return _watch(lab, options)
    return lab.com(options.module, options.function, *map(_argument, options.args))


def _watch(lab: Client, options) -> None:
    """Print each value as it comes (until Ctrl-C, or ``--count`` lines)."""
    watch = lab.watch(
        options.module, options.function, *map(_argument, options.args), every=options.every
    )
    out = sys.stdout
    if options.csv:
        out.write("time,value,error\n")
    shown = 0
    try:
        for t, value in watch:
            error = value.reason if isinstance(value, ServerError) else ""
            value = None if error else value
            if options.csv:
                cells = ["%.6f" % t, "" if error else json.dumps(value), error]
                out.write(",".join(_csv_cell(c) for c in cells) + "\n")
            else:
                when = (
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + ("%.3f" % (t % 1))[1:]
                )
                out.write("%s %s\n" % (when, error or json.dumps(value)))
            out.flush()
            shown += 1
            if options.count and shown >= options.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        watch.close()
    return None


def _csv_cell(text: str) -> str:
    if any(c in text for c in ',"\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _lease_mistake(options) -> str:
    """What is missing from a ``lease`` command line, or ""."""
    operation = options.operation
    if operation in ("take", "renew") and (options.module is None or options.seconds is None):
        return "lease %s needs a module and a number of seconds" % operation
    if operation in ("release", "break") and options.module is None:
        return "lease %s needs a module" % operation
    return ""


def _lease(lab: Client, options):
    operation, module, seconds = options.operation, options.module, options.seconds
    args = [module] if module is not None else []
    if seconds is not None and operation in ("take", "renew"):
        args.append(seconds)
    if operation == "take" and options.lease_wait:
        args.append(options.lease_wait)
        wait = None if lab.timeout is None else options.lease_wait + lab.timeout
        return lab.lease_request(operation, *args, timeout=wait)
    return lab.lease_request(operation, *args)


def summary(array) -> str:
    """An array in one line: dtype, shape, and a few figures, not its million values."""
    text = "array %s %s" % (array.dtype, "x".join(map(str, array.shape)) or "scalar")
    if array.size and array.dtype.kind in "biuf":
        numpy = _numpy()
        values = array.astype(numpy.float64) if array.dtype.kind == "b" else array
        text += ", min %s, max %s, mean %.6g" % (
            numpy.nanmin(values),
            numpy.nanmax(values),
            float(numpy.nanmean(values)),
        )
    if array.size:
        flat = array.reshape(-1)
        shown = ", ".join(map(str, flat[:3].tolist()))
        text += ": [%s%s]" % (shown, ", ..." if flat.size > 3 else "")
    return "<%s>" % text


def _shown_value(value):
    """json.dumps default for printing: arrays summarised, bytes counted."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "<%d bytes>" % len(value)
    if hasattr(value, "dtype") and hasattr(value, "shape"):
        return summary(value)
    raise TypeError("values of type %s cannot be shown" % type(value).__name__)


def _as_lists(value):
    """json.dumps default for --json: arrays in full, as lists; bytes as their hex."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    tolist = getattr(value, "tolist", None)
    if tolist is not None:
        return tolist()
    raise TypeError("values of type %s cannot be shown" % type(value).__name__)


def save_array(path: str, response) -> str:
    """Write an array result to a .npy file; what was written, for the user."""
    numpy = _numpy()
    if numpy is None:
        raise ClientError("--save needs numpy, which this Python cannot import")
    if not isinstance(response, numpy.ndarray):
        raise ClientError("--save: the result is a %s, not an array" % type(response).__name__)
    try:
        numpy.save(path, response, allow_pickle=False)
    except OSError as exc:
        raise ClientError("--save: cannot write %s: %s" % (path, exc.strerror or exc)) from None
    shape = "x".join(map(str, response.shape)) or "scalar"
    return "saved %s %s (%d bytes) to %s" % (response.dtype, shape, response.nbytes, path)


def _duration(seconds) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    hours, minutes = divmod(seconds // 60, 60)
    if hours:
        return "%dh %02dm" % (hours, minutes)
    return "%dm %02ds" % (minutes, seconds % 60) if minutes else "%ds" % seconds


def _short(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."


STATUS_COLUMNS = ("MODULE", "STATE", "PID", "UP", "RESTARTS", "CALLS", "ERRORS", "QUEUE")


def status_table(status: dict) -> str:
    """The answer to ``_status`` for people: the server in a line, a row per module."""
    server = status.get("server", {})
    modules = status.get("modules", {})
    lines = [
        "%s: modserver %s, up %s, %d module%s, %s connection%s"
        % (
            server.get("name") or "modserver",
            server.get("version", "?"),
            _duration(server.get("uptime")),
            len(modules),
            "" if len(modules) == 1 else "s",
            server.get("connections", 0),
            "" if server.get("connections", 0) == 1 else "s",
        )
    ]
    if server.get("config_error"):
        lines.append("config file not in use: %s" % _short(server["config_error"], 200))
    lines.extend("config: %s" % problem for problem in server.get("config_problems") or [])
    rows = [STATUS_COLUMNS]
    errors = []
    for name, module in modules.items():
        state = module.get("state", "?")
        if module.get("restart_in") is not None:
            state += " (restart in %ds)" % round(module["restart_in"])
        rows.append(
            (
                name,
                state,
                str(module.get("pid") or ""),
                _duration(module.get("uptime")),
                str(module.get("restarts", 0)),
                str(module.get("calls", 0)),
                str(module.get("errors", 0)),
                "%s/%s" % (module.get("queue", 0), module.get("queue_limit", "")),
            )
        )
        error = module.get("last_error")
        if error:
            errors.append("%s: %s" % (name, _short(error.get("reason", ""), 100)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(STATUS_COLUMNS))]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)]  # noqa: B905 (3.7)
        lines.append("  ".join(cells).rstrip())
    if errors:
        lines.append("last errors (status NAME --json for the tracebacks):")
        lines.extend("  " + error for error in errors)
    return "\n".join(lines)


def _show(command: str, response, as_json: bool, wait: float = 0) -> str:
    if command == "discover":
        return load_discovery().format_listings(response, wait, as_json)
    if as_json:
        return json.dumps(response, default=_as_lists)
    if isinstance(response, str):
        return response
    if command == "ping":
        return "%s:%s" % tuple(response)
    if command == "modules":
        return "\n".join(response)
    if hasattr(response, "dtype") and hasattr(response, "shape"):
        return summary(response)
    if command == "status":
        return status_table(response)
    return json.dumps(response, indent=2, default=_shown_value)


def main(argv=None) -> int:
    """Entry point of ``modserver-client``; returns the exit status."""
    parser = _parser()
    options = parser.parse_args(argv)
    if options.command == "lease" and _lease_mistake(options):
        parser.error(_lease_mistake(options))
    try:
        lab = Client(
            options.host,
            options.port,
            options.timeout,
            tls=options.tls,
            tls_ca=options.tls_ca,
            tls_cert=options.tls_cert,
            tls_key=options.tls_key,
        )
    except (ClientError, OSError, ssl.SSLError) as exc:
        sys.stderr.write("error: cannot use the TLS files given: %s\n" % exc)
        return EXIT_USAGE
    lab.timeout_option = CLI_TIMEOUT_OPTION
    try:
        response = _run(lab, options)
    except ServerError as exc:
        sys.stderr.write("error: %s\n" % exc.reason)
        sys.stderr.write(traceback_before(exc.reason, exc.traceback))
        return EXIT_SERVER_ERROR
    except ClientError as exc:
        sys.stderr.write("error: %s\n" % exc)
        return EXIT_UNREACHABLE
    if options.command == "watch":
        return 0
    if getattr(options, "save", None):
        try:
            text = save_array(options.save, response)
        except ClientError as exc:
            sys.stderr.write("error: %s\n" % exc)
            return EXIT_USAGE
    else:
        text = _show(options.command, response, options.json, options.wait)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


if __name__ == "__main__":
    if __spec__ is not None and __spec__.name == "modserver.client":
        # python -m modserver.client: this module is the package's client, so
        # what discovery raises (modserver.client's errors) is caught here.
        sys.modules.setdefault("modserver.client", sys.modules[__name__])
    sys.exit(main())
