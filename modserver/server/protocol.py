"""The client side of the server: the hello and request steps of PROTOCOL.md.

One ``ClientProtocol`` per TCP connection.  It never blocks: a request for
a module becomes a ``Call`` on that module's supervisor, and the reply the
worker encoded is written back as it arrives.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING

from twisted.internet import defer, interfaces, protocol, tcp
from twisted.internet.abstract import FileDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from modserver.net.endpoints import is_tls_error, tls_reason
from modserver.net.flush import flush
from modserver.net.lines import ChunkedLineReceiver
from modserver.server.access import Identity
from modserver.supervision import leases, watches
from modserver.supervision.admission import REFUSING_AT_ONCE
from modserver.supervision.calls import Call, CallSink
from modserver.supervision.supervisor import LoadFailed
from modserver.wire import codec as wire
from modserver.wire import messages
from modserver.wire.errors import ReplyError, bad_request

if TYPE_CHECKING:
    from modserver.server.service import ModServer

# The most sent to a client's socket at once (one reactor turn): a 100 MB
# binary reply crosses in 1 MB pieces rather than Twisted's 128 KB.
SEND_LIMIT = 1024 * 1024

# The most read from a client's socket at once while a request's binary
# segments arrive (Twisted reads 64 KB a reactor turn).
RAW_READ_SIZE = 1024 * 1024

RELOAD = "_reload_"
WATCH = "_watch"
LATEST = "_latest"
GET_MODULES = "_get_modules"
STATUS = "_status"

# A plain-JSON client that closed its sending side may still read its reply
# (``printf ... | nc -N``) or be gone.  While its request waits, a space (a
# JSON reply may start with white space) is sent this often: to a client
# that is gone, the second one fails, and the request is withdrawn.
PROBE_INTERVAL = 0.5

# A client whose line is refused while it sends it (too long, past the byte
# budget) has this long to finish sending it (dropped) and read the answer.
DISCARD_WAIT = 10.0

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

    log = Logger(namespace="modserver.protocol.ClientProtocol")  # as logs are filtered

    def __init__(self, server: ModServer) -> None:
        self.server = server
        self.settings = server.settings
        self.MAX_LENGTH = self.settings.max_request
        self.budget = server.request_bytes  # request bytes all connections may hold
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
        self._seen_line = False
        self.closed = None  # called once when the connection is gone (its limit slot)
        self.mutual_tls = False  # on an mtls: listener, where clients show certificates
        self._probe = None  # the timer checking a half-closed plain client is still there
        self._lease_open = False  # the hello was _lease: one lease request follows
        self._lease_answer = None  # the Deferred of a lease request under way
        self._binary = False  # the client asked for binary segments (hello or a request)
        self._segments_for = None  # (request, its line, plain) while its segments arrive
        self._default_read = None  # the transport's read size, while a larger one is used
        self._direct = False  # nothing of ours is queued in the (plain TCP) transport
        self._watch_open = False  # the hello was _watch: one watch request follows
        self._watcher = None  # the watch this connection streams (watches.Watcher)
        self._watch_plain = True
        self._latest_only = False  # the hello was _latest: one answer, no watch
        self._watch_producer = None  # pauses the watch while the client does not read

    # Connection ---------------------------------------------------------

    @property
    def identity(self) -> Identity:
        """Who the client is: its address and, over mutual TLS, its certificate's CN."""
        return self._identity

    @identity.setter
    def identity(self, identity: Identity) -> None:
        self._identity = identity
        # Its names as calls carry them, made when it changes, not once per call.
        self._names = (str(identity), identity.owner)

    def connectionMade(self) -> None:
        """A client connected: wait for its hello."""
        super().connectionMade()
        if isinstance(self.transport, FileDescriptor):
            # Send a long reply in larger pieces than Twisted's default
            # (128 KB a reactor turn; SEND_LIMIT is its documented knob).
            self.transport.SEND_LIMIT = SEND_LIMIT
        # Small messages straight to the socket (_send): plain TCP only, never TLS.
        self._direct = isinstance(self.transport, tcp.Connection)
        peer = self.transport.getPeer()
        self.client_ip = getattr(peer, "host", "")
        self.client_port = getattr(peer, "port", 0)
        self.identity = Identity.of(self.client_ip)
        self._call_meta = json.dumps({"client": self.client_ip}).encode("utf-8") + b"\n"
        access = self.server.access
        self._admitted = access.admits(self.identity)
        if self._admitted or (access.admits_certificates and self.mutual_tls):
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
        self._closing = True
        self.stop_lines()
        self._cancel_timer()
        self._stop_watching_client()
        self._unregister_producer()
        self._end_watch()
        if self._supervisor is not None:
            self._supervisor.release(self)
        answer, self._lease_answer = self._lease_answer, None
        if answer is not None:
            answer.cancel()  # a taker that left waits no more for the lease
        closed, self.closed = self.closed, None
        if closed is not None:
            closed()
        if not self._handshake_done and is_tls_error(reason):
            # Over mutual TLS, a client without an accepted certificate ends here.
            self.server.refused(
                self.identity,
                "tls",
                f"{self.identity} failed the TLS handshake ({tls_reason(reason.value)})",
            )

    def readConnectionLost(self) -> None:
        """The client will send no more: serve a plain-JSON client, else let go."""
        pending = self.raw_pending()
        if pending is not None and self._segments_for is not None:
            received, expected = pending
            err = bad_request(
                f"the connection closed in the middle of the binary segments: {received} "
                f"of {expected} bytes came"
            )
            self._fail(err, self._segments_for[2])
            return
        if not self._plain:
            self._close()
            return
        self._eof = True
        if self.unfinished_line():
            self.dataReceived(self.delimiter)  # a last line without its newline
        self._close_if_done()
        self._watch_client()

    def _watch_client(self) -> None:
        """While a half-closed plain client's request waits, check it is still there."""
        call = self._call
        if self._probe is not None or self._closing or call is None or call.started is not None:
            return
        self._probe = self.server.reactor.callLater(PROBE_INTERVAL, self._check_client)

    def _check_client(self) -> None:
        self._probe = None
        call = self._call
        if self._closing or call is None or call.started is not None or call.answered:
            return
        self._send(b" ")  # the start of its reply line, or a reset if it is gone
        self._watch_client()

    def _stop_watching_client(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None and probe.active():
            probe.cancel()

    def writeConnectionLost(self) -> None:
        """Replies can no longer be sent: close."""
        self._close()

    def lineReceived(self, line: bytes) -> None:
        """One message: the hello, or a request once the module has acked."""
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line or line.isspace():
            return
        self._seen_line = True
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
            message, text = messages.decode(line, plain)
        except ReplyError as err:
            self._not_a_message(line, plain, err)
            return
        if self._watcher is not None:
            self._close()  # any line stops the watch ({"stop": true} documented)
        elif self._watch_open:
            self._watch_request(message, plain)
        elif self._lease_open:
            self._lease_request(message, plain)
        elif self._supervisor is None:
            self._hello(message, plain)
        else:
            self._request(message, text, plain)

    def _not_a_message(self, line: bytes, plain: bool, err: ReplyError) -> None:
        """A line that does not decode: someone at a terminal gets a plain reply."""
        if plain or wire.looks_url_encoded(line) or not isinstance(err, messages.NotJSON):
            self._fail(err, plain)
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
        self._fail_after_line(err, wire.is_plain(line))

    def budget_exceeded(self, data: bytes) -> None:
        """The server holds as many request bytes as it may: refuse this one."""
        plain = self._plain if self._seen_line else wire.is_plain(data)
        self._fail_after_line(self.budget.refusal(), plain)

    def _fail_after_line(self, err: ReplyError, plain: bool) -> None:
        """An error reply now; the connection closes once the client has sent
        the rest of its line (or after DISCARD_WAIT), so that it can read it."""
        if self._closing:
            return
        self._send(err.line(plain))
        self._waiting = False
        self._idle(DISCARD_WAIT)
        self.discard_rest_of_line()

    def line_discarded(self) -> None:
        """The refused line has ended: close."""
        self._close()

    # Step 1: hello --------------------------------------------------------

    def _hello(self, message, plain: bool) -> None:
        try:
            name = messages.hello_name(message)
            self._binary = messages.wants_binary(message)
        except ReplyError as err:
            self._fail(err, plain)
            return
        if name is None or name == "_ping":
            self._answer([self.client_ip, self.client_port], plain)
        elif name == "_help":
            self._answer(self.server.help_text(self.identity), plain)
        elif name == GET_MODULES or name.startswith(GET_MODULES + "."):
            prefix = name[len(GET_MODULES) + 1 :]
            self._answer(self.server.module_names(prefix, self.identity), plain)
        elif name == STATUS or name.startswith(STATUS + "."):
            self._status(name[len(STATUS) + 1 :], plain)
        elif name in (WATCH, LATEST):
            self._watch_open = True
            self._latest_only = name == LATEST
            self.transport.write(wire.encode_reply("ack", plain=plain))
            self._await_input(self.settings.idle_timeout)
        elif name == leases.LEASE:
            self._lease_open = True
            self.transport.write(wire.encode_reply("ack", plain=plain))
            self._await_input(self.settings.idle_timeout)
        elif name.startswith(RELOAD):
            self._reload(wire.unquote_plus(name[len(RELOAD) :].encode("utf-8")), plain)
        else:
            self._open_module(name, plain, messages.asks_answer_within(message))

    def _status(self, module: str, plain: bool) -> None:
        if module and self.server.module(module) is None:
            self._fail(self._no_such_module(module), plain)
        elif module and not self.server.may_open(self.identity, module):
            self._refuse(self._module_refusal(module), module, plain)
        else:
            self._answer(self.server.status(module or None, self.identity), plain)

    def _no_such_module(self, name: str) -> ReplyError:
        why = self.server.why_skipped(name)
        if why is not None:
            return bad_request(
                f"{name} is in the server's config but was skipped: {why}; "
                "the operator can fix its entry"
            )
        return bad_request(f"{name} does not exist (case matters)")

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
                self.server.reload_config(by=str(self.identity))
            except ReplyError as err:
                self._fail(err, plain)
            else:
                self._answer("Reloaded config", plain)
            return
        waiting = self.server.reload_module(module, by=str(self.identity))
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

    def _open_module(self, name: str, plain: bool, answer_within: bool = False) -> None:
        supervisor = self.server.module(name)
        if supervisor is None:
            self._fail(self._no_such_module(name), plain)
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
        # (ext) A client that asks is told how long the server may take to answer.
        extra = {"answer_within": supervisor.answers_within()} if answer_within else None
        self._send(wire.encode_reply("ack", plain=plain, extra=extra))
        self._flush()
        self._await_input(self.settings.idle_timeout)

    def _lease_request(self, message, plain: bool) -> None:
        """The one request after a ``_lease`` hello: take, renew, release, show, break."""
        try:
            request = messages.request(message)
            if request.function is None:
                self._close()
                return
            lease_request = leases.parse_request(request.function, message.get("args", []))
        except ReplyError as err:
            self._fail(err, plain)
            return
        self.hold_lines()
        self._busy()
        self._waiting = True
        answer = defer.maybeDeferred(self.server.lease, self.identity, lease_request)
        self._lease_answer = answer

        def failed(failure):
            self._lease_answer = None
            if failure.check(defer.CancelledError):
                return None
            if failure.check(ReplyError):
                self._fail(failure.value, plain)
                return None
            self.log.failure("a lease request failed", failure)
            self._fail(ReplyError("LeaseFailed", str(failure.value), failure.getTraceback()), plain)
            return None

        def answered(result):
            self._lease_answer = None
            self._answer(result, plain)

        answer.addCallbacks(answered, failed)

    # Watches ----------------------------------------------------------------

    def _watch_request(self, message, plain: bool) -> None:
        """The request after a ``_watch`` (or ``_latest``) hello."""
        try:
            what = watches.parse_request(message, latest=self._latest_only)
        except ReplyError as err:
            self._fail(err, plain)
            return
        if what is None:
            self._close()  # {"function": null}: the client leaves
            return
        module, function, args, every = what
        if self.server.module(module) is None:
            self._fail(bad_request(f"{module} does not exist (case matters)"), plain)
            return
        if not self.server.may_open(self.identity, module):
            self._refuse(self._module_refusal(module), module, plain)
            return
        if self._latest_only:
            self._answer_latest(module, function, args, plain)
            return
        self._watch_plain = plain
        try:
            self._watcher = self.server.watches.watch(
                self.identity.owner,
                module,
                function,
                args,
                every,
                self._send_sample,
                self._watch_ended,
            )
        except ReplyError as err:
            self._fail(err, plain)
            return
        self._busy()  # no idle deadline while watching
        self._waiting = True  # a plain client that closed its sending side still watches
        self._watch_producer = WatchProducer(self)
        self.transport.registerProducer(self._watch_producer, True)

    def _answer_latest(self, module: str, function: str, args, plain: bool) -> None:
        """``_latest``: the last value of a watched reading and its age, no poll."""
        reading = self.server.watches.board.latest(module, function, args)
        try:
            if reading is None:
                name = watches.reading_name(watches.reading_key(module, function, args))
                raise ReplyError(
                    "NotWatched",
                    f"nobody watches {name}; watch it, or name it in the config's readings",
                )
            answer = reading.latest_answer(self.server.reactor.seconds())
        except ReplyError as err:
            self._fail(err, plain)
            return
        self._answer(answer, plain)

    def _send_sample(self, sample) -> None:
        if self._closing:
            return
        try:
            data = wire.encode_watch(sample.message(), self._watch_plain)
        except (TypeError, ValueError) as exc:
            reason = f"BadReply: the value cannot be sent as JSON ({exc})"
            data = wire.encode_watch(
                {"time": sample.time, "error": reason, "traceback": reason + "\n"},
                self._watch_plain,
            )
        self.transport.write(data)

    def _watch_ended(self, reason: ReplyError, stuck: bool) -> None:
        """The server ends this watch (its reading cannot be read, or the client read nothing)."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            self.server.watches.unwatch(watcher)
        if self._closing:
            return
        self.transport.write(reason.line(self._watch_plain))
        self._close()
        abort = getattr(self.transport, "abortConnection", None)
        if stuck and abort is not None:
            # A client that reads nothing would hold the connection open for ever.
            self.server.reactor.callLater(DISCARD_WAIT, abort)

    def _end_watch(self) -> None:
        """Stop the watch and its flow control (a paused producer would keep the
        connection from closing once its last bytes are sent)."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            self.server.watches.unwatch(watcher)
        producer, self._watch_producer = self._watch_producer, None
        if producer is not None and self.transport.producer is producer:
            self.transport.unregisterProducer()

    # Step 2: requests -------------------------------------------------------

    def _request(self, message, text, plain: bool) -> None:
        try:
            request = messages.request(message, self.MAX_LENGTH)
        except ReplyError as err:
            self._refuse_segments(message, err, plain)
            return
        if request.function is None:
            self._close()  # the client says goodbye
            return
        data = text if isinstance(text, bytes) else text.encode("utf-8")
        self._binary = self._binary or request.binary
        if request.segments and not self._binary:
            err = bad_request(
                "binary segments on a connection that did not ask for them: "
                'send "binary": 1 in the hello or the request (docs/protocol.md)'
            )
            self._refuse_segments(message, err, plain)
            return
        total = sum(request.segments)
        if len(data) + total > self.MAX_LENGTH:
            err = bad_request(
                f"the request is {len(data) + total} bytes with its binary segments, over "
                f"the server's limit of {self.MAX_LENGTH} bytes (--max-request)"
            )
            self._refuse_segments(message, err, plain)
            return
        if not self.budget.take(len(data)):
            self._fail(self.budget.refusal(), plain)
            return
        if request.segments:
            self._segments_for = (request, data, plain)
            self._idle(self.settings.idle_timeout)  # moved on as the segments arrive
            self._read_size(RAW_READ_SIZE)
            self.expect_raw(total)
            return
        self._submit(request, data, plain, ())

    def _refuse_segments(self, message, err: ReplyError, plain: bool) -> None:
        """Refuse a request; binary segments it announced are read and dropped
        first (within DISCARD_WAIT), so that the client can read the answer."""
        total = 0
        if isinstance(message, dict) and isinstance(message.get("segments"), list):
            sizes = message["segments"]
            if all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in sizes):
                total = sum(sizes)
        if not total or self._closing:
            self._fail(err, plain)
            return
        self._send(err.line(plain))
        self._waiting = False
        self._idle(DISCARD_WAIT)
        self.expect_raw(total, keep=False)

    def raw_progress(self) -> None:
        self._idle(self.settings.idle_timeout)

    def _send(self, data: bytes) -> None:
        """Write ``data`` to the client.

        On a plain TCP connection where nothing of ours is queued, it is sent
        at once with the transport's ``writeSomeData`` (the public call its
        own writing ends in): queuing it for the reactor's next turn costs
        that turn and two ``epoll_ctl`` calls, which made the keep-alive call
        slower than before writes went through the transport. What does not
        go at once, and everything after it on this connection (and every
        write over TLS, or of a flow-controlled reply), goes through
        ``transport.write``, so nothing is ever sent out of order.
        """
        if self._direct:
            sent = self.transport.writeSomeData(data)
            if isinstance(sent, int) and sent >= 0:
                if sent == len(data):
                    return
                data = data[sent:]
            self._direct = False
        self.transport.write(data)

    def _flush(self) -> None:
        """What the transport holds leaves now (nothing to do while writing directly)."""
        if not self._direct:
            flush(self.transport)

    def _read_size(self, size: int | None) -> None:
        """Read the socket ``size`` bytes at a time (None: as before, Twisted's 64 KB;
        ``bufferSize`` is the size its TCP transport reads)."""
        if isinstance(self.transport, FileDescriptor):
            if self._default_read is None:
                self._default_read = self.transport.bufferSize
            self.transport.bufferSize = size or self._default_read

    def raw_received(self, pieces: list[bytes]) -> None:
        """The request's binary segments are all here: on to the module."""
        self._read_size(None)
        request, data, plain = self._segments_for
        self._segments_for = None
        self._submit(request, data, plain, tuple(pieces))

    def _submit(self, request, data: bytes, plain: bool, segments: tuple) -> None:
        size = len(data) + sum(map(len, segments)) if segments else len(data)
        client, owner = self._names
        self._busy()
        self.hold_lines()
        self._waiting = True
        self._call = Call(
            sink=self,
            request=data,
            function=request.function,
            keep_alive=request.keep_alive,
            plain=plain,
            client_ip=self.client_ip,
            client=client,
            owner=owner,
            lease_wait=request.lease_wait,
            wait_limit=request.timeout if request.lease_wait else None,
            timeout=request.timeout,
            admin=self._admin,
            meta=self._call_meta,
            release=functools.partial(self.budget.give_back, size),
            binary=self._binary,
            segments=segments,
        )
        self._supervisor.submit(self._call)
        if self._eof:
            self._watch_client()

    # CallSink: the module's reply -------------------------------------------

    def reply_started(self, error: bool, producer=None) -> None:
        """The worker's reply begins; a slow client pauses ``producer``."""
        if self._probe is not None:
            self._stop_watching_client()
        self._reply_error = error
        if producer is not None and not self._closing:
            self._direct = False  # a long reply goes through the transport, flow-controlled
            self.transport.registerProducer(producer, True)
            self._producer = producer

    def reply_data(self, data: bytes) -> None:
        """A piece of the encoded reply: straight to the client."""
        if not self._closing:
            self._send(data)

    def reply_finished(self, complete: bool) -> None:
        """The reply is done: close, or wait for the next keep-alive request."""
        call, self._call = self._call, None
        self._waiting = False
        if self._producer is not None:
            self._unregister_producer()
        if not self._closing and not self._direct:
            self._flush()  # the reply's tail leaves now, not at the next turn
        if self._reply_error or not complete or call is None or not call.keep_alive:
            self._close()
            return
        self._await_input(self.settings.keepalive_timeout)

    # Helpers ------------------------------------------------------------------

    def _answer(self, response, plain: bool) -> None:
        """A successful reply that ends the connection."""
        if not self._closing:
            self._send(wire.encode_reply(response, plain=plain))
        self._close()

    def _fail(self, err: ReplyError, plain: bool) -> None:
        """An error reply; the connection always closes after one."""
        if not self._closing:
            self._send(err.line(plain))
        self._close()

    def _close(self) -> None:
        self.stop_lines()
        self._cancel_timer()
        self._stop_watching_client()
        self._waiting = False
        if not self._closing:
            self._closing = True
            self._end_watch()
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


@implementer(interfaces.IPushProducer)
class WatchProducer:
    """A watching connection's flow control: a client that does not read pauses its watch."""

    def __init__(self, proto: ClientProtocol) -> None:
        self.proto = proto

    def pauseProducing(self) -> None:
        watcher = self.proto._watcher
        if watcher is not None:
            watcher.pause(self.proto.server.reactor.seconds())

    def resumeProducing(self) -> None:
        watcher = self.proto._watcher
        if watcher is not None:
            watcher.resume()

    def stopProducing(self) -> None:
        """The connection is going: connectionLost ends the watch."""


def certificate_cn(certificate) -> str | None:
    """The subject CN of a peer's certificate (pyOpenSSL's X509), or None."""
    if certificate is None:
        return None
    cn = certificate.get_subject().commonName
    return cn if cn else None


class ClientFactory(protocol.ServerFactory):
    """Builds a ClientProtocol for each connection the limits allow.

    Past the limits (admission.ConnectionLimits), a connection gets one
    ``Busy`` line and is closed; past those and a few more being refused,
    it is closed at once: the descriptors kept for workers and logs are
    never spent on clients.
    """

    noisy = False

    def __init__(self, server: ModServer, mutual_tls: bool = False) -> None:
        self.server = server
        self.mutual_tls = mutual_tls  # its listener asks clients for certificates

    def buildProtocol(self, addr):
        limits = self.server.connections
        where = peer_address(addr)
        refusal = limits.refusal(where)
        if refusal is None:
            limits.opened(where)
            proto = ClientProtocol(self.server)
            proto.closed = functools.partial(limits.closed, where)
            proto.mutual_tls = self.mutual_tls
        elif limits.refusing < REFUSING_AT_ONCE:
            self.server.refused(Identity.of(where), "connections", refusal.message)
            proto = Refusal(refusal, self)
        else:
            return None  # closed at once, unanswered
        proto.factory = self
        return proto


def peer_address(addr) -> str:
    """The client's address as the access rules see it (IPv4 clients of :: as IPv4)."""
    host = getattr(addr, "host", "")
    address = Identity.of(host).address
    return str(address) if address is not None else host


# Connections being refused are answered, then closed within this long; past
# admission.REFUSING_AT_ONCE of them, more are closed unanswered.
REFUSAL_LINGER = 2.0


@implementer(interfaces.IHalfCloseableProtocol)
class Refusal(protocol.Protocol):
    """Answers one error line and closes.

    It closes its sending side first and reads what the client still sends
    until it closes too (or REFUSAL_LINGER passes): closing with unread data
    would reset the connection, and the client could lose the answer.
    """

    def __init__(self, error: ReplyError, factory: ClientFactory) -> None:
        self.error = error
        self.factory = factory
        self._timer = None

    def connectionMade(self) -> None:
        """Answer, URL-encoded (the client has said nothing yet), and stop sending."""
        self.factory.server.connections.refusing += 1
        self.transport.write(self.error.line(plain=False))
        half_close = getattr(self.transport, "loseWriteConnection", None)
        if half_close is None:
            self.transport.loseConnection()
            return
        half_close()
        reactor = self.factory.server.reactor
        self._timer = reactor.callLater(REFUSAL_LINGER, self.transport.loseConnection)

    def dataReceived(self, data: bytes) -> None:
        """Whatever the client sends is read and dropped."""

    def readConnectionLost(self) -> None:
        """The client is done too: close."""
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """Nothing more is sent anyway."""

    def connectionLost(self, reason=protocol.connectionDone) -> None:
        """Gone: one refusal less under way."""
        self.factory.server.connections.refusing -= 1
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
