"""Under pytest-xdist: the controller's watchdog, and the expired test behind a crashed worker.

The controller hosts the session's watchdog whenever the plugin is active.
It collects no tests, so it cannot know in ``pytest_configure`` whether any
has a deadline (a marker), and every worker must inherit the watchdog's
address from its environment when xdist starts it. The watchdog costs one
interpreter start, made while the workers start and collect; without it,
each worker whose test has a deadline would start a watchdog of its own,
and a kill would be a bare crash.

xdist replaces a worker that dies and reports the test it ran as crashed,
with neither the phase nor the time it ran. The controller completes that
report from what it saw of the test: its start (``pytest_runtest_logstart``)
and the reports of its phases. When the watchdog killed the worker (a test
that did not stop after its interrupt), the report says the test expired,
in the words of a serial session (``report``), with the
stacks taken at the kill. For that, a worker tells the controller its PID
and its tests' deadlines, once, when it first arms one: nothing is added
to a worker's tests.

Two things xdist does with a crashed worker's test are mended for the
session to go on as a serial one would: the report counts toward
``--maxfail`` and ``-x`` (xdist counts only the reports its workers send),
and xdist's schedulers by scope (``--dist loadscope``, ``loadfile``,
``loadgroup``) do not run a test the watchdog killed again on the next
worker (they run the test a worker died in again, pytest-xdist#1371: a
hung test would hang each new worker until xdist stops replacing them).

And the coverage of the tests a killed worker ran before its hung one,
written as each ended (``coverage_data``), is kept from the replacement
worker, whose pytest-cov erases every parallel data file as it starts.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, Literal, NamedTuple

import pytest

from pytest_expire import coverage_data, session_deadline
from pytest_expire import report as expiry_report
from pytest_expire.session_directory import (
    diagnosis_path,
    mark_supervised,
    read_kill,
    xdist_worker_path,
)
from pytest_expire.settings import DEADLINE
from pytest_expire.verdict import monotonic_clock, wall_clock
from pytest_expire.watchdog import SessionWatchdog

Phase = Literal["setup", "call", "teardown"]
Location = tuple[str, int | None, str]


def is_controller(config: pytest.Config) -> bool:
    """Whether this process is an xdist controller, which hands the tests to workers and
    runs none itself (as xdist decides it: not when it only collects)."""
    return (
        not hasattr(config, "workerinput")
        and config.getoption("dist", "no") != "no"
        and bool(config.getoption("tx", None))
        and not config.getoption("collectonly")
    )


def announce_worker(config: pytest.Config, directory: Path, default: float | None) -> None:
    """In an xdist worker, as it first arms a deadline: leave its PID and its tests'
    deadlines (those other than ``default``) where the controller finds them.

    The controller learns of a kill only as the crash of a worker, and
    collects no tests: it reads here whose stacks the watchdog took, and the
    deadline to report. Written once per worker, never per test.
    """
    session = config.pluginmanager.get_plugin("session")
    items = session.items if isinstance(session, pytest.Session) else []
    deadlines = {}
    for item in items:
        seconds = item.stash.get(DEADLINE, None)
        if seconds is not None and seconds != default:
            deadlines[item.nodeid] = seconds
    workerid = config.workerinput["workerid"]  # type: ignore[attr-defined]
    xdist_worker_path(directory, workerid).write_text(
        json.dumps({"pid": os.getpid(), "default": default, "deadlines": deadlines})
    )


class _Progress(NamedTuple):
    """How far a worker's test got, as its reports told the controller."""

    nodeid: str
    #: The phase it is in: the one after that of its last report.
    phase: Phase
    #: The durations of the phases reported since it started.
    reported: float


class CrashReporter:
    """In an xdist controller: waits for the watchdog; reports a crashed worker's test in
    the phase it was in, with the time it ran, as expired if the watchdog killed it."""

    def __init__(self, config: pytest.Config, watchdog: SessionWatchdog, grace: float) -> None:
        self.config = config
        self.directory = watchdog.directory
        self.watchdog = watchdog
        self.grace = grace
        mark_supervised(watchdog.directory)
        #: For each test started and not finished: when, and where it is (oldest first:
        #: ``--dist each`` runs a test on every worker).
        self._starts: dict[str, deque[tuple[float, Location]]] = {}
        #: For each worker (by id): the test it runs.
        self._progress: dict[str, _Progress] = {}
        #: The report of the last crashed test, once completed.
        self._crash_report: pytest.TestReport | None = None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self) -> None:
        # Before the controller hands out the first test, not before xdist
        # starts the workers: the watchdog starts while they collect.
        self.watchdog.wait_ready()

    @pytest.hookimpl(wrapper=True, optionalhook=True)
    def pytest_xdist_make_scheduler(self) -> Generator[None, Any, Any]:
        scheduler = yield
        assigned_work = getattr(scheduler, "assigned_work", None)
        if isinstance(assigned_work, dict):  # by scope: loadscope, loadfile, loadgroup
            remove_node = scheduler.remove_node

            def remove_node_but_killed(node: Any) -> str | None:
                return self._remove_node(remove_node, assigned_work, node)

            scheduler.remove_node = remove_node_but_killed
        return scheduler

    def _remove_node(
        self, remove_node: Callable[[Any], str | None], assigned_work: dict[Any, Any], node: Any
    ) -> str | None:
        """A scheduler by scope's ``remove_node``, which puts the crashed test back in its
        queue with the rest of its unit: the test the watchdog killed is marked done
        first, and named as the crashed one (the scheduler would take the next)."""
        killed = None
        if self._kill_of(node.workerinput["workerid"]) is not None:
            # The crashed test, as the scheduler finds it: the first not done.
            for work_unit in assigned_work.get(node, {}).values():
                killed = next((nodeid for nodeid, done in work_unit.items() if not done), None)
                if killed is not None:
                    work_unit[killed] = True
                    break
        crashitem = remove_node(node)
        return killed or crashitem

    def pytest_runtest_logstart(self, nodeid: str, location: Location) -> None:
        self._starts.setdefault(nodeid, deque()).append((monotonic_clock(), location))

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        self._take_start(nodeid)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report is self._crash_report:
            self._stop_if_asked()
            return
        workerid = _worker_id(report)
        if workerid is None:
            return
        progress = self._progress.get(workerid)
        reported = progress.reported if progress and progress.nodeid == report.nodeid else 0.0
        self._progress[workerid] = _Progress(
            report.nodeid, _phase_after(report), reported + report.duration
        )

    @pytest.hookimpl(optionalhook=True)
    def pytest_handlecrashitem(self, crashitem: str, report: pytest.TestReport) -> None:
        """Complete xdist's report of the test whose worker died (before anyone reads it)."""
        crashed = monotonic_clock()
        self._crash_report = report
        workerid = _worker_id(report)
        progress = self._progress.pop(workerid, None) if workerid else None
        if progress is None or progress.nodeid != crashitem:
            progress = _Progress(crashitem, "setup", 0.0)  # it died before its setup ended
        report.when = progress.phase
        start = self._take_start(crashitem)
        started = None
        if start is not None:
            started, report.location = start
            # Its phases reported count already: the test took from its start to the crash.
            report.duration = max(0.0, crashed - started - progress.reported)
        kill = self._kill_of(workerid)
        taken = read_kill(self.directory, kill["pid"]) if kill else None
        if kill is not None and taken is not None:
            killed_at, stacks = taken
            report.longrepr = None  # xdist's "worker crashed": the failure says more
            expiry_report.fail_as_killed(
                report,
                self.config.hook,
                seconds=kill["deadlines"].get(crashitem, kill["default"]),
                phase=progress.phase,
                grace=self.grace,
                stacks=stacks,
                killed_at=killed_at,
                # On the wall clock, as the session's deadline is.
                started=None if started is None else wall_clock() - (crashed - started),
                session=session_deadline.of(self.config),
            )

    def _stop_if_asked(self) -> None:
        """Stop handing out tests if the crashed test was one failure too many.

        xdist's controller counts toward ``--maxfail`` (and ``-x``) only the
        reports its workers send; pytest's session counted this one.
        """
        session = self.config.pluginmanager.get_plugin("session")
        dsession = self.config.pluginmanager.get_plugin("dsession")
        if session is not None and dsession is not None and session.shouldfail:
            dsession.shouldstop = dsession.shouldstop or session.shouldfail

    def _take_start(self, nodeid: str) -> tuple[float, Location] | None:
        """The oldest start of ``nodeid`` not finished, now finished; None if none."""
        starts = self._starts.get(nodeid)
        if not starts:
            return None
        start = starts.popleft()
        if not starts:
            del self._starts[nodeid]
        return start

    def _kill_of(self, workerid: str | None) -> dict[str, Any] | None:
        """What worker ``workerid`` said of itself (``announce_worker``), if the watchdog
        killed it (the stacks taken at the kill are there, not read yet); None if it died
        otherwise."""
        if workerid is None:
            return None
        try:
            announcement = json.loads(xdist_worker_path(self.directory, workerid).read_text())
        except (OSError, ValueError):
            return None  # it armed no deadline
        killed = diagnosis_path(self.directory, announcement["pid"], killed=True).exists()
        return announcement if killed else None


class CoverageRescue:
    """In an xdist controller: the coverage data a dead worker wrote as its tests ended
    reaches the report (its replacement would erase it as it starts, under pytest-cov)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object | None) -> None:
        # Called before xdist starts the replacement.
        if error is None:
            return
        try:
            pid = json.loads(
                xdist_worker_path(self.directory, node.workerinput["workerid"]).read_text()
            )["pid"]
        except (OSError, ValueError):
            return  # it armed no deadline: it wrote no data as its tests ended
        coverage_data.set_aside(pid, self.directory)

    # Innermost: after the last worker is down, before pytest-cov combines the data files.
    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_runtestloop(self) -> Generator[None, object, object]:
        try:
            return (yield)
        finally:
            coverage_data.put_back(self.directory)


def _worker_id(report: pytest.TestReport) -> str | None:
    """The id of the xdist worker that sent ``report`` (xdist tells it to the controller)."""
    node: Any = getattr(report, "node", None)
    workerinput = getattr(node, "workerinput", None)
    return workerinput.get("workerid") if isinstance(workerinput, dict) else None


def _phase_after(report: pytest.TestReport) -> Phase:
    """The phase a test is in once the phase of ``report`` ended.

    pytest calls a test only after a setup that passed, and tears it down
    in any case; after the teardown, a plugin that reruns the test
    (pytest-rerunfailures) starts its setup again.
    """
    if report.when == "teardown":
        return "setup"
    return "call" if report.when == "setup" and report.passed else "teardown"
