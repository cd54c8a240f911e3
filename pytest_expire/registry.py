"""The processes that joined a session: who started, when, during which test.

A Python process started during the session (forked by a test, or a fresh
interpreter whose start-up hook found the session in its environment)
*joins* it: it leaves an entry in the session's directory, named after its
PID and start time, that says which process ran the test that started it
(the *test process*: every process of the session inherits its PID through
:data:`TEST_PROCESS_ENV`) and which test that was (the
``PYTEST_CURRENT_TEST`` it inherited: node id and phase). The entry is how
such a process is found after it left the test's process tree (a
double-forked daemon, say), and how it is attributed to the test that
started it rather than to the test that happens to run when it is found.
It then flags the test process's verdict page, so that the end of a test
looks for the processes it started only when it did start some.

Entries are written once, as a process starts, and read only at a deadline
or at the end of a test or session that started processes: nothing is
polled. This module imports neither pytest nor psutil: a joining process
imports it at start-up.
"""

from __future__ import annotations

import bisect
import json
import os
from array import array
from pathlib import Path
from typing import NamedTuple

from pytest_expire.session_directory import write_atomically
from pytest_expire.verdict import VerdictPage, start_time

#: What pytest puts in the environment while a test runs: "NODEID (PHASE)".
CURRENT_TEST_ENV = "PYTEST_CURRENT_TEST"
#: The PID of the process that runs the session's tests, for the processes they start.
TEST_PROCESS_ENV = "PYTEST_EXPIRE_TEST_PROCESS"
_PREFIX = "joined-"


class Entry(NamedTuple):
    """A process that joined the session."""

    pid: int
    #: When it started, in clock ticks after boot (``verdict.start_time``).
    started: int
    #: Its parent when it started.
    ppid: int
    #: The test process whose test started it (0: unknown).
    owner: int
    #: The test running when it started, "NODEID (PHASE)"; "" between tests.
    test: str

    @property
    def nodeid(self) -> str:
        """The node id of the test that started it; "" between tests."""
        return self.test.rpartition(" (")[0] if self.test.endswith(")") else self.test


def join(directory: Path, test: str | None = None) -> Entry | None:
    """Record that this process started during the session; its entry, None if it could not.

    ``test`` is the running test as ``PYTEST_CURRENT_TEST`` says it; by
    default the one this process's environment names.
    """
    pid = os.getpid()
    started = start_time(pid)
    if started is None:
        return None
    if test is None:
        test = os.environ.get(CURRENT_TEST_ENV, "")
    try:
        owner = int(os.environ.get(TEST_PROCESS_ENV, "0"))
    except ValueError:
        owner = 0
    entry = Entry(pid, started, os.getppid(), owner, test)
    path = directory / f"{_PREFIX}{pid}-{started}"
    try:
        write_atomically(path, json.dumps({"ppid": entry.ppid, "owner": owner, "test": test}))
    except OSError:  # the session is over and its directory gone
        return None
    if owner and owner != pid:
        page = VerdictPage.of(directory, owner)
        if page is not None:
            page.note_joined()
            page.close()
    return entry


def entries(directory: Path) -> list[Entry]:
    """The processes that joined the session and still run, oldest first."""
    found = []
    for path in directory.glob(f"{_PREFIX}*"):
        try:
            pid_text, _, started_text = path.name[len(_PREFIX) :].partition("-")
            pid, started = int(pid_text), int(started_text)
        except ValueError:
            continue
        if start_time(pid) != started:
            continue  # ended (its PID free, or another process's now)
        try:
            data = json.loads(path.read_text())
            found.append(
                Entry(pid, started, int(data["ppid"]), int(data["owner"]), str(data["test"]))
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(found, key=lambda entry: entry.started)


class TestStarts:
    """When each test of a process started, for the processes that did not join:
    one is attributed to the test that ran when it started (to a clock tick)."""

    __slots__ = ("_nodeids", "_ticks")

    def __init__(self) -> None:
        # Compact: a large suite runs a hundred thousand tests.
        self._ticks = array("q")
        self._nodeids: list[str] = []

    def add(self, ticks: int, nodeid: str) -> None:
        """Test ``nodeid`` started at ``ticks`` (``verdict.boot_ticks``), after the others."""
        self._ticks.append(ticks)
        self._nodeids.append(nodeid)

    def running_at(self, ticks: int) -> str:
        """The node id of the test that ran at ``ticks``; "" before the first."""
        position = bisect.bisect_right(self._ticks, ticks) - 1
        return self._nodeids[position] if position >= 0 else ""
