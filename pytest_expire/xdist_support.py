"""Under pytest-xdist: the controller's watchdog, and the expired test behind a crashed worker.

xdist already replaces a worker that dies and reports the test it was running
as crashed. The controller starts the session's watchdog, so every worker
reaches it through the environment it inherits; when the watchdog kills a
worker whose test did not stop after its interrupt, the crash report xdist
makes is turned into an expired report with the stacks taken at the kill.
"""

from __future__ import annotations

import pytest

from pytest_expire.watchdog import (
    SessionWatchdog,
    mark_supervised,
    read_diagnosis,
    xdist_worker_path,
)


def is_controller(config: pytest.Config) -> bool:
    """Whether this process is an xdist controller (it runs no test itself)."""
    return not hasattr(config, "workerinput") and config.getoption("dist", "no") != "no"


class CrashReporter:
    """Turns xdist's report of a worker killed by the watchdog into an expired report."""

    def __init__(self, watchdog: SessionWatchdog) -> None:
        self.directory = watchdog.directory
        self.watchdog = watchdog
        mark_supervised(watchdog.directory)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self) -> None:
        # Before xdist starts the workers that will connect to it.
        self.watchdog.wait_ready()

    @pytest.hookimpl(optionalhook=True)
    def pytest_handlecrashitem(self, crashitem: str, report: pytest.TestReport) -> None:
        stacks = self._stacks_at_kill(report)
        if not stacks:
            return  # a crash of its own, not one of ours
        report.longrepr = (
            f"{crashitem} expired; it did not stop when interrupted and the watchdog "
            f"killed its worker ({report.longrepr})"
        )
        report.sections.append((f"expired: {crashitem}", stacks))

    def _stacks_at_kill(self, report: pytest.TestReport) -> str:
        """The stacks the watchdog took when it killed the crashed worker, if it did."""
        # xdist's crash report names the worker; the worker left its PID for us.
        workerinput = getattr(getattr(report, "node", None), "workerinput", None)
        if not isinstance(workerinput, dict) or "workerid" not in workerinput:
            return ""
        try:
            pid = int(xdist_worker_path(self.directory, workerinput["workerid"]).read_text())
        except (FileNotFoundError, ValueError):
            return ""  # the worker died before its first deadline: not killed by us
        return read_diagnosis(self.directory, pid, killed=True) or ""
