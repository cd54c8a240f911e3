"""The supervising side: the pytest process the user started survives the kill of a hung test.

When a test does not stop after its interrupt, the watchdog kills the
process that runs it. So that this never ends the user's session, the
process the user started runs no test itself: once it has collected, it
forks a worker (``worker.py``) that runs the tests and reports them as this
process would have, and waits. If the worker is killed in the middle of a
test (or dies of a crash), the supervisor forks a new worker from where it
stands, before the first test: that one replays the reports of the tests
that already ran, reports the killed one as expired with the stacks the
watchdog took, and runs the rest. The run ends with one summary, one JUnit
XML and one exit code, the last worker's. (pytest-xdist replaces crashed
workers the same way.)

A fork costs a few milliseconds and starts nothing anew: the workers need
neither a second start of pytest nor a second collection, and reporting
happens once, in the worker. Forking is only safe with one thread, and
only where this process may end with its worker's exit code, so a session
is supervised only when pytest runs as a program of its own
(``python -m pytest``, the ``pytest`` command), with a single thread, and
some test has a deadline.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

from pytest_expire.records import TestRecord, read_records
from pytest_expire.settings import DEADLINE
from pytest_expire.watchdog import SessionWatchdog, mark_supervised, read_diagnosis
from pytest_expire.worker import become_worker, run_the_rest

if TYPE_CHECKING:
    from pytest_expire.plugin import ExpirePlugin


def may_supervise(config: pytest.Config) -> bool:
    """Whether this session can run its tests in forked workers (decided before collection).

    Not in an xdist worker or controller (xdist replaces its own killed
    workers), not when only collecting, and only when pytest is the program
    (``pytest.main()`` called by a program, pytester's in-process runs
    included, must return to it).
    """
    return (
        hasattr(os, "fork")
        and not hasattr(config, "workerinput")
        and config.getoption("dist", "no") == "no"
        and not config.getoption("collectonly")
        and not config.invocation_params.plugins
        and _pytest_is_the_program()
    )


def _pytest_is_the_program() -> bool:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name in ("pytest", "pytest.__main__"):
        return True  # python -m pytest
    return Path(sys.argv[0]).name in ("pytest", "py.test")


class Supervisor:
    """Runs the session's tests in forked workers; survives their kills."""

    def __init__(self, plugin: ExpirePlugin, grace: float) -> None:
        # The session's plugin, which owns the watchdog (started already when
        # every test has a deadline).
        self.plugin = plugin
        self.config = plugin.config
        self.grace = grace

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool | None:
        if session.testsfailed and not self.config.option.continue_on_collection_errors:
            return None  # pytest's own loop stops the session
        if not any(item.stash.get(DEADLINE, None) is not None for item in session.items):
            return None
        threads = _thread_count()
        if threads > 1:
            reporter = self.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(
                    f"pytest-expire: {threads} threads run in this process, which cannot be "
                    "forked safely: the tests run here, and a test that must be killed "
                    "ends the session",
                    yellow=True,
                )
            return None
        if self.plugin.watchdog is None:
            self.plugin.watchdog = SessionWatchdog(self.grace)
        watchdog = self.plugin.watchdog
        watchdog.wait_ready()
        mark_supervised(watchdog.directory)
        return self._supervise(session, watchdog)

    def _supervise(self, session: pytest.Session, watchdog: SessionWatchdog) -> bool | None:
        """Fork workers until one ends by itself; then end with its exit code.

        Returns only in a worker, as ``pytest_runtestloop`` does.
        """
        history: list[TestRecord] = []
        supervisor_pid = os.getpid()
        # The terminal's Ctrl-C reaches the worker too: it reports the
        # interruption, and this process ends with it.
        interrupt_handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
        for attempt in range(len(session.items) + 1):
            records = watchdog.directory / f"records-{attempt}.bin"
            _flush_standard_streams()
            # What the session holds now (its tests, modules, fixtures) lives as
            # long as the worker: out of reach of the worker's garbage
            # collections, which would otherwise walk all of it again and
            # again, copying each page it touches out of the memory shared
            # with this process.
            gc.freeze()
            pid = os.fork()
            if pid == 0:
                signal.signal(signal.SIGINT, interrupt_handler)
                self.plugin.recorder = become_worker(
                    session, records, history, self.grace, supervisor_pid
                )
                if not history:
                    return None  # pytest's loop runs the tests
                run_the_rest(session)
                return True
            status = _wait(pid)
            if os.WIFEXITED(status):
                self._end(watchdog, os.WEXITSTATUS(status))
            tests = read_records(records)
            if not tests:
                sys.stderr.write(
                    f"pytest-expire: the worker running the tests died before its first test "
                    f"({_describe(status)})\n"
                )
                self._end(watchdog, pytest.ExitCode.INTERNAL_ERROR)
            if tests[-1].finished:
                sys.stderr.write(
                    f"pytest-expire: the worker running the tests died between two tests "
                    f"({_describe(status)}); a new one goes on\n"
                )
            else:
                tests[-1].killed_by = os.WTERMSIG(status)
                tests[-1].stacks = read_diagnosis(watchdog.directory, pid, killed=True) or ""
            history.extend(tests)
        raise AssertionError("every test was killed, and the session still did not end")

    def _end(self, watchdog: SessionWatchdog, exitstatus: int) -> NoReturn:
        """End this process as its last worker ended, without reporting anything itself."""
        watchdog.stop()
        _flush_standard_streams()
        os._exit(exitstatus)


def _thread_count() -> int:
    """The threads of this process, native ones included."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _flush_standard_streams() -> None:
    # A fork copies what is still buffered: it would be written twice.
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is not None:
            stream.flush()


def _wait(pid: int) -> int:
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return status
        except InterruptedError:
            continue


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
