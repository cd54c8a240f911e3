"""Under pytest-xdist: the controller's watchdog, and the expired test behind a crashed worker.

xdist already replaces a worker that dies and reports the test it was running
as crashed. The controller starts the session's watchdog, so every worker
reaches it through the environment it inherits; when the watchdog kills a
worker whose test did not stop after its interrupt, the crash report xdist
makes is turned into an expired report with the stacks taken at the kill.
"""

from __future__ import annotations

import pytest

from pytest_expire.watchdog import SessionWatchdog, mark_supervised, read_diagnosis


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
        stacks = read_diagnosis(self.directory, crashitem, killed=True)
        if not stacks:
            return  # a crash of its own, not one of ours
        report.longrepr = (
            f"{crashitem} expired; it did not stop when interrupted and the watchdog "
            f"killed its worker ({report.longrepr})"
        )
        report.sections.append((f"expired: {crashitem}", stacks))
