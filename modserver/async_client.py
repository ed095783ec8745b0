"""A client for Twisted programs: the blocking client's calls, returning Deferreds.

    from modserver.async_client import AsyncClient

    lab = AsyncClient("lab-pc")
    wavelength = await lab.com("laser", "set_wavelength", 795.5)   # in an async def
    session = await lab.session("stage")
    await session.move(1.0)
    await session.close()

Over TLS (and mutual TLS): ``AsyncClient("lab-pc", 36578, tls_ca="lab-ca.pem",
tls_cert="alice.pem", tls_key="alice.key")``; the server's certificate is
always verified.

Errors are those of modserver.client: ServerError for an error reply,
ConnectionFailed and ReplyTimeout when the server is out of reach.

``AsyncLab`` finds modules by name on the lab network, as client.Lab does::

    lab = AsyncLab()
    reading = await lab.com("wavemeter", "read")
"""

from __future__ import annotations

import collections
import functools
import json

from twisted.internet import defer, endpoints, error, ssl, task, threads
from twisted.internet.protocol import Factory

from modserver.client import (
    ANSWER_WAIT,
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_TIMEOUT,
    LEASE,
    RELOAD_WAIT,
    UNBOUNDED,
    ClientError,
    ConnectionFailed,
    ReplyTimeout,
    ServerError,
    _numpy,
    binary_available,
    client_tls,
    load_discovery,
    server_bound,
)
from modserver.net.endpoints import is_tls_error, pem_certificates, tls_reason
from modserver.net.lines import ChunkedLineReceiver
from modserver.wire import binary
from modserver.wire import codec as wire

# What sets the client's timeout, named in its ReplyTimeout messages.
TIMEOUT_OPTION = "timeout= (of the AsyncClient, or of one call)"


class _LineClient(ChunkedLineReceiver):
    """Sends messages and pairs each reply line with the Deferred waiting for it."""

    MAX_LENGTH = 2 * 1024**3
    binary = False  # requests ask for binary segments, and send arrays as segments

    def connectionMade(self) -> None:
        super().connectionMade()
        self.waiting: collections.deque[defer.Deferred] = collections.deque()
        self.lost = False
        self._reply_text = None  # a binary reply's line while its segments arrive
        self.on_line = None  # lines nobody waits for (a watch's values) go here
        self.on_lost = None

    def ask(self, message: dict) -> defer.Deferred:
        """Send ``message``; the Deferred fires with the reply's response."""
        return self.ask_reply(message).addCallback(lambda reply: reply.get("response"))

    def ask_reply(self, message: dict) -> defer.Deferred:
        """Send ``message``; the Deferred fires with the whole reply (a dict)."""
        waiting = defer.Deferred()
        if self.lost:
            waiting.errback(ConnectionFailed("the connection is closed"))
            return waiting
        self.waiting.append(waiting)
        self.send(message)
        return waiting

    def send(self, message: dict) -> None:
        """Send ``message`` (with its arrays and bytes as segments, in binary mode)."""
        if self.lost:
            return
        segments = []
        if self.binary and "function" in message:
            encoder = binary.Encoder()
            text = binary.dumps(dict(message, binary=1), encoder)
            segments = encoder.segments
        else:
            text = json.dumps(message)
        line = wire.quote_plus(text.encode("utf-8")) + b"\n"
        # Twisted takes bytes only: an array's buffer is copied once here.
        pieces = [s if isinstance(s, bytes) else bytes(s) for s in segments]
        self.transport.writeSequence([line, *pieces])

    def lineReceived(self, line: bytes) -> None:
        """A reply: fire the oldest waiter with it (a binary one once its segments came)."""
        if not self.waiting:
            if self.on_line is not None:
                self.on_line(line)
            return
        try:
            text = wire.unquote_plus(line)
            reply = json.loads(text)
            sizes = reply.get("segments") if self.binary and isinstance(reply, dict) else None
            if sizes:
                self._reply_text = text, binary.segment_sizes(sizes, 1 << 62)
                self.expect_raw(sum(self._reply_text[1]))
                return
        except (ValueError, AttributeError) as exc:
            self.waiting.popleft().errback(
                ClientError(f"the server sent a line that is not a reply: {exc}")
            )
            return
        self._answer(reply)

    def raw_received(self, pieces: list[bytes]) -> None:
        """A binary reply's segments: into one buffer, arrays made on it."""
        (text, sizes), self._reply_text = self._reply_text, None
        buffer = bytearray(sum(sizes))
        view, at = memoryview(buffer), 0
        for piece in pieces:
            view[at : at + len(piece)] = piece
            at += len(piece)
        try:
            reply = binary.loads(text, sizes, buffer, binary.numpy_rebuild(_numpy()))
        except binary.BinaryError as exc:
            self.waiting.popleft().errback(ClientError(f"a malformed binary reply: {exc}"))
            return
        self._answer(reply)

    def _answer(self, reply) -> None:
        waiting = self.waiting.popleft()
        if not isinstance(reply, dict):
            waiting.errback(ClientError("the server sent a reply that is not a JSON object"))
        elif reply.get("error"):
            waiting.errback(ServerError(str(reply.get("response")), reply.get("traceback") or ""))
        else:
            waiting.callback(reply)

    def connectionLost(self, reason=None) -> None:
        """Every reply still awaited will not come."""
        self.lost = True
        waiting, self.waiting = self.waiting, collections.deque()
        why = "the server closed the connection before replying"
        if is_tls_error(reason):
            why = f"the TLS connection failed: {tls_reason(reason.value)}"
        for each in waiting:
            each.errback(ConnectionFailed(why))
        if self.on_lost is not None:
            self.on_lost(why)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror or exc}") from None


def tls_options(host: str, ca: str | None = None, cert: str | None = None, key: str | None = None):
    """Twisted TLS options that verify the server ``host`` against ``ca`` (else the
    system's CAs) and show the client certificate ``cert`` (with ``key``) if given."""
    trust = ssl.platformTrust()
    if ca:
        trust = ssl.trustRootFromCertificates(pem_certificates(_read(ca), ca))
    mine = None
    if cert:
        data = _read(cert)
        mine = ssl.PrivateCertificate.loadPEM(data + b"\n" + _read(key) if key else data)
    return ssl.optionsForClientTLS(host, trustRoot=trust, clientCertificate=mine)


class AsyncClient:
    """A modserver client for Twisted programs; each call opens its own connection.

    Without a ``timeout`` it waits as long as the server will, as
    ``client.Client`` does: a module's calls as long as its ack says (plus
    client.NETWORK_MARGIN), the server's other answers ANSWER_WAIT.
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        timeout: float = DEFAULT_TIMEOUT,
        reactor=None,
        tls=None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        binary: bool | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        if binary and not binary_available():
            raise ClientError("binary=True needs numpy")
        # Arrays and bytes as binary segments: by default when numpy can be imported.
        self.binary = binary_available() if binary is None else bool(binary)
        self.host = host
        self.port = port
        self.timeout = timeout
        self.reactor = reactor
        self.tls = None  # Twisted's TLS options (a connection creator), or None for TCP
        if tls is not None and tls is not True and tls is not False:
            self.tls = tls
        elif tls or tls_ca or tls_cert:
            self.tls = tls_options(host, tls_ca, tls_cert, tls_key)

    async def _connect(self, timeout: float | None) -> _LineClient:
        timeout = ANSWER_WAIT if timeout is None else timeout
        endpoint = endpoints.HostnameEndpoint(self.reactor, self.host, self.port, timeout=timeout)
        if self.tls is not None:
            endpoint = endpoints.wrapClientTLS(self.tls, endpoint)
        try:
            proto = await endpoint.connect(Factory.forProtocol(_LineClient))
            proto.binary = self.binary
            return proto
        except (error.ConnectError, error.DNSLookupError) as exc:
            where = f"{self.host}:{self.port}"
            if isinstance(exc, error.TimeoutError):
                raise ReplyTimeout(
                    f"no connection to modserver at {where} within {timeout:g} s (the "
                    f"client's timeout, which {TIMEOUT_OPTION} sets)"
                ) from None
            raise ConnectionFailed(f"cannot connect to modserver at {where}: {exc}") from None

    async def _ask(
        self,
        proto: _LineClient,
        message: dict,
        what: str,
        timeout: float,
        bound: str | None = None,
        whole: bool = False,
    ):
        """The reply's response (``whole``: the reply), within ``timeout``
        (UNBOUNDED: no bound); ``bound`` says where the timeout came from."""
        answer = proto.ask_reply(message) if whole else proto.ask(message)
        if timeout is None:  # no timeout given: a prompt answer is expected
            timeout = ANSWER_WAIT
        if timeout != UNBOUNDED:
            answer.addTimeout(timeout, self.reactor)
        try:
            return await answer
        except defer.TimeoutError:
            proto.transport.loseConnection()
            if bound:
                source = f"{bound}; {TIMEOUT_OPTION} sets another"
            else:
                source = f"the client's timeout, which {TIMEOUT_OPTION} sets"
            raise ReplyTimeout(
                f"no reply from modserver at {self.host}:{self.port} within {timeout:g} s "
                f"while {what}: {source}; a call already running goes on in the module"
            ) from None

    def _hello(self, name: str, what: str, wait: float = ANSWER_WAIT) -> defer.Deferred:
        async def run():
            proto = await self._connect(self.timeout)
            try:
                timeout = wait if self.timeout is None else self.timeout
                return await self._ask(proto, {"name": name}, what, timeout)
            finally:
                proto.transport.loseConnection()

        return defer.Deferred.fromCoroutine(run())

    def ping(self) -> defer.Deferred:
        """``[your ip, your port]`` as the server sees them."""
        return self._hello("_ping", "waiting for the answer to _ping")

    def help(self) -> defer.Deferred:
        return self._hello("_help", "waiting for the help text")

    def get_modules(self, prefix: str = "") -> defer.Deferred:
        return self._hello("_get_modules." + prefix, "waiting for the module list")

    def status(self, module: str | None = None) -> defer.Deferred:
        return self._hello(
            "_status" if module is None else "_status." + module, "waiting for the status"
        )

    def reload(self, module: str = "") -> defer.Deferred:
        """Restart ``module``'s worker (no name: re-read the config); fails for no such module."""
        encoded = wire.quote_plus(module.encode("utf-8")).decode("ascii")
        answer = self._hello(
            "_reload_" + encoded, f"waiting for the reload of {module!r}", RELOAD_WAIT
        )

        def check(text):
            if module and text == f'Failed to find module "{module}"':
                raise ServerError(text)
            return text

        return answer.addCallback(check)

    def com(
        self, module: str, funcname: str = "_help", *args, timeout: float | None = None
    ) -> defer.Deferred:
        """Call ``funcname(*args)`` on ``module``; fires with what it returned."""

        async def run():
            session = await self.session(module)
            try:
                return await session.call(funcname, *args, timeout=timeout, keep_alive=False)
            finally:
                session.close()

        return defer.Deferred.fromCoroutine(run())

    def session(self, module: str) -> defer.Deferred:
        """Fires with an AsyncSession: a keep-alive connection holding ``module``."""

        async def run():
            proto = await self._connect(self.timeout)
            hello = {"name": module}
            if self.timeout is None:
                hello["answer_within"] = True  # (ext) the ack says how long calls may take
            try:
                ack = await self._ask(
                    proto,
                    hello,
                    f"waiting for {module} to acknowledge",
                    ANSWER_WAIT if self.timeout is None else self.timeout,
                    whole=True,
                )
            except BaseException:
                proto.transport.loseConnection()
                raise
            if ack.get("response") != "ack":
                proto.transport.loseConnection()
                raise ClientError(
                    f"unexpected answer to the hello for {module}: {ack.get('response')!r}"
                )
            session = AsyncSession(self, module, proto)
            if self.timeout is None:
                session.wait, session.bound = server_bound(ack)
            return session

        return defer.Deferred.fromCoroutine(run())

    def lease_request(self, operation: str, *args, timeout: float | None = None) -> defer.Deferred:
        """One request to the server's ``_lease`` service (see client.Client.lease_request)."""
        return self.com(LEASE, operation, *args, timeout=timeout)

    def lease(self, module: str, seconds: float = 600, wait: float = 0) -> AsyncLease:
        """A lease for ``async with``: taken, renewed in the background, released at the end.

        ``async with client.lease("laser", seconds=600, wait=30): ...``
        """
        return AsyncLease(self, module, seconds, wait)

    def watch(
        self, module: str, function: str, *args, every: float = 1.0, callback=None
    ) -> AsyncWatch:
        """Values of ``module.function(*args)`` as the server reads them.

        ``async for t, value in client.watch("wavemeter", "get_wavelength", every=0.1)``,
        or ``client.watch(..., callback=f)`` to have ``f(t, value)`` called
        for each.  A failed reading comes as ``(t, ServerError)``; a refused
        watch raises (or fails ``watch.done``).  ``watch.close()`` stops it.
        """
        request = {"module": module, "function": function, "args": list(args), "every": every}
        return AsyncWatch(self, request, callback)

    def watch_published(self, module: str, name: str, callback=None) -> AsyncWatch:
        """The values ``module`` publishes itself under ``name``, as ``watch`` gives them."""
        return AsyncWatch(self, {"module": module, "published": name}, callback)


class AsyncWatch:
    """A watch for Twisted programs: an async iterator, or a callback per value.

    ``started`` fires once the server took the watch; ``done`` when it ends
    (None when closed by this side, else the ServerError or ConnectionFailed).
    Values the program has not taken yet are kept up to ``KEEP`` (the
    oldest are dropped beyond, and counted in ``dropped``).
    """

    KEEP = 1000

    def __init__(self, client: AsyncClient, request: dict, callback=None) -> None:
        self.callback = callback
        self.dropped = 0
        self.closed = False
        self.done: defer.Deferred = defer.Deferred()
        self._values: collections.deque = collections.deque()
        self._next: defer.Deferred | None = None
        self._end: BaseException | None = None
        self._proto: _LineClient | None = None
        self.started = defer.Deferred.fromCoroutine(self._start(client, request))
        self.started.addErrback(self._failed)

    async def _start(self, client: AsyncClient, request: dict) -> None:
        proto = await client._connect(client.timeout)
        proto.binary = False  # a watch's values come as JSON lines
        self._proto = proto
        if self.closed:
            proto.transport.loseConnection()
            return
        await client._ask(
            proto, {"name": "_watch"}, "waiting for the watch service", client.timeout
        )
        proto.on_line = self._line
        proto.on_lost = self._lost
        proto.send(request)

    def _line(self, line: bytes) -> None:
        try:
            message = json.loads(wire.unquote_plus(line))
        except ValueError:
            return
        if "value" in message:
            self._give((message["time"], message["value"]))
        elif "time" in message:
            error = ServerError(str(message.get("error")), message.get("traceback") or "")
            self._give((message["time"], error))
        else:  # an error reply: the watch was refused or ended
            self._ended(ServerError(str(message.get("response")), message.get("traceback") or ""))

    def _give(self, item) -> None:
        if self.callback is not None:
            self.callback(*item)
            return
        waiting, self._next = self._next, None
        if waiting is not None:
            waiting.callback(item)
            return
        if len(self._values) >= self.KEEP:
            self._values.popleft()
            self.dropped += 1
        self._values.append(item)

    def _lost(self, why: str) -> None:
        self._ended(None if self.closed else ConnectionFailed(why))

    def _failed(self, failure) -> None:
        self._ended(failure.value)

    def _ended(self, error: BaseException | None) -> None:
        if self._end is not None or self.done.called:
            return
        self._end = error if error is not None else StopAsyncIteration()
        waiting, self._next = self._next, None
        if waiting is not None:
            waiting.errback(self._end)
        if error is None:
            self.done.callback(None)
        else:
            self.done.errback(error)
            self.done.addErrback(lambda _: None)  # read through done or the iterator
        if self._proto is not None:
            self._proto.transport.loseConnection()

    def close(self) -> None:
        """Stop watching."""
        if self.closed:
            return
        self.closed = True
        if self._proto is not None and not self._proto.lost:
            self._proto.send({"stop": True})
        self._ended(None)

    def __aiter__(self) -> AsyncWatch:
        return self

    def __anext__(self) -> defer.Deferred:
        if self._values:
            return defer.succeed(self._values.popleft())
        if self._end is not None:
            return defer.fail(self._end)
        self._next = defer.Deferred()
        return self._next


class AsyncLease:
    """A lease on a module held while an ``async with`` block runs (see client.Lease)."""

    def __init__(self, client: AsyncClient, module: str, seconds: float, wait: float = 0) -> None:
        self.client = client
        self.module = module
        self.seconds = seconds
        self.wait = wait
        self.info = None
        self.lost = None  # the error of a failed renewal
        self._renewer = task.LoopingCall(lambda: defer.Deferred.fromCoroutine(self._renew()))
        self._renewer.clock = client.reactor

    async def __aenter__(self) -> AsyncLease:
        await self.take()
        return self

    async def __aexit__(self, kind, value, traceback) -> None:
        try:
            await self.release()
        except ClientError:
            if kind is None:
                raise

    async def take(self) -> dict:
        """Take the lease (waiting up to ``wait`` s) and start renewing it."""
        # Without the client's timeout the server bounds the wait (its _lease answers).
        timeout = None if self.client.timeout is None else self.wait + self.client.timeout
        self.info = await self.client.lease_request(
            "take", self.module, self.seconds, self.wait, timeout=timeout
        )
        self._renewer.start(self.seconds / 3, now=False).addErrback(self._renewal_failed)
        return self.info

    async def _renew(self) -> None:
        self.info = await self.client.lease_request("renew", self.module, self.seconds)

    def _renewal_failed(self, failure) -> None:
        failure.trap(ClientError)
        self.lost = failure.value

    async def release(self) -> None:
        """Stop renewing and give the lease back."""
        if self._renewer.running:
            self._renewer.stop()
        if self.lost is None:
            await self.client.lease_request("release", self.module)


class AsyncSession:
    """Several calls to one module over one connection (see client.Session)."""

    def __init__(self, client: AsyncClient, module: str, proto: _LineClient) -> None:
        self.client = client
        self.module = module
        self._proto = proto
        # Without the client's timeout: how long the server said a call may take.
        self.wait, self.bound = UNBOUNDED, None

    def call(
        self, function: str, *args, timeout: float | None = None, keep_alive: bool = True
    ) -> defer.Deferred:
        """Call ``function(*args)`` on the module; fires with its result."""
        request = {"function": function, "args": list(args), "keep_alive": keep_alive}
        wait, bound = timeout, None
        if wait is None:
            wait = self.client.timeout
        if wait is None:
            wait, bound = self.wait, self.bound
        what = f"waiting for {self.module}.{function}()"
        return defer.Deferred.fromCoroutine(
            self.client._ask(self._proto, request, what, wait, bound)
        )

    def __getattr__(self, function: str):
        if function.startswith("_"):
            raise AttributeError(function)
        return lambda *args, timeout=None: self.call(function, *args, timeout=timeout)

    def close(self) -> None:
        """Say goodbye and close the connection."""
        self._proto.send({"function": None, "args": [], "keep_alive": False})
        self._proto.transport.loseConnection()


class AsyncLab:
    """client.Lab for Twisted programs: modules by name, on whichever server offers them.

    Looking around the network blocks (zeroconf waits for answers), so it
    runs in the reactor's thread pool; the calls themselves are AsyncClient's.
    Needs python-zeroconf (``pip install '.[discovery]'`` in modserver's checkout).
    """

    def __init__(
        self,
        wait: float | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        reactor=None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.discovery = load_discovery()
        self.wait = self.discovery.DEFAULT_WAIT if wait is None else wait
        self.timeout = timeout
        self.reactor = reactor
        # With TLS files, servers are asked and called over their TLS ports.
        self._tls_files = {"tls_ca": tls_ca, "tls_cert": tls_cert, "tls_key": tls_key}
        self._tls = client_tls(None, tls_ca, tls_cert, tls_key)
        self._finder = None

    def _in_thread(self, function, *args) -> defer.Deferred:
        pool = self.reactor.getThreadPool()
        return threads.deferToThreadPool(self.reactor, pool, function, *args)

    async def _located(self, module: str):
        if self._finder is None:  # opening zeroconf's sockets blocks too
            finder = functools.partial(self.discovery.Finder, tls=self._tls)
            finding = self.discovery.DEFAULT_TIMEOUT if self.timeout is None else self.timeout
            self._finder = await self._in_thread(finder, self.wait, finding)
        return await self._in_thread(self._finder.locate, module)

    def client(self, module: str) -> defer.Deferred:
        """Fires with an AsyncClient for the server that offers ``module``."""

        async def run():
            listing = await self._located(module)
            files = self._tls_files if self._tls is not None else {}
            return AsyncClient(listing.host, listing.port, self.timeout, self.reactor, **files)

        return defer.Deferred.fromCoroutine(run())

    def com(
        self, module: str, funcname: str = "_help", *args, timeout: float | None = None
    ) -> defer.Deferred:
        """AsyncClient.com on the server that offers ``module``."""

        async def run():
            client = await self.client(module)
            try:
                return await client.com(module, funcname, *args, timeout=timeout)
            except (ConnectionFailed, ReplyTimeout):
                self._finder.forget(module)  # it may have moved: look again next time
                raise

        return defer.Deferred.fromCoroutine(run())

    def close(self) -> defer.Deferred:
        """Stop watching the network."""
        finder, self._finder = self._finder, None
        if finder is None:
            return defer.succeed(None)
        return self._in_thread(finder.close)
