"""The supervised side: a pytest session that runs tests and sends what happens to its supervisor.

A worker is an ordinary pytest session started by the supervisor with the
user's arguments. It collects and runs the tests itself, keeps its terminal
quiet (the supervisor reports), and writes each event its supervisor's
reporters need as one JSON line on a pipe: collection and test reports,
test starts and ends, warnings, and its exit status. A worker started after
another one was killed skips the tests that already ran.
"""

from __future__ import annotations

import json
import os
import signal
import warnings
from pathlib import Path
from typing import IO, Any

import pytest
from _pytest._io import TerminalWriter
from _pytest.terminal import TerminalReporter

from pytest_expire.timer._watchdog import die_with_parent

# Set by the supervisor in a worker's environment.
EVENTS_FD_ENV = "PYTEST_EXPIRE_EVENTS_FD"
DONE_FILE_ENV = "PYTEST_EXPIRE_DONE_FILE"
SUPERVISOR_PID_ENV = "PYTEST_EXPIRE_SUPERVISOR_PID"


def is_worker() -> bool:
    return EVENTS_FD_ENV in os.environ


class WorkerPlugin:
    """Sends a worker's events to its supervisor; skips the tests that already ran."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self._events: IO[str] = os.fdopen(int(os.environ[EVENTS_FD_ENV]), "w", encoding="utf-8")
        done_file = os.environ.get(DONE_FILE_ENV)
        self._done = set(Path(done_file).read_text().splitlines()) if done_file else set()
        # The supervisor writes the one JUnit XML of the run.
        config.option.xmlpath = None
        # Killed with its supervisor, even by SIGKILL: a worker left running
        # a hung test would have no watchdog.
        die_with_parent(int(os.environ[SUPERVISOR_PID_ENV]), signal.SIGKILL)

    def _send(self, event: str, flush: bool = True, **data: Any) -> None:
        self._events.write(json.dumps({"event": event, **data}) + "\n")
        if flush:
            self._events.flush()

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if isinstance(reporter, TerminalReporter):
            # Quiet, but still there for the plugins that write to it; what a
            # test prints without capture still reaches the terminal.
            reporter._tw = TerminalWriter(open(os.devnull, "w"))  # noqa: SIM115

    def armed(self, nodeid: str, seconds: float) -> None:
        """Tell the supervisor the deadline of the test about to run."""
        # Flushed with the test's logstart, which comes before the test can hang.
        self._send("armed", flush=False, nodeid=nodeid, seconds=seconds)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._send("collectreport", report=self._serialize(report))

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        if self._done:
            skipped = [item for item in items if item.nodeid in self._done]
            items[:] = [item for item in items if item.nodeid not in self._done]
            config.hook.pytest_deselected(items=skipped)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self._send("collected", count=len(session.items))

    def pytest_runtest_logstart(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        self._send("logstart", nodeid=nodeid, location=location)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._send("logreport", report=self._serialize(report))

    def pytest_runtest_logfinish(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        self._send("logfinish", nodeid=nodeid, location=location)

    def pytest_warning_recorded(
        self,
        warning_message: warnings.WarningMessage,
        when: str,
        nodeid: str,
        location: tuple[str, int, str] | None,
    ) -> None:
        self._send(
            "warning",
            message=str(warning_message.message),
            category=warning_message.category.__name__,
            filename=warning_message.filename,
            lineno=warning_message.lineno,
            when=when,
            nodeid=nodeid,
            location=location,
        )

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, exitstatus: int) -> None:
        self._send("sessionfinish", exitstatus=int(exitstatus))
        self._events.close()

    def _serialize(self, report: pytest.CollectReport | pytest.TestReport) -> dict[str, Any]:
        data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
        assert isinstance(data, dict)
        return data
