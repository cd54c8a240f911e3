"""The supervising side: the pytest process the user started survives the kill of a hung test.

When a test does not stop after its interrupt, the watchdog kills the
process that runs it. So that this never ends the user's session, the
process the user started (by the ``pytest`` command, ``python -m pytest``,
or a program's ``pytest.main()``) runs no test itself: in
``pytest_cmdline_main``, before pytest configures anything (so before any
plugin can start a thread, which would make forking unsafe), it starts the
session's watchdog and forks a worker (``worker.py``) that runs pytest's
main, and waits. When the worker ends, this process returns its exit status
as its own: the ``pytest`` command exits with it, ``pytest.main()`` returns
it to its caller, which goes on.

If the worker dies first (killed by the watchdog in a hung test, crashed,
or ended by ``os._exit()``), the supervisor forks a new worker from the same
state, before configuration: that one configures and collects again,
replays what the workers before it recorded (``records.py``,
``replay.py``), reports how the last test ended, and runs the rest. The run
ends with one summary, one JUnit XML and one exit status. (pytest-xdist
replaces crashed workers the same way.)

A Ctrl-C reaches the worker too (it is in the same process group) and ends
the session there as it ends pytest's; a SIGINT sent to this process alone
is passed on to the worker.

While the session runs, the supervisor is its child subreaper (``reaper``):
a process a test started whose parent died (a daemon, the children of a
killed worker) becomes the supervisor's child instead of init's, where the
session still finds it (``offspring``). The supervisor reaps those that
end, and ends those still running after its last worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path
from types import ModuleType

import pytest

from pytest_expire import (
    coverage_data,
    exit_deadline,
    json_report,
    leftovers,
    reaper,
    session_deadline,
    session_overrun,
    worker,
)
from pytest_expire.records import TestRecord, read_flags, read_records
from pytest_expire.report import how_it_ended, notice
from pytest_expire.session_directory import (
    ADDRESS_ENV,
    DIRECTORY_ENV,
    OWNER_ENV,
    mark_supervised,
    read_kill,
    record_reaper,
)
from pytest_expire.settings import DEADLINE, from_config
from pytest_expire.signals import interrupt_main_thread
from pytest_expire.watchdog import SessionWatchdog, begin_log

# Options that make pytest show something instead of running tests.
_NOT_RUNNING = (
    "help",
    "version",
    "showfixtures",
    "show_fixtures_per_test",
    "markers",
    "collectonly",
    "setuponly",
    "setupplan",
    "cacheshow",
    "looponfail",
)
# A SIGINT that reached the worker too (a terminal's Ctrl-C, a signal to the
# process group) is being handled there by then, even on a loaded machine;
# one sent to this process alone is passed on.
_INTERRUPT_DELAY = 1.0
# How often the supervisor looks whether the watchdog was stopped.
_WATCHDOG_CHECK = 1.0
_WAITED_FOR = frozenset({signal.SIGINT, signal.SIGCHLD})

# Whether a session of ours runs in this process: a session that a test runs
# inside it (pytester's in-process runs) must not fork the test's process.
_active = False


def main(config: pytest.Config, plugin: ModuleType) -> int | None:
    """``pytest_cmdline_main``: the session's exit status, once supervised; None: run it here.

    Returns only in the process that was started: a worker ends when its
    session does.
    """
    global _active
    if _active:
        return None
    _active = True
    config.add_cleanup(_inactive)
    if not _may_supervise(config):
        return None
    threads = _thread_count()
    if threads > 1:
        config.pluginmanager.register(_Unsupervised(threads), exit_deadline.UNSUPERVISED)
        return None
    return Supervisor(config, plugin).run()


def _inactive() -> None:
    global _active
    _active = False


def _may_supervise(config: pytest.Config) -> bool:
    """Whether this session runs tests in a worker of its own.

    Not in an xdist worker or controller (xdist replaces its own killed
    workers), and not when pytest only shows something (``--help``,
    ``--collect-only``, ``--fixtures``...).
    """
    return (
        hasattr(os, "fork")
        and hasattr(signal, "sigtimedwait")
        and not hasattr(config, "workerinput")
        and not config.getoption("numprocesses", None)
        and config.getoption("dist", "no") == "no"
        and not any(getattr(config.option, name, False) for name in _NOT_RUNNING)
    )


def _thread_count() -> int:
    """The threads of this process, native ones included."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


class _Unsupervised:
    """Says, in a session whose tests have deadlines, that a kill would end it."""

    def __init__(self, threads: int) -> None:
        self.threads = threads

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> None:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None and (
            session_deadline.of(session.config) is not None
            or any(item.stash.get(DEADLINE, None) is not None for item in session.items)
        ):
            reporter.write_line(
                f"pytest-expire: {self.threads} threads ran in this process when pytest "
                "started, which cannot be forked safely: the tests run here, and a test "
                "that must be killed ends the session",
                yellow=True,
            )


class Supervisor:
    """Runs the session in forked workers until one ends it; survives their deaths."""

    def __init__(self, config: pytest.Config, plugin: ModuleType) -> None:
        self.config = config
        self.plugin = plugin
        settings = from_config(config)
        self.grace = settings.grace
        self.log = settings.log
        if self.log is not None:
            begin_log(self.log)
        # Started at once when every test has a deadline (the session's at least),
        # so that every worker inherits its address and its start overlaps the
        # worker's collection; else once a worker finds a test that has one: a
        # session without any starts none.
        self.watchdog = (
            SessionWatchdog(self.grace, self.log) if settings.default or settings.session else None
        )
        # The run's deadline counts from now, whatever workers it takes.
        self.session_deadline = session_deadline.SessionDeadline.from_now(settings)
        # It holds where no test's deadline does, too: collection, after the stop.
        self.overrun = session_overrun.SessionOverrun(self.session_deadline, self.grace)
        self.end_leftovers = settings.end_leftovers
        # The time the last worker has to exit once its session ended.
        self.exit = exit_deadline.SupervisedExit(settings.exit, json_report.path_of(config))
        # What the tests start stays this process's, even once its parent died.
        self.reaper = reaper.set_subreaper(True)
        #: The workers forked so far: their coverage data is combined after the last.
        self.workers: list[int] = []

    def run(self) -> int:
        # Taken by sigwaitinfo: the worker's end, its call for a watchdog, and
        # Ctrl-C (see _wait).
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _WAITED_FOR)
        coverage_data.workers_starting()
        try:
            return self._supervise(mask)
        except RuntimeError as error:  # the watchdog did not start
            notice(str(error))
            return pytest.ExitCode.INTERNAL_ERROR
        finally:
            try:
                coverage_data.workers_ended(self.workers, self.config.pluginmanager)
            except Exception as error:  # the session's exit status comes first
                notice(f"the workers' coverage data could not be combined: {error!r}")
            # Ctrl-Cs taken care of already must not raise once unblocked.
            while signal.sigtimedwait({signal.SIGINT}, 0) is not None:
                pass
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            if self.watchdog is not None:
                self.watchdog.stop()
            self.exit.close()
            if self.reaper:
                reaper.set_subreaper(False)

    def _supervise(self, mask: set[int | signal.Signals]) -> int:
        """Fork workers until one ends the session; its exit status."""
        history: list[TestRecord] = []
        start: tuple[float, float] | None = None
        attempt = 0
        while True:
            # Records in memory that this process and its worker share (the
            # worker opens it by the same path): nothing is left on disk, even
            # when this process is killed.
            memory = os.memfd_create(f"pytest-expire-records-{attempt}", os.MFD_CLOEXEC)
            try:
                records = Path(f"/proc/self/fd/{memory}")
                spec = worker.Worker(
                    records,
                    history,
                    start,
                    self.grace,
                    -1,
                    os.getpid(),
                    mask,
                    self.exit.note,
                    self.session_deadline,
                )
                pid, status = self._run_worker(spec, first=attempt == 0)
                ended = time.time()
                recorded = read_records(records)
            finally:
                os.close(memory)
            if recorded.exitstatus is None and self.overrun.killed:
                # Stopped at the session's deadline already: nothing is left to run.
                self._end_leftovers()
                return pytest.ExitCode.INTERRUPTED
            if recorded.exitstatus is not None:
                if (
                    os.waitstatus_to_exitcode(status) != recorded.exitstatus % 256
                    and not self.exit.ended_it
                ):
                    notice(f"the process that ran the session {how_it_ended(status, 'after it')}")
                self._end_leftovers()
                return recorded.exitstatus
            if not recorded.tests:
                notice(
                    f"the process running the session {how_it_ended(status, 'early')}: "
                    "before any test with a deadline began; the session ends here"
                )
                return pytest.ExitCode.INTERNAL_ERROR
            start = start or recorded.session_start
            last = recorded.tests[-1]
            last.status = status
            last.died = ended
            last.captured = _captured(self.config)
            if not last.finished and self.watchdog is not None:
                kill = read_kill(self.watchdog.directory, pid)
                if kill is not None:
                    last.killed_at, last.stacks = kill
            history.extend(recorded.tests)
            attempt += 1

    def _end_leftovers(self) -> None:
        """End what still runs of the session's processes once its worker is gone
        (what its exit handlers started, say): the worker ended the rest as its
        session ended (``ExpirePlugin.pytest_sessionfinish``)."""
        if not self.end_leftovers:
            return
        ours = {self.watchdog.pid} if self.watchdog is not None else set()
        for line in leftovers.settle_adopted(ours, end=True):
            notice(f"left running after the session: {line}")

    def _run_worker(self, spec: worker.Worker, first: bool) -> tuple[int, int]:
        """Fork a worker and wait for its end: its PID and wait status."""
        spec.ready, ready = os.pipe()
        worker.flush_standard_streams()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(ready)
                worker.run(spec, self.config, self.plugin)
            finally:
                os._exit(pytest.ExitCode.INTERNAL_ERROR)
        self.workers.append(pid)
        os.close(spec.ready)
        try:
            return pid, self._wait(pid, spec.records, ready, first)
        except BaseException:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise

    def _wait(self, pid: int, records: Path, ready: int, first: bool) -> int:
        """Wait for the worker's end; its wait status.

        Meanwhile, tell it the watchdog once the watchdog is ready (starting
        it when the worker asks), replace the watchdog if it dies (something
        killed it: the session goes on), and pass on a SIGINT sent to this
        process alone.
        """
        offer: int | None = ready
        forward_at: float | None = None
        try:
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    return status
                flags = read_flags(records)
                if offer is not None and (self.watchdog is not None or flags.wants_watchdog):
                    self._offer(offer)
                    offer = None
                elif self.watchdog is not None:
                    self.watchdog.revive()
                    self.watchdog.resume()
                # Awake now and then, to find a watchdog stopped (SIGSTOP), which
                # says nothing; and when a SIGINT is due to be passed on.
                timeout = _WATCHDOG_CHECK
                if forward_at is not None:
                    timeout = min(timeout, max(0.0, forward_at - time.monotonic()))
                # Once its session ended, the worker has a while to exit (else it is ended).
                timeout = self.exit.check(pid, self.watchdog, timeout)
                # The session's deadline where no test's holds (collection, after the stop).
                timeout = self.overrun.check(
                    pid,
                    records,
                    first,
                    self.watchdog.directory if self.watchdog is not None else None,
                    timeout,
                )
                received = signal.sigtimedwait(_WAITED_FOR, timeout)
                if self.reaper:
                    ours = {pid} if self.watchdog is None else {pid, self.watchdog.pid}
                    reaper.reap_orphans(ours)
                if received is not None:
                    if received.si_signo == signal.SIGINT and forward_at is None:
                        forward_at = time.monotonic() + _INTERRUPT_DELAY
                elif forward_at is not None and time.monotonic() >= forward_at:
                    forward_at = None
                    flags = read_flags(records)
                    if not (flags.interrupted or flags.debugging):
                        interrupt_main_thread(pid)
        finally:
            if offer is not None:
                os.close(offer)

    def _offer(self, ready: int) -> None:
        """Tell the worker where the watchdog is, once it accepts clients."""
        if self.watchdog is None:
            self.watchdog = SessionWatchdog(self.grace, self.log)
        self.watchdog.wait_ready()
        mark_supervised(self.watchdog.directory)
        if self.reaper:
            record_reaper(self.watchdog.directory, os.getpid())
        environment = {
            ADDRESS_ENV: self.watchdog.address,
            DIRECTORY_ENV: str(self.watchdog.directory),
            OWNER_ENV: str(os.getpid()),
        }
        with contextlib.suppress(BrokenPipeError):  # the worker ended already: _wait says how
            os.write(ready, json.dumps(environment).encode())
        os.close(ready)


def _captured(config: pytest.Config) -> tuple[str, str]:
    """What the dead worker's output capture held (shared files): its last phase's output.

    Read, too, so that the next worker does not find it in its own capture.
    """
    capture = config.pluginmanager.get_plugin("capturemanager")
    if capture is None or getattr(capture, "_global_capturing", None) is None:
        return "", ""
    captured = capture.read_global_capture()
    return captured.out, captured.err
