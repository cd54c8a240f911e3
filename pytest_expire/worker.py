"""The supervised side: a fork of the user's pytest process that runs the whole session.

A worker is forked before pytest configures anything (``supervisor.py``), so
it runs pytest's main from the start: configure, collect, run, report,
unconfigure, as the user's process would have, every plugin included. Then
it ends, with the session's exit status, without returning to whatever
called ``pytest.main()``: that program goes on in the supervisor.

It records what happens (``records.py``), which costs each test a few short
writes. A worker forked after another one died first replays the tests that
already ran (``replay.py``), with the terminal quiet for what the screen
shows already, and then runs the rest.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, NoReturn

import pytest

from pytest_expire import coverage_data, exit_notes
from pytest_expire.pytest_internals import TerminalReporter, TerminalWriter
from pytest_expire.records import RecordWriter, TestRecord
from pytest_expire.replay import QuietTerminal, replay, restore_session_start, stop_if_asked
from pytest_expire.settings import DEADLINE
from pytest_expire.timer.lifetime import die_with_parent

if TYPE_CHECKING:
    from pytest_expire.session_deadline import SessionDeadline

GC_FREEZE_INI = "expire_gc_freeze"


@dataclass
class Worker:
    """What a worker takes from its supervisor when it is forked."""

    records: Path
    #: The tests earlier workers of the session ran, the last one's death included.
    history: list[TestRecord]
    #: When the session's first worker started it (time.time(), time.perf_counter());
    #: None in the first worker until then.
    session_start: tuple[float, float] | None
    grace: float
    #: A pipe's end on which the supervisor writes, once the session's watchdog
    #: accepts clients, the environment that names it (JSON).
    ready: int
    supervisor_pid: int
    #: The signal mask to restore: the supervisor blocks SIGINT and SIGCHLD.
    signal_mask: set[int | signal.Signals]
    #: Where to leave the note its exit watcher reads (``exit_notes``); None: not watched.
    exit_note: Path | None = None
    #: The deadline of the whole run, fixed by the supervisor as it started (None: none).
    session_deadline: SessionDeadline | None = None


#: In a worker process: the worker, what records its session, and the session's config.
current: tuple[Worker, RecordWriter, pytest.Config] | None = None
#: In a worker process that coverage.py measures: its measurement, in a data file of its own.
measured: coverage_data.WorkerCoverage | None = None


def run(worker: Worker, config: pytest.Config, plugin: ModuleType) -> NoReturn:
    """In a just-forked worker: run the session as pytest's main, then end with its status.

    ``plugin`` (this package's plugin module, whose ``pytest_cmdline_main``
    forked this process) is left out of the hook call, which runs every other
    implementation: pytest's main among them.
    """
    global current, measured
    signal.pthread_sigmask(signal.SIG_SETMASK, worker.signal_mask)
    # Killed with its supervisor, even by SIGKILL: a worker left running a
    # hung test would have no watchdog.
    die_with_parent(worker.supervisor_pid, signal.SIGKILL)
    _exit_handlers_of_its_own()
    measured = coverage_data.worker_started()
    if worker.exit_note is not None:
        exit_notes.record()
    writer = RecordWriter(worker.records)
    current = worker, writer, config
    status: int = pytest.ExitCode.INTERNAL_ERROR
    try:
        main = config.pluginmanager.subset_hook_caller("pytest_cmdline_main", [plugin])
        status = int(main(config=config))
    except pytest.UsageError as error:
        # As pytest.main() reports it.
        status = pytest.ExitCode.USAGE_ERROR
        for message in error.args:
            TerminalWriter(sys.stderr).line(f"ERROR: {message}\n", red=True)
    except KeyboardInterrupt:
        status = pytest.ExitCode.INTERRUPTED
        traceback.print_exc()
    except BaseException:
        traceback.print_exc()
    _exit(worker, writer, status)


def _exit(worker: Worker, writer: RecordWriter, status: int) -> NoReturn:
    """End as the interpreter would: wait for the threads that are not daemons, run the
    exit handlers; then exit with the session's ``status``, whatever they do.

    Its supervisor gives it ``--expire-exit`` seconds for that (``exit_deadline``),
    counted from the note it leaves here.
    """
    if worker.exit_note is not None:
        with contextlib.suppress(OSError):
            exit_notes.leave_note(worker.exit_note, status)
    writer.session_ended(status)
    # The terminal's last words first: the process may be killed in what follows.
    flush_standard_streams()
    if worker.exit_note is not None:
        os.kill(worker.supervisor_pid, signal.SIGCHLD)  # the clock starts now
    # As `coverage run` saves, before the interpreter's exit: whatever a thread
    # or an exit handler does next may hang until the process is killed.
    coverage_data.worker_ending(measured)
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    flush_standard_streams()
    os._exit(status)


def _exit_handlers_of_its_own() -> None:
    """Leave the exit handlers registered before the fork to the supervisor.

    Those of a program that called ``pytest.main()`` run once, when it
    exits. The worker runs the handlers that a fresh process would have
    registered for what it does: the standard library's, registered once
    per process when a module is imported.
    """
    atexit._clear()
    if "logging" in sys.modules:
        atexit.register(logging.shutdown)
    multiprocessing_util = sys.modules.get("multiprocessing.util")
    if multiprocessing_util is not None:
        atexit.register(multiprocessing_util._exit_function)
    weakref.finalize._registered_with_atexit = False  # type: ignore[attr-defined]


def flush_standard_streams() -> None:
    """Flush what is still buffered: a fork would copy it, an ``os._exit()`` would lose it."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is not None:
            stream.flush()


def attach(config: pytest.Config) -> WorkerPlugin | None:
    """In a worker, for its own session (not one a test runs inside it): its recorder."""
    if current is None or current[2] is not config:
        return None
    worker, writer, _ = current
    recorder = WorkerPlugin(config, worker, writer)
    config.pluginmanager.register(recorder, "expire-worker")
    if measured is not None:
        config.pluginmanager.register(measured, "expire-coverage")
    return recorder


class WorkerPlugin:
    """Records a worker's session for its supervisor; replays the history of the workers before.

    Each test's start, phases, reports and end are recorded from the
    plugin's own per-test hooks (``plugin._PerTest``), which call
    :meth:`test_started`, :meth:`phase_ended`, :meth:`test_reported` and
    :meth:`test_finished`: no hook implementation of its own for pytest to
    call for each test.
    """

    def __init__(self, config: pytest.Config, worker: Worker, writer: RecordWriter) -> None:
        self._config = config
        self._worker = worker
        self._writer = writer
        # Once there is one: registered after this plugin.
        self._reporter: TerminalReporter | None = None
        self._quiet = QuietTerminal()

    def test_started(self, item: pytest.Item, seconds: float | None) -> None:
        self._writer.started(item.nodeid, seconds)
        self._writer.phase("setup")
        # Before the test can hang: what the terminal was shown must not die
        # in a buffer with the worker (a no-op where pytest flushed already).
        if self._reporter is not None:
            self._reporter.flush()

    def phase_ended(self, report: pytest.TestReport) -> None:
        """The phase of ``report`` ended (its report is made): the test is in the next one.

        The call runs only after a setup that passed; after the teardown, a
        plugin that reruns the test (pytest-rerunfailures) starts its next
        attempt's setup, or the test finishes.
        """
        if report.when == "teardown":
            self._writer.phase("setup")
        else:
            self._writer.phase("call" if report.when == "setup" and report.passed else "teardown")

    def test_finished(self) -> None:
        self._writer.finished()

    def test_reported(self, report: pytest.TestReport) -> None:
        self._writer.report(report, self._config)

    def pytest_warning_recorded(
        self, warning_message: warnings.WarningMessage, when: str, nodeid: str
    ) -> None:
        if when == "runtest":
            self._writer.warning(warning_message, nodeid)

    def pytest_keyboard_interrupt(self) -> None:
        # The supervisor need not pass on a Ctrl-C that reached this process too.
        self._writer.interrupted()

    def pytest_enter_pdb(self) -> None:
        # Nor one that the debugger takes.
        self._writer.debugging(True)

    def pytest_leave_pdb(self) -> None:
        self._writer.debugging(False)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self) -> None:
        start = self._worker.session_start or (time.time(), time.perf_counter())
        # Kept for what says when the session started (``json_report``), in this worker too.
        self._worker.session_start = start
        self._writer.session_started(*start)
        reporter = self._config.pluginmanager.get_plugin("terminalreporter")
        self._reporter = reporter if isinstance(reporter, TerminalReporter) else None
        if self._worker.history:
            self._quiet.start(self._config)  # before the terminal's header: the screen shows it

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self) -> None:
        # After pytest's own (the teardown of the fixtures of every scope): what is left
        # of the session is its reports, not held to the session's deadline.
        self._writer.torn_down()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool | None:
        if session.testsfailed and not self._config.option.continue_on_collection_errors:
            self._quiet.stop()
            return None  # pytest's own loop stops the session
        if self._config.getini(GC_FREEZE_INI):
            # Opted in: what collection made lives as long as the session, out
            # of reach of the collections that would walk it again and again.
            gc.freeze()
        if self._worker.session_deadline is not None or any(
            item.stash.get(DEADLINE, None) is not None for item in session.items
        ):
            self._join_watchdog()
        if not self._worker.history:
            return None  # pytest's loop runs the tests
        start = self._worker.session_start
        if start is not None:
            restore_session_start(self._config, *start)
        replay(
            session,
            self._worker.history,
            self._worker.grace,
            self._quiet,
            self._worker.session_deadline,
        )
        _run_the_rest(session)
        return True

    def _join_watchdog(self) -> None:
        """Wait until the session's watchdog is ready: the supervisor's, started for it if need be.

        Its address comes through the environment, where the test's
        processes find it too.
        """
        self._writer.wants_watchdog()
        os.kill(self._worker.supervisor_pid, signal.SIGCHLD)  # the supervisor waits for it
        message = b""
        while chunk := os.read(self._worker.ready, 4096):
            message += chunk
        os.close(self._worker.ready)
        # Empty if the watchdog did not start: the supervisor ends this process.
        os.environ.update(json.loads(message or b"{}"))


def _run_the_rest(session: pytest.Session) -> None:
    """Run the tests a replay left, as pytest's loop does.

    pytest's own loop would take the failures just replayed for collection
    errors, so a worker with a history runs its tests itself.
    """
    items = session.items
    for position, item in enumerate(items):
        nextitem = items[position + 1] if position + 1 < len(items) else None
        item.config.hook.pytest_runtest_protocol(item=item, nextitem=nextitem)
        stop_if_asked(session)
