"""The client side of the server: the hello and request steps of PROTOCOL.md.

One ``ClientProtocol`` per TCP connection.  It never blocks: a request for
a module becomes a ``Call`` on that module's supervisor, and the reply the
worker encoded is written back as it arrives.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from twisted.internet import interfaces, protocol
from twisted.logger import Logger
from zope.interface import implementer

from modserver import wire
from modserver.access import Identity
from modserver.errors import ReplyError, bad_request
from modserver.lines import ChunkedLineReceiver
from modserver.supervisor import Call, CallSink, LoadFailed

if TYPE_CHECKING:
    from modserver.service import ModServer

RELOAD = "_reload_"
GET_MODULES = "_get_modules"
STATUS = "_status"

# A client the server refuses gets this long to send its first line (the
# refusal is answered in that line's encoding), and a line this long at most.
REFUSAL_WAIT = 5.0
REFUSAL_MAX_LINE = 64 * 1024


@implementer(interfaces.IHalfCloseableProtocol, interfaces.IHandshakeListener)
class ClientProtocol(ChunkedLineReceiver, CallSink):
    """One client connection: a hello, then requests to one module.

    A client that closes its sending side has left, unless it speaks plain
    JSON: people at a terminal (``printf ... | nc host port``) close their
    side at once and wait for the answer, so they get it; a program that
    gave up (MATLAB after its 2 s timeout) has its waiting request dropped
    instead of run for nobody.

    Who the client is (``identity``: its address and, over mutual TLS, its
    certificate's CN) decides what it may do; the server's AccessPolicy
    answers.  A client the policy does not admit gets one ``Forbidden``
    reply, in the encoding of its first line, and is closed.
    """

    log = Logger()

    def __init__(self, server: ModServer) -> None:
        self.server = server
        self.settings = server.settings
        self.MAX_LENGTH = self.settings.max_request
        self._supervisor = None
        self._call: Call | None = None
        self._reply_error = False
        self._timer = None
        self._deadline: float | None = None
        self._closing = False
        self._waiting = False  # for a module's reply or a reload
        self._eof = False  # the client closed its sending side
        self._plain = True  # the mode of the last line received
        self._producer = None  # the worker channel a reply streams from
        self._refusal: ReplyError | None = None  # set for a client not admitted
        self.identity = Identity(None)
        self._admitted = False  # by --allow (checked again at the first line if not)
        self._admin = False  # may this client's timeouts end a worker?
        self._handshake_done = False

    # Connection ---------------------------------------------------------

    def connectionMade(self) -> None:
        """A client connected: wait for its hello."""
        super().connectionMade()
        self.server.connections.opened()
        peer = self.transport.getPeer()
        self.client_ip = getattr(peer, "host", "")
        self.client_port = getattr(peer, "port", 0)
        self.identity = Identity.of(self.client_ip)
        self._call_meta = json.dumps({"client": self.client_ip}).encode("utf-8") + b"\n"
        access = self.server.access
        self._admitted = access.admits(self.identity)
        if self._admitted or access.admits_certificates:
            self._idle(self.settings.idle_timeout)
        else:
            self._refuse_from_now()

    def _refuse_from_now(self) -> None:
        """This client is not admitted: answer its first line with Forbidden."""
        self._refusal = ReplyError(
            "Forbidden",
            f"{self.identity} may not use this server; the operator can admit it with --allow",
        )
        self.MAX_LENGTH = min(self.MAX_LENGTH, REFUSAL_MAX_LINE)
        self._idle(REFUSAL_WAIT)

    def handshakeCompleted(self) -> None:
        """TLS is up: over mutual TLS, the client's certificate names it."""
        self._handshake_done = True
        cn = certificate_cn(self.transport.getPeerCertificate())
        if cn is not None:
            self.identity = Identity(self.identity.address, cn)

    def connectionLost(self, reason=protocol.connectionDone) -> None:
        """The connection is gone: give up the module and any waiting request."""
        self.server.connections.closed()
        self._closing = True
        self.stop_lines()
        self._cancel_timer()
        self._unregister_producer()
        if self._supervisor is not None:
            self._supervisor.release(self)
        if not self._handshake_done and _tls_failure(reason):
            # Over mutual TLS, a client without an accepted certificate ends here.
            self.server.refused(
                self.identity,
                "tls",
                f"{self.identity} failed the TLS handshake ({reason.getErrorMessage()})",
            )

    def readConnectionLost(self) -> None:
        """The client will send no more: serve a plain-JSON client, else let go."""
        if not self._plain:
            self._close()
            return
        self._eof = True
        if self.unfinished_line():
            self.dataReceived(self.delimiter)  # a last line without its newline
        self._close_if_done()

    def writeConnectionLost(self) -> None:
        """Replies can no longer be sent: close."""
        self._close()

    def lineReceived(self, line: bytes) -> None:
        """One message: the hello, or a request once the module has acked."""
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line or line.isspace():
            return
        plain = self._plain = wire.is_plain(line)
        if not self._admitted and self._refusal is None:
            # Admitted only by a certificate, if at all: TLS is up by now.
            self._admitted = self.server.access.admits(self.identity)
            if not self._admitted:
                self._refuse_from_now()
        if self._refusal is not None:
            self._refuse(self._refusal, "server", plain)
            return
        try:
            text = line if plain else wire.unquote_plus(line)
            message = json.loads(text)
        except ValueError as exc:
            self._not_a_message(line, plain, exc)
            return
        if self._supervisor is None:
            self._hello(message, plain)
        else:
            self._request(message, text, plain)

    def _not_a_message(self, line: bytes, plain: bool, exc: ValueError) -> None:
        """A line that does not decode: someone at a terminal gets a plain reply."""
        if plain or wire.looks_url_encoded(line):
            self._fail(bad_request(f"message is not valid JSON: {exc}"), plain)
            return
        shown = line[:60].decode("utf-8", "replace") + ("..." if len(line) > 60 else "")
        err = bad_request(
            f"{shown!r} is neither JSON nor URL-encoded JSON: modserver reads one JSON "
            'object per line, such as {"name": "_help"}'
        )
        self._fail(err, plain=True)

    def lineLengthExceeded(self, line: bytes) -> None:
        """A line over the limit: say so, then hang up."""
        if self._refusal is not None:
            self._refuse(self._refusal, "server", wire.is_plain(line))
            return
        err = ReplyError(
            "LineTooLong",
            f"the message is longer than the server's limit of {self.MAX_LENGTH} bytes",
        )
        self._fail(err, wire.is_plain(line))

    # Step 1: hello --------------------------------------------------------

    def _hello(self, message, plain: bool) -> None:
        if not isinstance(message, dict) or "name" not in message:
            self._fail(
                bad_request(
                    'the hello must be a JSON object with a "name" key, like {"name": "_ping"}'
                ),
                plain,
            )
            return
        name = message["name"]
        if name is None or name == "_ping":
            self._answer([self.client_ip, self.client_port], plain)
        elif not isinstance(name, str):
            self._fail(
                bad_request(f'"name" must be a string or null, not {json.dumps(name)}'), plain
            )
        elif name == "_help":
            self._answer(self.server.help_text(self.identity), plain)
        elif name == GET_MODULES or name.startswith(GET_MODULES + "."):
            prefix = name[len(GET_MODULES) + 1 :]
            self._answer(self.server.module_names(prefix, self.identity), plain)
        elif name == STATUS or name.startswith(STATUS + "."):
            self._status(name[len(STATUS) + 1 :], plain)
        elif name.startswith(RELOAD):
            self._reload(wire.unquote_plus(name[len(RELOAD) :].encode("utf-8")), plain)
        else:
            self._open_module(name, plain)

    def _status(self, module: str, plain: bool) -> None:
        if module and self.server.module(module) is None:
            self._fail(bad_request(f"{module} does not exist (case matters)"), plain)
        elif module and not self.server.may_open(self.identity, module):
            self._refuse(self._module_refusal(module), module, plain)
        else:
            self._answer(self.server.status(module or None, self.identity), plain)

    def _module_refusal(self, module: str) -> ReplyError:
        return ReplyError(
            "Forbidden",
            f'{self.identity} may not use {module}; the operator can admit it in the "allow" '
            "list of its config entry",
        )

    def _refuse(self, err: ReplyError, what: str, plain: bool) -> None:
        """Answer a refusal, and have the server log it (without flooding its log)."""
        self.server.refused(self.identity, what, err.message)
        self._fail(err, plain)

    def _reload(self, module: str, plain: bool) -> None:
        if not self.server.access.is_admin(self.identity):
            what = f"reload {module}" if module else "re-read the config"
            err = ReplyError(
                "Forbidden",
                f"{self.identity} may not {what}: only administrators may; "
                "the operator names them with --admin-allow",
            )
            self._refuse(err, "admin", plain)
            return
        self.hold_lines()
        self._busy()
        self._waiting = True
        if not module:
            try:
                self.server.reload_config()
            except ReplyError as err:
                self._fail(err, plain)
            else:
                self._answer("Reloaded config", plain)
            return
        waiting = self.server.reload_module(module)
        if waiting is None:
            self._answer(f'Failed to find module "{module}"', plain)
            return

        def failed(failure):
            if isinstance(failure.value, LoadFailed):
                self._fail(failure.value.error, plain)
            else:
                self.log.failure("reloading {module} failed", failure, module=module)
                self._fail(
                    ReplyError("ReloadFailed", str(failure.value), failure.getTraceback()), plain
                )

        waiting.addCallbacks(lambda _: self._answer(f'Reloaded "{module}"', plain), failed)

    def _open_module(self, name: str, plain: bool) -> None:
        supervisor = self.server.module(name)
        if supervisor is None:
            self._fail(bad_request(f"{name} does not exist (case matters)"), plain)
            return
        if not self.server.may_open(self.identity, name):
            self._refuse(self._module_refusal(name), name, plain)
            return
        refusal = supervisor.hello_error()
        if refusal is not None:
            self._fail(refusal, plain)
            return
        self._supervisor = supervisor
        self._admin = self.server.access.is_admin(self.identity)
        self.transport.write(wire.encode_reply("ack", plain=plain))
        self._await_input(self.settings.idle_timeout)

    # Step 2: requests -------------------------------------------------------

    def _request(self, message, text, plain: bool) -> None:
        if not isinstance(message, dict):
            self._fail(
                bad_request('a request must be a JSON object like {"function": "f", "args": []}'),
                plain,
            )
            return
        if "function" not in message:
            self._fail(bad_request('the request has no "function" field'), plain)
            return
        function = message["function"]
        if function is None:
            self._close()  # the client says goodbye
            return
        problem = _request_problem(message)
        if problem:
            self._fail(bad_request(problem), plain)
            return
        self._busy()
        self.hold_lines()
        self._waiting = True
        self._call = Call(
            sink=self,
            request=text if isinstance(text, bytes) else text.encode("utf-8"),
            function=function,
            keep_alive=message.get("keep_alive", False),
            plain=plain,
            client_ip=self.client_ip,
            timeout=message.get("timeout"),
            admin=self._admin,
            meta=self._call_meta,
        )
        self._supervisor.submit(self._call)

    # CallSink: the module's reply -------------------------------------------

    def reply_started(self, error: bool, producer=None) -> None:
        """The worker's reply begins; a slow client pauses ``producer``."""
        self._reply_error = error
        if producer is not None and not self._closing:
            self.transport.registerProducer(producer, True)
            self._producer = producer

    def reply_data(self, data: bytes) -> None:
        """A piece of the encoded reply: straight to the client."""
        if not self._closing:
            self.transport.write(data)

    def reply_finished(self, complete: bool) -> None:
        """The reply is done: close, or wait for the next keep-alive request."""
        call, self._call = self._call, None
        self._waiting = False
        self._unregister_producer()
        if self._reply_error or not complete or call is None or not call.keep_alive:
            self._close()
            return
        self._await_input(self.settings.keepalive_timeout)

    # Helpers ------------------------------------------------------------------

    def _answer(self, response, plain: bool) -> None:
        """A successful reply that ends the connection."""
        if not self._closing:
            self.transport.write(wire.encode_reply(response, plain=plain))
        self._close()

    def _fail(self, err: ReplyError, plain: bool) -> None:
        """An error reply; the connection always closes after one."""
        if not self._closing:
            self.transport.write(err.line(plain))
        self._close()

    def _close(self) -> None:
        self.stop_lines()
        self._cancel_timer()
        self._waiting = False
        if not self._closing:
            self._closing = True
            self.transport.loseConnection()
            if self._supervisor is not None:
                self._supervisor.release(self)

    def _unregister_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            if self.transport.producer is producer:
                self.transport.unregisterProducer()
            producer.resumeProducing()  # never leave the channel paused

    def _await_input(self, seconds: float) -> None:
        """Wait up to ``seconds`` for the client's next line."""
        self._idle(seconds)
        self.release_lines()
        self._close_if_done()

    def _close_if_done(self) -> None:
        if self._eof and not self._waiting and not self.lines_waiting():
            self._close()

    def _idle(self, seconds: float) -> None:
        """Close the connection if it stays idle for ``seconds`` from now.

        One timer per connection, moved lazily: a keep-alive session making
        thousands of calls a second does not schedule and cancel one per call.
        """
        reactor = self.server.reactor
        self._deadline = reactor.seconds() + seconds
        if self._timer is None or not self._timer.active():
            self._timer = reactor.callLater(seconds, self._check_idle)
        elif self._timer.getTime() > self._deadline:
            self._timer.reset(seconds)

    def _busy(self) -> None:
        """A request or a reload is in progress: no idle deadline meanwhile."""
        self._deadline = None

    def _check_idle(self) -> None:
        self._timer = None
        if self._deadline is None or self._closing:
            return  # busy: the next _idle sets a new deadline
        remaining = self._deadline - self.server.reactor.seconds()
        if remaining <= 0 and self._refusal is not None:
            self._refuse(self._refusal, "server", plain=False)  # it never said a line
        elif remaining <= 0:
            self._close()
        else:
            self._timer = self.server.reactor.callLater(remaining, self._check_idle)

    def _cancel_timer(self) -> None:
        self._deadline = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


def _tls_failure(reason) -> bool:
    """True if the connection ended on a TLS error (a refused handshake)."""
    try:
        from OpenSSL import SSL
    except ImportError:
        return False
    return reason is not None and reason.check(SSL.Error) is not None


def certificate_cn(certificate) -> str | None:
    """The subject CN of a peer's certificate (pyOpenSSL's X509), or None."""
    if certificate is None:
        return None
    cn = certificate.get_subject().commonName
    return cn if cn else None


def _request_problem(message: dict) -> str | None:
    """What is wrong with a request's fields, or None."""
    if not isinstance(message["function"], str):
        return f'"function" must be a string or null, not {json.dumps(message["function"])}'
    if not isinstance(message.get("args", []), list):
        return '"args" must be a list of arguments'
    if not isinstance(message.get("keep_alive", False), bool):
        return '"keep_alive" must be true or false'
    timeout = message.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        return '"timeout" must be a positive number of seconds'
    return None


class ClientFactory(protocol.ServerFactory):
    """Builds a ClientProtocol for each connection to the server."""

    noisy = False

    def __init__(self, server: ModServer) -> None:
        self.server = server

    def buildProtocol(self, addr):
        proto = ClientProtocol(self.server)
        proto.factory = self
        return proto
