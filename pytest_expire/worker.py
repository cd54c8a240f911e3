"""The supervised side: a fork of the user's pytest process that runs the tests.

A worker starts where its supervisor stood when it forked: configured,
collected, its terminal showing the header. It runs the session from there
as the user's process would have (its reporters write the terminal, the JUnit
XML, the cache) and records what happens (``records.py``), which costs each
test a few short writes. A worker started after another one was killed first
replays the tests that already ran, the killed one included, into its own
hooks, with the terminal quiet for what is already on the screen, and then
runs the rest.
"""

from __future__ import annotations

import io
import signal
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from _pytest._io import TerminalWriter
from _pytest.terminal import TerminalReporter

from pytest_expire.records import (
    RecordWriter,
    TestRecord,
    item_report,
    report_from_record,
    warning_from_record,
)
from pytest_expire.settings import format_seconds
from pytest_expire.timer._watchdog import die_with_parent


class WorkerPlugin:
    """Records a worker's tests for its supervisor.

    The per-test records are written from the plugin's own per-test hooks
    (``plugin._PerTest``), which call :meth:`test_started` and
    :meth:`test_reported`: one hook implementation fewer for pytest to call
    three times a test.
    """

    def __init__(self, config: pytest.Config, records: Path, index: dict[int, int]) -> None:
        self._writer = RecordWriter(records, config)
        # Positions in the session's whole list of tests, by id(item).
        self._index = index
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        self._reporter = reporter if isinstance(reporter, TerminalReporter) else None

    def test_started(self, item: pytest.Item, seconds: float | None) -> None:
        self._writer.started(self._index[id(item)], seconds)
        # Before the test can hang: what the terminal was shown must not die
        # in a buffer with the worker (a no-op where pytest flushed already).
        if self._reporter is not None:
            self._reporter.flush()

    def test_reported(self, report: pytest.TestReport) -> None:
        self._writer.report(report)

    def pytest_warning_recorded(
        self, warning_message: warnings.WarningMessage, when: str, nodeid: str
    ) -> None:
        if when == "runtest":
            self._writer.warning(warning_message, nodeid)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self) -> None:
        self._writer.close()


def replay(session: pytest.Session, history: list[TestRecord], grace: float) -> None:
    """Report the tests earlier workers ran, as they reported them; drop them from the run.

    A test whose worker was killed (``killed_by`` set) is reported as the
    supervisor saw it end. The terminal shows all of it already but the end
    of the last test, whose worker died just now.
    """
    *before, last = ((session.items[test.index], test) for test in history)
    with _quiet_terminal(session.config):
        for item, test in before:
            _replay_start(item, test)
            _replay_end(item, test, grace)
        _replay_start(*last)
    _replay_end(*last, grace)
    del session.items[: len(history)]
    _stop_if_asked(session)


def _replay_start(item: pytest.Item, test: TestRecord) -> None:
    """What the test's worker reported: its start, warnings and reports."""
    hook = item.ihook
    hook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    for warning in test.warnings:
        message, nodeid = warning_from_record(warning)
        hook.pytest_warning_recorded.call_historic(
            kwargs={
                "warning_message": message,
                "when": "runtest",
                "nodeid": nodeid,
                "location": None,
            }
        )
    for recorded in test.reports:
        hook.pytest_runtest_logreport(report=report_from_record(recorded, item, item.config))


def _replay_end(item: pytest.Item, test: TestRecord, grace: float) -> None:
    """The test's end: how its worker died, if it died in it."""
    if test.killed_by is not None:
        item.ihook.pytest_runtest_logreport(report=_killed_report(item, test, grace))
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)


def _killed_report(item: pytest.Item, test: TestRecord, grace: float) -> pytest.TestReport:
    assert test.killed_by is not None
    phase = test.phase_reached()
    if test.stacks:
        seconds = format_seconds(test.seconds) if test.seconds is not None else "its deadline"
        message = (
            f"{item.nodeid} expired after {seconds} (in {phase}); it did not stop when "
            f"interrupted and its process was killed {format_seconds(grace)} later"
        )
        sections = [(f"expired: {item.nodeid} after {seconds}", test.stacks)]
    else:
        message = (
            f"{item.nodeid}: its process died in {phase} "
            f"({signal.Signals(test.killed_by).name}); the session went on in a new one"
        )
        sections = []
    return item_report(item, phase, "failed", message, sections=sections)


@contextmanager
def _quiet_terminal(config: pytest.Config) -> Iterator[None]:
    """Report to a terminal writer of our own, leaving the real one where the screen is.

    The quiet writer is the real one's twin (width, markup), so after the
    replay the real one is told the line the screen shows now: the earlier
    worker's output, which this writer would have written the same way.
    """
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if not isinstance(reporter, TerminalReporter):
        yield
        return
    real = reporter._tw
    quiet = TerminalWriter(io.StringIO())
    quiet.hasmarkup = real.hasmarkup
    quiet.fullwidth = real.fullwidth
    quiet._current_line = real._current_line
    reporter._tw = quiet
    try:
        yield
    finally:
        reporter._tw = real
        real._current_line = quiet._current_line


def become_worker(
    session: pytest.Session,
    records: Path,
    history: list[TestRecord],
    grace: float,
    supervisor_pid: int,
) -> WorkerPlugin:
    """In a just-forked worker: die with the supervisor, replay the history; the recorder.

    The plugin's per-test hooks record each test with the recorder returned.
    """
    # Killed with its supervisor, even by SIGKILL: a worker left running a
    # hung test would have no watchdog.
    die_with_parent(supervisor_pid, signal.SIGKILL)
    index = {id(item): position for position, item in enumerate(session.items)}
    if history:
        replay(session, history, grace)
    recorder = WorkerPlugin(session.config, records, index)
    session.config.pluginmanager.register(recorder, "expire-worker")
    return recorder


def run_the_rest(session: pytest.Session) -> None:
    """Run the tests a replay left, as pytest's loop does.

    pytest's own loop would take the failures just replayed for collection
    errors, so a worker with a history runs its tests itself.
    """
    items = session.items
    for position, item in enumerate(items):
        nextitem = items[position + 1] if position + 1 < len(items) else None
        item.config.hook.pytest_runtest_protocol(item=item, nextitem=nextitem)
        _stop_if_asked(session)


def _stop_if_asked(session: pytest.Session) -> None:
    if session.shouldfail:
        raise session.Failed(session.shouldfail)
    if session.shouldstop:
        raise session.Interrupted(session.shouldstop)
