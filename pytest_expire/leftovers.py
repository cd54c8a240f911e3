"""What becomes of the processes the tests left running when the session ends.

After the last teardown (the session's fixtures' too), every process the
session's tests started that still runs (``offspring``) is listed in the
terminal summary with the test it started in, and ended (SIGTERM, a short
wait, SIGKILL), unless the session says only to list them
(``expire_leftovers = list``: a suite whose daemons must outlive it). A
test process does this for what its own tests started. Under pytest-xdist,
a worker sends its list to the controller, which says it, and which ends
what left the workers' trees (it is the session's child subreaper then).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_expire import offspring, reaper, registry

#: Where an xdist worker sends the controller what became of its leftovers.
WORKEROUTPUT_KEY = "pytest_expire_leftovers"
# How often an xdist controller reaps the orphans it adopted.
_REAP_INTERVAL = 0.2


def settle(found: list[offspring.Offspring], end: bool) -> list[str]:
    """End the processes ``found`` (or not): a line for each saying what became of it."""
    if end:
        return offspring.end(found)
    return [f"{child.describe()}: left running" for child in found]


def settle_adopted(keep: set[int], end: bool) -> list[str]:
    """:func:`settle` the children this process adopted as the session's child subreaper,
    less ``keep`` (its own: helpers, workers), reaping those that ended."""
    reaper.reap_orphans(keep)
    lines = settle(offspring.of_pids([pid for pid in reaper.children() if pid not in keep]), end)
    reaper.reap_orphans(keep)
    return lines


def write(terminalreporter: pytest.TerminalReporter, lines: list[str]) -> None:
    """The terminal summary's section on the processes the tests left running."""
    if lines:
        terminalreporter.section("processes the tests left running", sep="-", yellow=True)
        for line in lines:
            terminalreporter.line(line)


class ControllerLeftovers:
    """In an xdist controller: says what the workers did with their leftovers, and ends
    what became the controller's child (the session's child subreaper), once the
    workers are down."""

    def __init__(self, directory: Path, end: bool) -> None:
        self.directory = directory
        self.end = end
        self.reaping = reaper.set_subreaper(True)
        self.lines: list[str] = []
        if self.reaping:
            threading.Thread(target=self._reap, name="pytest-expire-reaper", daemon=True).start()

    def _reap(self) -> None:
        """Reap the orphans the controller adopted as they end, as init would: a test
        that waits for a process it killed to be gone must not find it a zombie."""
        while self.reaping:
            reaper.reap_orphans(set(offspring.helper_pids(self.directory)))
            time.sleep(_REAP_INTERVAL)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any) -> None:
        output = getattr(node, "workeroutput", None)
        if isinstance(output, dict):
            self.lines += output.get(WORKEROUTPUT_KEY, [])

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self) -> None:
        # After xdist's own, which takes the workers down.
        if not self.reaping:
            return
        self.reaping = False
        reaper.set_subreaper(False)
        helpers = set(offspring.helper_pids(self.directory))
        # An xdist worker joined the session with no test to name: not a leftover.
        workers = {entry.pid for entry in registry.entries(self.directory) if not entry.owner}
        self.lines += settle_adopted(helpers | workers, self.end)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        write(terminalreporter, self.lines)
