"""Windows: each worker, and everything it starts, in a Job Object of its own.

Windows has neither process groups nor signals: Twisted's ``signalProcess``
is TerminateProcess, which ends the worker and leaves what it started (a
vendor's helper program, spbicl.exe) running and holding the instrument.
A Job Object takes their place: ending the job ends every process in it.
Its limit JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE ends them too when the last
handle to the job closes; the server holds the only one (it is not
inheritable), so when the server ends, even from Task Manager, Windows
closes it and nothing of the worker outlives the server.

Twisted starts the worker at once (CreateProcess) and the job is assigned
just after, but before the server sends the worker its LOAD message; the
worker starts nothing before LOAD, so whatever it starts is born in the job.

Win32 is reached through ``Win32`` (pywin32), which the tests replace with
a fake: nothing here can run on the Linux machines this is developed on.
"""

from __future__ import annotations

import contextlib
import os
import sys

from modserver.server import logs

# JOBOBJECT_BASIC_LIMIT_INFORMATION.LimitFlags (winnt.h).
KILL_ON_JOB_CLOSE = 0x2000
# A crash ends the process instead of showing Windows Error Reporting's
# dialog, which nobody may see and which would keep the worker "running".
DIE_ON_UNHANDLED_EXCEPTION = 0x400
WORKER_JOB_LIMITS = KILL_ON_JOB_CLOSE | DIE_ON_UNHANDLED_EXCEPTION

# The exit code of processes ended with their job: what TerminateProcess is
# given by Twisted's signalProcess and by Task Manager too.
KILLED_EXIT_CODE = 1


def _same_file(a: str, b: str) -> bool:
    return os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))


class JobObjects:
    """The Job Object of each running worker, by the worker's pid."""

    def __init__(self, win32=None, executable: str | None = None, base_executable=None) -> None:
        self._win32 = win32
        self._executable = executable or sys.executable
        # The interpreter a venv's python.exe launches (what multiprocessing runs).
        self._base_executable = base_executable or getattr(
            sys, "_base_executable", self._executable
        )
        self._jobs: dict[int, object] = {}

    @property
    def win32(self):
        if self._win32 is None:
            self._win32 = Win32()
        return self._win32

    def spawn(self, reactor, protocol, executable: str, args: list, env, path):
        """Start a worker through Twisted and put it in a new job at once."""
        if self._win32 is None:
            self._win32 = Win32()  # without pywin32, fail before there is a process to lose
        executable, args, env = self.interpreter(executable, args, env)
        transport = reactor.spawnProcess(protocol, executable, args, env=env, path=path)
        self.adopt(transport.pid)
        return transport

    def interpreter(self, executable: str, args: list, env):
        """What to run for ``executable``: the server's own venv launcher is bypassed.

        A venv's python.exe on Windows is a launcher that starts the real
        interpreter as its child, maybe before the launcher is in the job,
        and then that child (the worker) would be outside it.  As Python's
        multiprocessing does (bpo-35797), run the real interpreter and tell
        it the venv it belongs to.
        """
        if not _same_file(executable, self._executable) or _same_file(
            self._executable, self._base_executable
        ):
            return executable, args, env
        env = dict(env or {})  # on Windows Twisted adds these to the server's environment
        env["__PYVENV_LAUNCHER__"] = self._executable
        return self._base_executable, [self._base_executable, *args[1:]], env

    def adopt(self, pid: int) -> bool:
        """Put the worker ``pid`` in a new job; False (and a warning) if Windows refuses."""
        self.terminate(pid)  # a job left under a pid Windows has given out again
        try:
            job = self.win32.create_job(WORKER_JOB_LIMITS)
        except OSError as exc:
            self._refused(pid, exc)
            return False
        try:
            self.win32.assign(job, pid)
        except OSError as exc:
            self.win32.close(job)
            self._refused(pid, exc)
            return False
        self._jobs[pid] = job
        return True

    def terminate(self, pid: int) -> bool:
        """End the worker ``pid`` and everything in its job; False if it has none."""
        job = self._jobs.pop(pid, None)
        if job is None:
            return False
        try:
            self.win32.terminate(job, KILLED_EXIT_CODE)
        except OSError:
            pass  # closing the handle below ends them as well (kill on close)
        finally:
            self.win32.close(job)
        return True

    @property
    def pids(self) -> list[int]:
        """The workers that have a job now."""
        return sorted(self._jobs)

    def _refused(self, pid: int, exc: OSError) -> None:
        logs.server_log.warn(
            "cannot put worker pid {pid} in a Job Object ({reason}); what it starts "
            "may outlive it, and it is ended with TerminateProcess",
            pid=pid,
            reason=exc,
        )


class Win32:
    """The Win32 calls JobObjects makes, through pywin32; failures as OSError."""

    def __init__(self) -> None:
        import pywintypes
        import win32api
        import win32con
        import win32job

        self._error = pywintypes.error
        self._api, self._con, self._job = win32api, win32con, win32job

    @contextlib.contextmanager
    def _errors(self):
        try:
            yield
        except self._error as exc:
            raise OSError(exc.winerror, f"{exc.funcname}: {exc.strerror}") from exc

    def create_job(self, limit_flags: int):
        """A new unnamed job with these limits; its handle is not inheritable."""
        job_api = self._job
        with self._errors():
            job = job_api.CreateJobObject(None, "")
            kind = job_api.JobObjectExtendedLimitInformation
            info = job_api.QueryInformationJobObject(job, kind)
            info["BasicLimitInformation"]["LimitFlags"] |= limit_flags
            job_api.SetInformationJobObject(job, kind, info)
        return job

    def assign(self, job, pid: int) -> None:
        access = self._con.PROCESS_SET_QUOTA | self._con.PROCESS_TERMINATE
        with self._errors():
            process = self._api.OpenProcess(access, False, pid)
            try:
                self._job.AssignProcessToJobObject(job, process)
            finally:
                self._api.CloseHandle(process)

    def terminate(self, job, exit_code: int) -> None:
        with self._errors():
            self._job.TerminateJobObject(job, exit_code)

    def close(self, handle) -> None:
        with self._errors():
            self._api.CloseHandle(handle)
