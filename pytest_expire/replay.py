"""A new worker tells its reporters what the workers before it ran, as they reported it.

A worker forked after another one died configures and collects the session
again, then replays the earlier workers' records into its own hooks: every
reporter (terminal, JUnit XML, cache, any plugin) sees each test once, as if
one process had run the whole session. The terminal is quiet meanwhile (the
screen shows all of it already) but for the end of the last test, whose
worker died just now: how it died is news.

Tests are matched by node id: a collection made again may order them
differently (pytest-randomly, say).
"""

from __future__ import annotations

import io
from collections import defaultdict, deque
from typing import TYPE_CHECKING, Any

import pytest

from pytest_expire import report as expiry_report
from pytest_expire.pytest_internals import TerminalReporter, TerminalWriter, timing, xml_key
from pytest_expire.records import (
    PassedReport,
    TestRecord,
    report_from_record,
    warning_from_record,
)

if TYPE_CHECKING:
    from pytest_expire.session_deadline import SessionDeadline


class QuietTerminal:
    """Has the terminal reporter write to a writer of its own, leaving the screen as it is.

    The quiet writer is the real one's twin (width, markup), so when the
    real one is back it is told the line the screen shows now: the earlier
    worker's output, which the quiet writer wrote the same way.
    """

    def __init__(self) -> None:
        self._reporter: TerminalReporter | None = None
        self._real: TerminalWriter | None = None

    def start(self, config: pytest.Config) -> None:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        self._reporter = reporter if isinstance(reporter, TerminalReporter) else None
        if self._reporter is None or self._real is not None:
            return
        self._real = real = self._reporter._tw
        quiet = TerminalWriter(io.StringIO())
        quiet.hasmarkup = real.hasmarkup
        quiet.fullwidth = real.fullwidth
        quiet._current_line = real._current_line
        self._reporter._tw = quiet

    def stop(self) -> None:
        if self._reporter is None or self._real is None:
            return
        self._real._current_line = self._reporter._tw._current_line
        self._reporter._tw = self._real
        self._real = None


class _Test:
    """What the replay reports a recorded test as: its item if collected again."""

    def __init__(self, session: pytest.Session, record: TestRecord, item: pytest.Item | None):
        self.record = record
        self.item = item
        self.nodeid = record.nodeid
        if item is not None:
            self.location: tuple[str, int | None, str] = item.location
            self.keywords: dict[str, Any] = dict.fromkeys(item.keywords, 1)
            self.hook = item.ihook
        else:  # not collected this time: reported all the same
            self.location = (record.nodeid.partition("::")[0], None, record.nodeid)
            self.keywords = {}
            self.hook = session.config.hook

    def start(self, config: pytest.Config) -> None:
        """What the test's worker reported: its start, warnings and reports."""
        self.hook.pytest_runtest_logstart(nodeid=self.nodeid, location=self.location)
        for warning in self.record.warnings:
            message, nodeid = warning_from_record(warning)
            self.hook.pytest_warning_recorded.call_historic(
                kwargs={
                    "warning_message": message,
                    "when": "runtest",
                    "nodeid": nodeid,
                    "location": None,
                }
            )
        for recorded in self.record.reports:
            report = report_from_record(recorded, self.nodeid, self.location, self.keywords, config)
            self.hook.pytest_runtest_logreport(report=report)

    def end(self, grace: float, session: SessionDeadline | None) -> None:
        """The test's end: how its worker died, if it died in it or after it."""
        if self.record.status is not None:
            self.hook.pytest_runtest_logreport(report=self._death_report(grace, session))
        self.hook.pytest_runtest_logfinish(nodeid=self.nodeid, location=self.location)

    def _death_report(self, grace: float, session: SessionDeadline | None) -> pytest.TestReport:
        test = self.record
        assert test.status is not None
        phase = "teardown" if test.finished else test.phase or "setup"
        sections = [
            (f"Captured {stream} {phase}", text)
            for stream, text in zip(("stdout", "stderr"), test.captured, strict=True)
            if text
        ]
        # The phase it died in began when the last one reported ended (or the test began).
        start = max([test.started, *(_stop(recorded) for recorded in test.reports)])
        stop = max(start, test.died or start)
        report = pytest.TestReport(
            self.nodeid,
            self.location,
            self.keywords,
            "failed",
            None,
            phase,  # type: ignore[arg-type]
            sections=sections,
            duration=stop - start,
            start=start,
            stop=stop,
        )
        if test.stacks and not test.finished:
            expiry_report.fail_as_killed(
                report,
                self.hook,
                seconds=test.seconds,
                phase=phase,
                grace=grace,
                stacks=test.stacks,
                killed_at=test.killed_at or 0.0,
                started=test.started,
                session=session,
            )
        else:
            report.longrepr = expiry_report.died(
                self.nodeid, test.status, None if test.finished else phase
            )
        return report


def _stop(recorded: PassedReport | dict[str, Any]) -> float:
    """When the phase of a recorded report ended (time.time())."""
    return recorded[3] if isinstance(recorded, tuple) else float(recorded.get("stop", 0.0))


def replay(
    session: pytest.Session,
    history: list[TestRecord],
    grace: float,
    quiet: QuietTerminal,
    deadline: SessionDeadline | None = None,
) -> None:
    """Report the tests earlier workers ran, as they reported them; drop them from the run.

    ``quiet`` is on (since the session started); it is turned off for the end
    of the last test. ``deadline``: the run's deadline, which the last test may
    have been killed at.
    """
    collected: defaultdict[str, deque[pytest.Item]] = defaultdict(deque)
    for item in session.items:
        collected[item.nodeid].append(item)
    tests = [_Test(session, record, _take(collected, record.nodeid)) for record in history]
    replayed = {id(test.item) for test in tests}
    *before, last = tests
    for test in before:
        test.start(session.config)
        test.end(grace, deadline)
    last.start(session.config)
    quiet.stop()
    last.end(grace, deadline)
    session.items[:] = [item for item in session.items if id(item) not in replayed]
    lost = [test.nodeid for test in tests if test.item is None]
    if lost and not session.shouldstop:
        # Ids that change from one collection to the next (a random
        # parameter, say): what was run cannot be told from what was not,
        # and running on could run the killed test again, and again.
        session.shouldstop = (
            f"pytest-expire: the tests collected again after a worker died differ from "
            f"those it ran ({', '.join(lost[:3])}{', ...' if len(lost) > 3 else ''} are "
            "gone); the rest of the session cannot be told apart from what ran"
        )
    stop_if_asked(session)


def _take(collected: defaultdict[str, deque[pytest.Item]], nodeid: str) -> pytest.Item | None:
    """The next item of that node id collected and not replayed yet (ids may repeat)."""
    items = collected.get(nodeid)
    return items.popleft() if items else None


def restore_session_start(config: pytest.Config, wall: float, perf: float) -> None:
    """The session's start is the first worker's: the summary's and the JUnit XML's durations."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    xml = config.stash.get(xml_key, None)
    instant_type = getattr(timing, "Instant", None)
    for reporter_of, attribute, older in (
        (reporter, "_session_start", "_sessionstarttime"),
        (xml, "suite_start", "suite_start_time"),
    ):
        if instant_type is not None and hasattr(reporter_of, attribute):
            instant = instant_type()
            object.__setattr__(instant, "time", wall)
            object.__setattr__(instant, "perf_count", perf)
            setattr(reporter_of, attribute, instant)
        elif hasattr(reporter_of, older):  # pytest before 8.4: a time.time()
            setattr(reporter_of, older, wall)


def stop_if_asked(session: pytest.Session) -> None:
    """Stop as pytest's loop does after a test (``-x``, ``--maxfail``, a plugin asking)."""
    if session.shouldfail:
        raise session.Failed(session.shouldfail)
    if session.shouldstop:
        raise session.Interrupted(session.shouldstop)
