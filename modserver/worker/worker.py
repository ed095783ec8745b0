"""The worker child: imports one module, makes its instance, serves calls.

Run by the server as ``python -u worker.py NAME``; speaks frames (see
wire/channel.py) with the server over what were its stdin and stdout.

Standard-library only and Python 3.7 syntax: a module may need another
interpreter (a 32-bit one for a vendor DLL), which has neither Twisted nor
this package installed.  The package files it needs (wire/codec.py,
wire/channel.py, wire/binary.py, and budget.py and platforms.py beside it)
are loaded by path; what differs between POSIX and Windows is asked of
platforms.py.
"""

from __future__ import annotations

import faulthandler
import importlib
import importlib.util
import json
import logging
import os
import signal
import site
import sys
import sysconfig
import threading
import time
import traceback

try:  # BLAKE2 without loading OpenSSL (hashlib's import costs 4 MB of memory)
    from _blake2 import blake2b
except ImportError:
    from hashlib import blake2b

_HERE = os.path.dirname(os.path.abspath(__file__))
_PACKAGE = os.path.dirname(_HERE)

# After the server's end of the channel closes while a call runs, how long
# the call may go on before the worker leaves anyway: a worker must never be
# orphaned holding hardware.
ORPHAN_GRACE = 1.0

EXIT_STOPPED = 0
EXIT_LOAD_FAILED = 3
EXIT_ORPHANED = 4

_MISSING = object()


def _own_file(where: str) -> str:
    """One of the package's files this worker runs, as ``"folder/name"``."""
    return os.path.join(_PACKAGE, *where.split("/")) + ".py"


def _load_sibling(where: str):
    """A stdlib-only file of the package, loaded by path (not as ``modserver.*``)."""
    spec = importlib.util.spec_from_file_location(
        "_modserver_" + where.rsplit("/", 1)[-1], _own_file(where)
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Everything the worker runs of the package: these files, nothing else.
_SIBLINGS = ("wire/codec", "wire/channel", "wire/binary", "worker/budget", "worker/platforms")
wire = _load_sibling("wire/codec")
channel = _load_sibling("wire/channel")
binary = _load_sibling("wire/binary")
budget = _load_sibling("worker/budget")
platforms = _load_sibling("worker/platforms")
PLATFORM = platforms.current()  # the server sets MODSERVER_PLATFORM if it differs

# Log records a module may send per second (and at once); beyond that they
# are counted and the count is reported every few seconds instead.
# Frames longer than this are read into a bytearray (array arguments are views of it).
BIG_FRAME = 64 * 1024

LOG_RATE = 200
LOG_BURST = 1000
LOG_REPORT_EVERY = 5.0


class BadRequest(Exception):
    """The request cannot be served by this module (the module was not called)."""


class WorkerStopped(Exception):
    """The worker was told to stop (SIGTERM) while a call ran."""


class ReplyTooLarge(Exception):
    """The encoded reply is longer than the server accepts."""


def protect_channel() -> tuple[int, int]:
    """Move the channel off fds 0 and 1; point fd 1 at fd 2 (the log).

    Module code that prints, and C code that writes to fd 1, then ends up in
    the server's log instead of corrupting the channel.
    """
    channel_in, channel_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    PLATFORM.channel_moved(channel_in, channel_out)
    return channel_in, channel_out


class Channel:
    """The worker's end of the channel: frames in (read by the main thread), locked writes."""

    def __init__(self, fd_in: int, fd_out: int) -> None:
        self._fd_in = fd_in
        self._in = os.fdopen(fd_in, "rb")
        self._out = os.fdopen(fd_out, "wb")
        self._lock = threading.Lock()
        self._inbox = None  # a queue, where a reader thread must read for us
        self.closed = threading.Event()

    def read_frame(self):
        """Block for one frame: ``(kind, flags, request_id, payload)`` or None at EOF."""
        head = self._in.read(channel.HEADER.size)
        if len(head) < channel.HEADER.size:
            return None
        kind, flags, request_id, length = channel.HEADER.unpack(head)
        if length <= BIG_FRAME:
            payload = self._in.read(length)
            got = len(payload)
        else:  # into a bytearray: array arguments are views of it, and writable
            payload = bytearray(length)
            got = self._in.readinto(payload)
        if got < length:
            return None
        return kind, flags, request_id, payload

    def watch(self) -> None:
        """Notice the server going away even while a call keeps the main thread.

        Where a thread can wait for the channel's hang-up alone (poll), the
        main thread reads frames itself (no hand-over per call); elsewhere
        (Windows) a thread reads every frame and queues it.
        """
        if PLATFORM.watches_hangups:
            threading.Thread(target=self._wait_for_hangup, name="hangup", daemon=True).start()
        else:
            import queue

            self._inbox = queue.Queue()
            threading.Thread(target=self._read_forever, name="channel", daemon=True).start()

    def next_frame(self):
        """The next frame from the server, or None once it is gone."""
        if self._inbox is not None:
            return self._inbox.get()
        frame = self.read_frame()
        if frame is None:
            self.closed.set()
        return frame

    def _wait_for_hangup(self) -> None:
        PLATFORM.wait_for_hangup(self._fd_in)
        self.closed.set()

    def _read_forever(self) -> None:
        while True:
            frame = self.read_frame()
            self._inbox.put(frame)
            if frame is None:
                self.closed.set()
                return

    def send(self, kind, payload=b"", flags=0, request_id=0, tail=b"") -> None:
        """Write one frame; ``tail`` is appended without copying ``payload``."""
        head = channel.header(kind, len(payload) + len(tail), flags, request_id)
        with self._lock:
            self._out.write(head)
            self._out.write(payload)
            if tail:
                self._out.write(tail)
            self._out.flush()

    def send_pieces(self, kind, pieces, flags=0, request_id=0) -> None:
        """Write one frame made of ``pieces`` (buffers: written as they are, not joined)."""
        length = sum(memoryview(piece).nbytes for piece in pieces)
        head = channel.header(kind, length, flags, request_id)
        with self._lock:
            self._out.write(head)
            for piece in pieces:
                self._out.write(piece)
            self._out.flush()

    def send_json(self, kind, obj, flags=0, request_id=0) -> None:
        self.send(kind, json.dumps(obj).encode("utf-8"), flags, request_id)


class ChannelLogHandler(logging.Handler):
    """Forwards logging records to the server as LOG frames, within a budget."""

    def __init__(self, chan: Channel, module_name: str) -> None:
        logging.Handler.__init__(self)
        self._chan = chan
        self._module_name = module_name
        self._budget = budget.Budget(LOG_RATE, LOG_BURST)
        self._reported = time.time()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            now = time.time()
            if not self._budget.take(now):
                if now - self._reported >= LOG_REPORT_EVERY:
                    self.report_dropped(now)
                return
            if self._budget.refused:
                self.report_dropped(now)
            self._send(
                record.name,
                record.levelno,
                record.levelname,
                record.getMessage(),
                record.created,
                self._exc_text(record),
            )
        except Exception:
            self.handleError(record)

    def report_dropped(self, now=None) -> None:
        """Say how many records the budget held back since the last report."""
        now = time.time() if now is None else now
        count, _ = self._budget.tally()
        self._reported = now
        if count:
            message = (
                "log flood: %d records of %s were not sent in the last %.1f s "
                "(more than %d a second)" % (count, self._module_name, LOG_REPORT_EVERY, LOG_RATE)
            )
            self._send("modserver.worker", logging.WARNING, "WARNING", message, now, "")

    def _send(self, logger, level, levelname, message, created, exc_text) -> None:
        event = {
            "module": self._module_name,
            "logger": logger,
            "level": level,
            "levelname": levelname,
            "message": message,
            "time": created,
            "exc_text": exc_text,
        }
        self._chan.send_json(channel.LOG, event)

    def _exc_text(self, record) -> str:
        if record.exc_info:
            return "".join(traceback.format_exception(*record.exc_info))
        return record.exc_text or ""


def _library_dirs() -> list[str]:
    """Directories whose files are not the user's own (stdlib, site-packages)."""
    dirs = set(filter(None, sysconfig.get_paths().values()))
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix}:
        dirs.add(os.path.join(prefix, "lib"))
        dirs.add(os.path.join(prefix, "Lib"))
    try:
        dirs.update(site.getsitepackages())
        dirs.add(site.getusersitepackages())
    except AttributeError:
        pass  # an old virtualenv's site module
    return [os.path.normcase(os.path.abspath(d)) + os.sep for d in dirs]


def _pythonpath_dirs(import_paths=()) -> list:
    """PYTHONPATH's directories (a module's ``env`` may set it), but for the
    server's import paths: packages reached through them (a vendor's
    pyserial) are libraries, not the user's files."""
    own = {os.path.normcase(os.path.abspath(p)) for p in import_paths}
    found = []
    for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if entry:
            directory = os.path.normcase(os.path.abspath(entry))
            if directory not in own:
                found.append(directory + os.sep)
    return found


def module_tree(import_path: str):
    """Where the module's own code is: its top-level package's directory (with
    a separator at the end), or its file; None if that cannot be found."""
    origin = _module_origin(import_path.split(".")[0])
    if not origin or not os.path.isfile(origin):
        return None
    origin = os.path.normcase(os.path.abspath(origin))
    if os.path.basename(origin).startswith("__init__."):
        return os.path.dirname(origin) + os.sep
    return origin


# The worker's own files: never the user's, wherever the package lives.
_OWN_FILES = {os.path.normcase(_own_file(where)) for where in ("worker/worker",) + _SIBLINGS}


def _source_file(path):
    """The .py file for a module's ``__file__`` where there is one."""
    if not path:
        return None
    path = os.path.abspath(path)
    if path.endswith((".pyc", ".pyo")):
        if os.path.basename(os.path.dirname(path)) == "__pycache__":
            base = os.path.basename(path).split(".")[0] + ".py"
            candidate = os.path.join(os.path.dirname(os.path.dirname(path)), base)
        else:
            candidate = path[:-1]
        if os.path.isfile(candidate):
            return candidate
    return path if os.path.isfile(path) else None


def user_files(paths, import_paths=(), own_tree=None) -> list:
    """The given files that belong to the user's tree, each once and sorted,
    as ``[path, digest]``: what the server watches for changes, and a hash
    of the content that was imported (BLAKE2b, 16 bytes, in hex: the same
    as the server's watcher computes).

    Not the user's: the standard library, site-packages, and what is reached
    through PYTHONPATH (``import_paths`` excepted), unless it is the
    module's ``own_tree`` (module_tree).
    """
    libraries = tuple(_library_dirs())
    elsewhere = tuple(_pythonpath_dirs(import_paths))
    found = set()
    for path in paths:
        path = _source_file(path)
        if not path or os.path.normcase(path) in _OWN_FILES:
            continue
        name = os.path.normcase(path)
        if name.startswith(libraries):
            continue
        if name.startswith(elsewhere) and not (own_tree and name.startswith(own_tree)):
            continue
        found.add(path)
    files = []
    for path in sorted(found):
        try:
            with open(path, "rb") as stream:
                content = stream.read()
        except OSError:
            continue
        files.append([path, blake2b(content, digest_size=16).hexdigest()])
    return files


def _traceback_files(exc) -> list[str]:
    files = [frame.filename for frame in traceback.extract_tb(exc.__traceback__)]
    if isinstance(exc, SyntaxError) and exc.filename:
        files.append(exc.filename)
    return files


def _module_origin(import_path: str):
    try:
        spec = importlib.util.find_spec(import_path)
    except Exception:
        return None
    return spec.origin if spec is not None else None


def _machinery(frame) -> bool:
    """Frames of the worker and of the import system, not of the module."""
    filename = frame.f_code.co_filename
    # By module name too: a standard library shipped compiled (Windows'
    # embeddable Python) names its files relatively ("importlib\\__init__.py").
    module = frame.f_globals.get("__name__", "")
    return (
        filename == __file__
        or filename.startswith("<frozen importlib")
        or module == "importlib"
        or module.startswith("importlib.")
        or os.path.normcase(os.path.dirname(filename)) == _IMPORTLIB_DIR
    )


_IMPORTLIB_DIR = os.path.normcase(os.path.dirname(importlib.__file__))


def module_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` from the module's first frame on.

    The worker's and the import system's frames say nothing to the person
    reading the error; an error raised by the worker itself keeps just its
    type and message.
    """
    tb = exc.__traceback__
    while tb is not None and _machinery(tb.tb_frame):
        tb = tb.tb_next
    if tb is None:
        return "".join(traceback.format_exception_only(type(exc), exc))
    return "".join(traceback.format_exception(type(exc), exc, tb))


def static_attribute(obj, name: str, default=None):
    """``name`` of ``obj`` as stored, without running properties or __getattr__.

    (``inspect.getattr_static``, cut down: inspect costs 2.5 MB to import.)
    """
    instance_dict = getattr(obj, "__dict__", None)
    for klass in type(obj).__mro__:
        if name in vars(klass):
            found = vars(klass)[name]
            is_data = hasattr(type(found), "__set__") or hasattr(type(found), "__delete__")
            if is_data or not isinstance(instance_dict, dict) or name not in instance_dict:
                return found
            break
    if isinstance(instance_dict, dict) and name in instance_dict:
        return instance_dict[name]
    return default


def argument_problem(method, args):
    """What is wrong with calling ``method(*args)``, counting the client's arguments
    only (not ``self``): `` (nm) takes 1 argument but 2 were given``; None if they fit."""
    import inspect  # only for this error: it is large

    try:
        signature = inspect.signature(method)
        signature.bind(*args)
    except ValueError:
        return None  # no signature to read (some C functions)
    except TypeError:
        pass
    else:
        return None
    empty, every = inspect.Parameter.empty, list(signature.parameters.values())
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = [p for p in every if p.kind in kinds]
    required = sum(1 for p in params if p.default is empty)
    varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in every)
    if required <= len(args) and (varargs or len(args) <= len(params)):
        keywords = [p.name for p in every if p.kind is p.KEYWORD_ONLY and p.default is empty]
        return "%s needs the keyword argument%s %s, which clients cannot pass" % (
            signature,
            "" if len(keywords) == 1 else "s",
            ", ".join(keywords),
        )
    if varargs:
        takes = "at least %d" % required
    elif required == len(params):
        takes = "%d" % required
    else:
        takes = "%d to %d" % (required, len(params))
    return "%s takes %s argument%s but %d %s given" % (
        signature,
        takes,
        "" if takes in ("1", "at least 1") else "s",
        len(args),
        "was" if len(args) == 1 else "were",
    )


def generated_help(instance, name: str, dispatch) -> str:
    """One line per public method: name, signature, first docstring line."""
    import inspect  # only for help: it is large

    lines = ["%s: calls take positional arguments only." % name]
    if dispatch:
        lines.append("Calls go through %s(client_ip, function, *args)." % dispatch)
    for attr in sorted(dir(instance)):
        if attr.startswith("_"):
            continue
        raw = inspect.getattr_static(instance, attr, None)
        if isinstance(raw, (staticmethod, classmethod)) or inspect.isfunction(raw):
            method = getattr(instance, attr)
        elif callable(raw) and not inspect.isclass(raw):
            method = raw
        else:
            continue  # properties and data: reading them might touch hardware
        try:
            signature = str(inspect.signature(method))
        except (TypeError, ValueError):
            signature = "(...)"
        doc = (inspect.getdoc(method) or "").strip().splitlines()
        lines.append(attr + signature + (" - " + doc[0] if doc else ""))
    return "\n".join(lines)


class Worker:
    """One loaded module and the loop that serves its calls."""

    def __init__(self, chan: Channel, job: dict) -> None:
        self.chan = chan
        self.job = job
        self.name = job["name"]
        self.dispatch = job.get("dispatch")
        self.max_reply = job.get("max_reply") or channel.MAX_FRAME
        self.module = None
        self.instance = None

    def load(self) -> bool:
        """Import the module and make its instance; report READY or LOAD_FAILED."""
        sys.path[:0] = self.job.get("paths", [])
        started = time.time()
        try:
            self.module = importlib.import_module(self.job["module"])
            entry = getattr(self.module, self.job["entry"], None)
            if entry is None or not callable(entry):
                raise AttributeError(
                    'module "%s" has no class or function "%s"'
                    % (self.job["module"], self.job["entry"])
                )
            self.instance = entry()
            if self.dispatch and not callable(getattr(self.instance, self.dispatch, None)):
                raise AttributeError(
                    '%s has no dispatch method "%s"' % (type(self.instance).__name__, self.dispatch)
                )
        except BaseException as exc:
            files = self._loaded_files() + _traceback_files(exc)
            files.append(_module_origin(self.job["module"]))
            self.chan.send_json(
                channel.LOAD_FAILED,
                {
                    "reason": wire.exception_reason(exc),
                    "traceback": module_traceback(exc),
                    "files": self._user_files(files),
                },
            )
            return False
        self.chan.send_json(
            channel.READY,
            {
                "pid": os.getpid(),
                "files": self._user_files(self._loaded_files()),
                "load_time": time.time() - started,
                "python": sys.version.split()[0],
                "executable": sys.executable,
            },
        )
        return True

    def _loaded_files(self) -> list[str]:
        return [getattr(m, "__file__", None) for m in list(sys.modules.values())]

    def _user_files(self, paths) -> list:
        tree = module_tree(self.job["module"])
        return user_files(paths, self.job.get("paths", ()), tree)

    def serve(self) -> int:
        """Serve frames until told to stop or the channel closes; the exit code."""
        try:
            while not _terminating.is_set():
                frame = self.chan.next_frame()
                if frame is None or frame[0] == channel.STOP:
                    break
                kind, flags, request_id, payload = frame
                if kind == channel.CALL:
                    self.call(flags, request_id, payload)
        except SystemExit:
            pass  # SIGTERM while idle
        self.close()
        return EXIT_STOPPED

    def call(self, flags: int, request_id: int, payload: bytes) -> None:
        """Run one request and send its reply, whatever happens."""
        plain = bool(flags & channel.PLAIN)
        function = None
        try:
            request, meta = self.read_request(payload)
            function = request.get("function")
            args = request.get("args") or []
            result = self.invoke(function, args, meta.get("client", ""))
            if flags & channel.BINARY:
                pieces = self.encode_binary(function, result, plain)
                self.chan.send_pieces(channel.REPLY, pieces, self._flags(plain), request_id)
                return
            body = self.encode(function, result, plain)
        except BadRequest as exc:
            self.reply_error(request_id, plain, exc, wire.exception_reason(exc) + "\n")
        except SystemExit as exc:
            error = self._stopped(function) if _terminating.is_set() else exc
            self.reply_error(request_id, plain, error, module_traceback(error))
        except BaseException as exc:
            self.reply_error(request_id, plain, exc, module_traceback(exc))
        else:
            self.chan.send(channel.REPLY, body, self._flags(plain), request_id, b"\n")

    def read_request(self, payload):
        """``(request, meta)`` of a CALL payload: the meta line, the request's
        JSON, and after it (``request_bytes`` in the meta says where it ends)
        the binary segments its ``segments`` key lists, in order."""
        end = payload.index(b"\n")
        meta = json.loads(bytes(payload[:end]))
        size = meta.get("request_bytes")
        if size is None:
            return json.loads(bytes(payload[end + 1 :])), meta
        view = memoryview(payload)
        text = bytes(view[end + 1 : end + 1 + size])
        segments = view[end + 1 + size :]
        if isinstance(payload, bytes):  # a small frame: copied, so arrays are writable
            segments = bytearray(segments)
        sizes = json.loads(text).get("segments") or []
        try:
            return binary.loads(text, sizes, segments, self._rebuild()), meta
        except binary.BinaryError as exc:
            raise BadRequest(str(exc)) from None

    def _rebuild(self):
        """numpy arrays for array arguments, or RawArray where numpy cannot be imported."""
        try:
            import numpy
        except ImportError:
            return binary.raw_rebuild
        return binary.numpy_rebuild(numpy)

    def encode_binary(self, function, result, plain: bool) -> list:
        """The pieces of a binary reply: its line, then its segments."""
        try:
            line, segments = binary.encode_reply(result, None if plain else wire.quote_plus)
        except (TypeError, ValueError, RecursionError) as exc:
            raise TypeError(
                "%s.%s returned a value of type %s that cannot be sent: %s"
                % (self.name, function, type(result).__name__, exc)
            ) from None
        size = len(line) + sum(memoryview(s).nbytes for s in segments)
        if size > self.max_reply:
            raise ReplyTooLarge(
                "the reply of %s.%s is %d bytes with its binary segments, over the "
                "server's limit of %d bytes" % (self.name, function, size, self.max_reply)
            )
        return [line] + segments

    def _stopped(self, function) -> WorkerStopped:
        return WorkerStopped("%s was told to stop (SIGTERM) during %s()" % (self.name, function))

    def invoke(self, function, args, client_ip):
        """Call the module; its exceptions propagate with its own frames first."""
        if function == "_help":
            module_help = getattr(self.module, "_help", None)
            if callable(module_help):
                return module_help()
            return generated_help(self.instance, self.name, self.dispatch)
        if self.dispatch:
            return getattr(self.instance, self.dispatch)(client_ip, function, *args)
        method = self.method(function)
        try:
            return method(*args)
        except TypeError as exc:
            # Raised by the call itself (no frame of the method's): the
            # arguments do not fit, and Python's message counts ``self``.
            problem = None if exc.__traceback__.tb_next else argument_problem(method, args)
            if problem is None:
                raise
            raise TypeError("%s.%s%s" % (self.name, function, problem)) from None

    def method(self, function):
        """The public method ``function`` of the instance, or BadRequest."""
        if not isinstance(function, str) or function.startswith("_"):
            raise BadRequest(
                '"%s" is private: only public methods of %s can be called' % (function, self.name)
            )
        raw = static_attribute(self.instance, function, _MISSING)
        if raw is _MISSING and not hasattr(self.instance, function):
            raise BadRequest('%s has no function "%s" (case matters)' % (self.name, function))
        if isinstance(raw, property):
            raise BadRequest('"%s" of %s is a property, not a function' % (function, self.name))
        method = getattr(self.instance, function)
        if not callable(method):
            raise BadRequest('"%s" of %s is not a function' % (function, self.name))
        return method

    def encode(self, function, result, plain: bool) -> bytes:
        try:
            body = wire.reply_body(result, plain=plain)
        except (TypeError, ValueError, RecursionError) as exc:
            raise TypeError(
                "%s.%s returned a value of type %s that cannot be sent as JSON (%s)"
                % (self.name, function, type(result).__name__, exc)
            ) from None
        if len(body) + 1 > self.max_reply:
            raise ReplyTooLarge(
                "the reply of %s.%s is %d bytes, over the server's limit of %d bytes"
                % (self.name, function, len(body) + 1, self.max_reply)
            )
        return body

    def reply_error(self, request_id: int, plain: bool, exc, text: str) -> None:
        body = wire.reply_body(wire.exception_reason(exc), True, text, plain)
        flags = self._flags(plain) | channel.ERROR
        self.chan.send(channel.REPLY, body, flags, request_id, b"\n")

    def _flags(self, plain: bool) -> int:
        return channel.PLAIN if plain else 0

    def close(self) -> None:
        """Leave the hardware tidy: the instance's ``__exit__`` if it has one."""
        exit_method = getattr(self.instance, "__exit__", None)
        if exit_method is None:
            return
        try:
            exit_method(None, None, None)
        except BaseException as exc:
            self._log_exit_failure(exc)

    def _log_exit_failure(self, exc: BaseException) -> None:
        """Log a failed ``__exit__`` as the module's own logger would, with its frames."""
        logger = logging.getLogger(self.job["module"])
        message = "%s.__exit__ failed: %s" % (
            type(self.instance).__name__,
            wire.exception_reason(exc),
        )
        record = logger.makeRecord(logger.name, logging.ERROR, "", 0, message, None, None)
        record.exc_text = module_traceback(exc)
        logger.handle(record)


_terminating = threading.Event()

PUBLISH_MODULE = "modserver_worker"


def _json_default(value):
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars, array.array
    if tolist is not None and callable(tolist):
        return tolist()
    raise TypeError("values of type %r cannot be published as JSON" % type(value).__name__)


def install_publish(chan: Channel) -> None:
    """Make ``import modserver_worker; modserver_worker.publish(name, value)`` work.

    A module calls it from any thread (a vendor SDK's callback, its own
    reading loop); clients watching ``{"module": M, "published": name}``
    get each value.  It raises TypeError for a value JSON cannot carry.
    """
    import types

    module = types.ModuleType(PUBLISH_MODULE, "Publishing values from a modserver worker.")

    def publish(name, value) -> None:
        """Send ``value`` to every client watching this module's ``name``."""
        if not isinstance(name, str) or not name:
            raise TypeError("publish() needs a non-empty string name, not %r" % (name,))
        payload = json.dumps(
            {"name": name, "value": value, "time": time.time()}, default=_json_default
        ).encode("utf-8")
        chan.send(channel.PUBLISH, payload)

    module.publish = publish
    sys.modules[PUBLISH_MODULE] = module


def _on_sigterm(signum, frame) -> None:
    """SIGTERM (our stop escalation, or a service manager): leave tidily.

    Raised in the main thread: an idle worker stops waiting and calls the
    instance's ``__exit__``; a call in progress ends with an error reply,
    then the worker leaves the same way.
    """
    _terminating.set()
    raise SystemExit(EXIT_STOPPED)


def _leave_if_orphaned(chan: Channel) -> None:
    """Thread body: once the server is gone, exit even if a call is stuck."""
    chan.closed.wait()
    time.sleep(ORPHAN_GRACE)
    PLATFORM.end_own_group(kill_self=True)
    os._exit(EXIT_ORPHANED)


def _set_up_process() -> None:
    PLATFORM.leave_server_group()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the server
    signal.signal(signal.SIGTERM, _on_sigterm)
    faulthandler.enable()  # a crash in C code leaves a Python traceback in the log


def _set_up_logging(chan: Channel, job: dict) -> ChannelLogHandler:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = ChannelLogHandler(chan, job["name"])
    root.addHandler(handler)
    root.setLevel(job.get("log_level", logging.INFO))
    return handler


def main() -> int:
    if sys.path and os.path.abspath(sys.path[0] or ".") == _HERE:
        del sys.path[0]  # our own directory must not shadow the user's modules
    # A .pyc is trusted if mtime (whole seconds) and size match: a module
    # saved twice within a second at the same size would reload stale code.
    sys.dont_write_bytecode = True
    fd_in, fd_out = protect_channel()
    _set_up_process()
    chan = Channel(fd_in, fd_out)
    first = chan.read_frame()
    if first is None or first[0] != channel.LOAD:
        return EXIT_ORPHANED
    job = json.loads(first[3])
    log_handler = _set_up_logging(chan, job)
    chan.watch()
    threading.Thread(target=_leave_if_orphaned, args=(chan,), daemon=True).start()
    install_publish(chan)
    worker = Worker(chan, job)
    if not worker.load():
        return EXIT_LOAD_FAILED
    code = worker.serve()
    log_handler.report_dropped()
    return code


if __name__ == "__main__":
    code = main()
    logging.shutdown()
    sys.stderr.flush()
    PLATFORM.end_own_group()  # what the module started leaves with it
    os._exit(code)  # do not wait for threads the module left running
