"""Windows supervision: Job Objects, the stop order, kill on close.

Win32 is FAKED here: there is no Windows machine to run these on.  The fake
records the calls modserver makes and models what Microsoft documents of
them: a process started by a process in a job is in that job; ending a job
ends its processes; closing the last handle to a job with
JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE ends them too; Windows closes a dead
process's handles.  The tests check modserver's decisions against that.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from twisted.logger import globalLogPublisher

from modserver.server.config import ModuleSpec
from modserver.supervision import process, winjobs
from modserver.supervision.lifecycle import State
from modserver.supervision.supervisor import ModuleSupervisor, WorkerSettings
from modserver.wire import channel
from modserver.wire.errors import ReplyError
from modserver.worker import platforms
from tests.fakes import FakeReactor, make_call
from tests.helpers import ON_WINDOWS

VENV_PYTHON = r"C:\lab\venv\Scripts\python.exe"
BASE_PYTHON = r"C:\Python313\python.exe"
PYTHON_32 = r"C:\Python37-32\python.exe"


@dataclass
class FakeJob:
    limits: int
    members: set = field(default_factory=set)
    open: bool = True
    ended_with: int | None = None


class FakeWin32:
    """The Win32 calls of modserver.winjobs, faked (no Windows here), over a
    small model of processes and jobs."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.jobs: dict[int, FakeJob] = {}
        self.running: set[int] = set()
        self.calls: list[tuple] = []
        self.on_assign = None  # a probe run at AssignProcessToJobObject
        self._handles = itertools.count(0x100, 4)

    # What modserver calls.

    def create_job(self, limit_flags: int) -> int:
        handle = next(self._handles)
        self.jobs[handle] = FakeJob(limit_flags)
        self.calls.append(("create", handle))
        return handle

    def assign(self, job: int, pid: int) -> None:
        self.calls.append(("assign", job, pid))
        if self.on_assign is not None:
            self.on_assign(pid)
        if self.refuse:
            raise OSError(5, "AssignProcessToJobObject: Access is denied.")
        self.running.add(pid)
        self.jobs[job].members.add(pid)

    def terminate(self, job: int, exit_code: int) -> None:
        self.calls.append(("terminate", job))
        self.jobs[job].ended_with = exit_code
        self._end(self.jobs[job])

    def close(self, handle: int) -> None:
        self.calls.append(("close", handle))
        job = self.jobs[handle]
        job.open = False
        if job.limits & winjobs.KILL_ON_JOB_CLOSE:
            self._end(job)

    # The rest of the model.

    def start_child(self, parent: int, child: int) -> None:
        """``parent`` starts ``child``, which is born in the jobs of its parent."""
        self.running.add(child)
        for job in self.jobs.values():
            if parent in job.members and job.open:
                job.members.add(child)

    def server_ends(self) -> None:
        """The server dies (Task Manager): Windows closes every handle it held."""
        for handle, job in self.jobs.items():
            if job.open:
                self.close(handle)

    def job_of(self, pid: int) -> int:
        (handle,) = [h for h, job in self.jobs.items() if pid in job.members and job.open]
        return handle

    def _end(self, job: FakeJob) -> None:
        self.running -= job.members


def windows_supervisor(win32=None, name="laser", reactor=None, python=PYTHON_32, **options):
    win32 = win32 or FakeWin32()
    reactor = reactor or FakeReactor()
    jobs = winjobs.JobObjects(win32, executable=VENV_PYTHON, base_executable=BASE_PYTHON)
    settings = WorkerSettings(platform=platforms.Windows(jobs=jobs), kill_grace=2.0)
    spec = ModuleSpec(name=name, module="mymodules.laser", entry="Laser", python=python, **options)
    return ModuleSupervisor(spec, settings, reactor), reactor, win32


def ready(supervisor, reactor):
    supervisor.start()
    reactor.last.ready()
    return reactor.last.transport.pid


# Job creation ------------------------------------------------------------------------------


def test_each_worker_gets_a_job_of_its_own_that_ends_it_when_the_handle_closes():
    win32 = FakeWin32()
    reactor = FakeReactor()
    laser, _, _ = windows_supervisor(win32, "laser", reactor)
    stage, _, _ = windows_supervisor(win32, "stage", reactor)
    laser_pid, stage_pid = ready(laser, reactor), ready(stage, reactor)
    assert win32.job_of(laser_pid) != win32.job_of(stage_pid)
    for job in win32.jobs.values():
        assert job.limits & winjobs.KILL_ON_JOB_CLOSE
        assert job.limits & winjobs.DIE_ON_UNHANDLED_EXCEPTION  # no error dialog to hang on
    assert win32.running == {laser_pid, stage_pid}


def test_the_worker_is_in_its_job_before_it_is_told_what_to_load():
    """Nothing the module starts can be born outside the job."""
    win32 = FakeWin32()
    supervisor, reactor, _ = windows_supervisor(win32)
    written_at_assign = []
    win32.on_assign = lambda pid: written_at_assign.append(list(reactor.last.transport.written))
    supervisor.start()
    assert written_at_assign == [[]]  # no LOAD frame yet
    assert reactor.last.transport.kinds() == [channel.LOAD]


def test_the_servers_own_venv_launcher_is_bypassed():
    """A venv's python.exe runs the real interpreter as its child (maybe outside the job)."""
    supervisor, reactor, _ = windows_supervisor(python=VENV_PYTHON, env={"DLL_PATH": "C:/x"})
    supervisor.start()
    spawned = reactor.last
    assert spawned.executable == BASE_PYTHON and spawned.args[0] == BASE_PYTHON
    assert spawned.args[1:] == ["-u", supervisor.settings.script, "laser"]
    assert spawned.env["__PYVENV_LAUNCHER__"] == VENV_PYTHON
    assert spawned.env["DLL_PATH"] == "C:/x"


def test_other_interpreters_are_run_as_configured():
    supervisor, reactor, _ = windows_supervisor(python=PYTHON_32)
    supervisor.start()
    assert reactor.last.executable == PYTHON_32 and reactor.last.env is None
    jobs = winjobs.JobObjects(FakeWin32(), executable=BASE_PYTHON, base_executable=BASE_PYTHON)
    assert jobs.interpreter(BASE_PYTHON, [BASE_PYTHON], None) == (BASE_PYTHON, [BASE_PYTHON], None)


@pytest.mark.skipif(ON_WINDOWS, reason="pywin32 is a dependency on Windows, always installed")
def test_without_pywin32_no_worker_is_started_to_be_lost():
    """This machine has no pywin32: the real Win32 adapter cannot load."""
    reactor = FakeReactor()
    with pytest.raises(ImportError):
        winjobs.JobObjects().spawn(reactor, None, PYTHON_32, [PYTHON_32], None, None)
    assert reactor.spawned == []


def test_a_job_left_under_a_reused_pid_is_ended_first():
    win32 = FakeWin32()
    jobs = winjobs.JobObjects(win32)
    assert jobs.adopt(4000) and jobs.adopt(4000)
    first, second = (h for h, _ in sorted(win32.jobs.items()))
    assert not win32.jobs[first].open and win32.jobs[second].open
    assert jobs.pids == [4000]


# The stop order ------------------------------------------------------------------------------


def test_stop_is_the_stop_message_then_after_the_grace_the_end_of_the_job():
    supervisor, reactor, win32 = windows_supervisor()
    pid = ready(supervisor, reactor)
    job = win32.job_of(pid)
    done = supervisor.stop(ReplyError("ServerStopping", "bye"))
    assert reactor.last.transport.kinds()[-1] == channel.STOP
    reactor.advance(4.9)
    assert ("terminate", job) not in win32.calls
    reactor.advance(0.1)
    assert ("terminate", job) in win32.calls and ("close", job) in win32.calls
    assert win32.jobs[job].ended_with == winjobs.KILLED_EXIT_CODE
    assert reactor.last.transport.signals == []  # no SIGTERM step: Windows has none
    reactor.advance(10)
    assert win32.calls.count(("terminate", job)) == 1
    reactor.last.exits(code=winjobs.KILLED_EXIT_CODE)
    assert done.called and supervisor.state is State.STOPPED
    assert pid not in win32.running


def test_without_windows_jobs_a_stuck_stop_ends_in_a_kill_not_sigterm():
    """Portable mode: the same order, TerminateProcess's stand-in being SIGKILL."""
    reactor = FakeReactor()
    settings = WorkerSettings(platform=platforms.Portable())
    spec = ModuleSpec(name="laser", module="mymodules.laser", entry="Laser")
    supervisor = ModuleSupervisor(spec, settings, reactor)
    ready(supervisor, reactor)
    supervisor.stop(ReplyError("ServerStopping", "bye"))
    reactor.advance(settings.stop_grace)
    assert reactor.last.transport.signals == ["KILL"]
    reactor.advance(settings.kill_grace)
    assert reactor.last.transport.signals == ["KILL"]


def test_a_worker_that_stops_in_time_has_what_it_started_ended_with_it():
    supervisor, reactor, win32 = windows_supervisor()
    pid = ready(supervisor, reactor)
    win32.start_child(pid, 7000)  # spbicl.exe
    job = win32.job_of(pid)
    supervisor.stop(ReplyError("ServerStopping", "bye"))
    reactor.last.exits(code=0)  # it called __exit__ and left
    assert win32.running == set()
    assert win32.calls[-2:] == [("terminate", job), ("close", job)]
    assert supervisor.settings.platform.jobs.pids == []  # no handle kept


def test_a_call_that_times_out_ends_the_workers_job():
    supervisor, reactor, win32 = windows_supervisor(timeout=2.0)
    pid = ready(supervisor, reactor)
    win32.start_child(pid, 7000)
    supervisor.submit(make_call())
    reactor.advance(2.0)
    assert not win32.running  # the worker and its child, at once
    reactor.last.exits(code=winjobs.KILLED_EXIT_CODE)
    assert supervisor.state is State.STARTING  # a fresh worker, in a fresh job
    assert win32.job_of(reactor.last.transport.pid)


# Kill on close ------------------------------------------------------------------------------


def test_nothing_outlives_a_server_ended_from_task_manager():
    win32 = FakeWin32()
    reactor = FakeReactor()
    laser, _, _ = windows_supervisor(win32, "laser", reactor)
    stage, _, _ = windows_supervisor(win32, "stage", reactor)
    laser_pid, stage_pid = ready(laser, reactor), ready(stage, reactor)
    win32.start_child(laser_pid, 7000)
    win32.start_child(7000, 7001)  # a grandchild of the worker
    laser.submit(make_call())  # busy: no stop message will ever be read
    assert win32.running == {laser_pid, stage_pid, 7000, 7001}
    win32.server_ends()
    assert win32.running == set()


# When Windows refuses a job --------------------------------------------------------------------


def test_a_refused_job_is_logged_and_the_worker_is_ended_on_its_own():
    win32 = FakeWin32(refuse=True)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        supervisor, reactor, _ = windows_supervisor(win32, timeout=1.0)
        ready(supervisor, reactor)
    finally:
        globalLogPublisher.removeObserver(events.append)
    (warning,) = [e for e in events if "Job Object" in e.get("log_format", "")]
    assert "Access is denied" in str(warning["reason"])
    assert all(not job.open for job in win32.jobs.values())  # nothing leaked
    supervisor.submit(make_call())
    reactor.advance(1.0)
    assert reactor.last.transport.signals == ["KILL"]  # TerminateProcess, through Twisted


def test_windows_signals_nothing_it_has_no_job_for():
    windows = platforms.Windows(jobs=winjobs.JobObjects(FakeWin32()))
    assert windows.signal_group(4242, "KILL") is False


# Reading the channel ------------------------------------------------------------------------------


class PipelessTransport:
    """Twisted's Windows process transport polls all its pipes together: no ``pipes``."""

    pid = 4000

    def __init__(self) -> None:
        self.calls = []

    def pauseProducing(self):  # noqa: N802 - Twisted's name
        self.calls.append("pause")

    def resumeProducing(self):  # noqa: N802 - Twisted's name
        self.calls.append("resume")


@pytest.mark.parametrize("closed", [False, True])
def test_a_slow_client_pauses_the_whole_windows_transport(closed):
    supervisor, _, _ = windows_supervisor()
    worker = process.WorkerProcess(supervisor)
    worker.makeConnection(PipelessTransport())
    worker.channel_closed = closed
    worker.pauseProducing()
    worker.resumeProducing()
    assert worker.transport.calls == ["pause", "resume"]  # its exit is polled with its pipes
