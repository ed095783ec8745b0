"""Fakes for unit tests: a reactor that spawns pretend workers, a recording client."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field

from twisted.internet import error
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from modserver.server.config import ModuleSpec
from modserver.supervision.calls import Call, CallSink
from modserver.supervision.supervisor import ModuleSupervisor, WorkerSettings
from modserver.wire import channel
from modserver.worker import platforms


class FakeProcessTransport:
    """What a worker's ProcessProtocol writes to, and signals it was sent."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.written: list[bytes] = []
        self.signals: list[str] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def writeSequence(self, data) -> None:  # noqa: N802 - Twisted's name
        self.written.extend(data)

    def signalProcess(self, name: str) -> None:  # noqa: N802 - Twisted's name
        self.signals.append(name)

    def frames(self) -> list[tuple[int, int, int, bytes]]:
        """Every frame written so far, as (kind, flags, request_id, payload)."""
        found = []
        parser = channel.FrameParser(channel.FrameCollector(lambda *f: found.append(f)))
        parser.feed(b"".join(self.written))
        return found

    def kinds(self) -> list[int]:
        return [frame[0] for frame in self.frames()]


@dataclass
class Spawned:
    protocol: object
    transport: FakeProcessTransport
    executable: str
    args: list[str]
    env: dict | None
    path: str | None

    def says(self, kind: int, message: dict) -> None:
        """The worker sends a JSON frame."""
        self.protocol.childDataReceived(1, channel.json_frame(kind, message))

    def ready(self, files=()) -> None:
        listed = [[path, "00" * 16] for path in files]
        self.says(channel.READY, {"pid": self.transport.pid, "files": listed, "load_time": 0.01})

    def load_failed(self, reason="ImportError: nope", traceback="Traceback...\n") -> None:
        self.says(channel.LOAD_FAILED, {"reason": reason, "traceback": traceback, "files": []})

    def replies(self, request_id: int, body: bytes, error: bool = False) -> None:
        flags = channel.ERROR if error else 0
        self.protocol.childDataReceived(
            1, channel.frame(channel.REPLY, body + b"\n", flags, request_id)
        )

    def calls(self) -> list[tuple[int, dict, dict]]:
        """Each CALL frame as (request_id, meta, request)."""
        found = []
        for kind, _flags, request_id, payload in self.transport.frames():
            if kind == channel.CALL:
                meta, _, request = payload.partition(b"\n")
                found.append((request_id, json.loads(meta), json.loads(request)))
        return found

    def exits(self, code: int | None = 0, signal: int | None = None) -> None:
        """The worker process ends and its channel closes."""
        if code == 0 and signal is None:
            reason = Failure(error.ProcessDone(0))
        else:
            reason = Failure(error.ProcessTerminated(exitCode=code, signal=signal))
        self.protocol.childConnectionLost(1)
        self.protocol.processExited(reason)


class FakeReactor(MemoryReactorClock):
    """A memory reactor and clock whose spawnProcess makes pretend workers."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[Spawned] = []
        self._pids = itertools.count(4000)

    def spawnProcess(self, processProtocol, executable, args=(), env=None, path=None, **kw):  # noqa: N802,N803
        transport = FakeProcessTransport(next(self._pids))
        self.spawned.append(Spawned(processProtocol, transport, executable, list(args), env, path))
        processProtocol.makeConnection(transport)
        return transport

    @property
    def last(self) -> Spawned:
        return self.spawned[-1]


@dataclass(eq=False)
class RecordingSink(CallSink):
    """A client connection that records what the supervisor tells it."""

    events: list = field(default_factory=list)

    def reply_started(self, error: bool, producer=None) -> None:
        self.events.append(("started", error))

    def reply_data(self, data: bytes) -> None:
        self.events.append(("data", data))

    def reply_finished(self, complete: bool) -> None:
        self.events.append(("finished", complete))

    @property
    def finished(self) -> bool:
        return bool(self.events) and self.events[-1][0] == "finished"

    def reply(self) -> dict:
        """The reply line received, decoded (replies here are plain JSON)."""
        data = b"".join(d for kind, d in self.events if kind == "data")
        return json.loads(data)


class GroupSignals:
    """Records process-group signals instead of sending them."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, str]] = []

    def __call__(self, pid: int, name: str) -> bool:
        self.sent.append((pid, name))
        return True


def make_supervisor(**spec_options) -> tuple[ModuleSupervisor, FakeReactor, GroupSignals]:
    reactor = FakeReactor()
    signals = GroupSignals()
    spec = ModuleSpec(name="laser", module="mymodules.laser", entry="Laser", **spec_options)
    settings = WorkerSettings(
        import_paths=("/config", "/cwd"), platform=platforms.Posix(), signal_group=signals
    )
    return ModuleSupervisor(spec, settings, reactor), reactor, signals


def make_call(
    sink=None,
    function="read",
    keep_alive=False,
    timeout=None,
    args=(),
    admin=True,
    client="10.0.0.7",
) -> Call:
    request = json.dumps({"function": function, "args": list(args), "keep_alive": keep_alive})
    return Call(
        sink=sink if sink is not None else RecordingSink(),
        request=request.encode(),
        function=function,
        keep_alive=keep_alive,
        plain=True,
        client_ip="10.0.0.7",
        client=client,
        timeout=timeout,
        admin=admin,
    )
