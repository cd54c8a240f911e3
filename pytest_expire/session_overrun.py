"""The session's deadline where no test's deadline enforces it: collection, and what
follows the session's stop.

A test's process arms the session's deadline with each test it runs
(``session_deadline``), so a test running when it passes is diagnosed,
interrupted and killed by the watchdog. Outside the tests nothing is armed:
the collection (a test module that hangs at its import), and what the
session does once stopped at its deadline (``session.shouldstop``), up to
the end of its ``pytest_sessionfinish`` (which the worker records): above
all the teardown of the fixtures of a wider scope that the last test that
ran left set up, which pytest does there, under no test. (What follows, the
terminal summary, is not held to it.) In a
supervised session the supervisor, which waits for its worker anyway,
watches these: once the session's deadline has passed and the worker has
been there for the grace period (``--expire-grace``), it

1. says so on stderr, with the worker's stacks (its own dump if it
   registered for dumps, else what py-spy reads), and interrupts it with
   SIGINT, as a Ctrl-C would: pytest reports the interruption (during
   collection: where it was, the summary, JUnit XML) and ends with status 2;
2. if the worker has not ended the grace period later (5 s at least: the
   time pytest's report of an interruption may take; stuck in C code, or
   swallowing the interrupt), takes its stacks again, says so, and kills it
   and the processes it started; the run then ends with status 2, without a
   new worker (there is nothing left to run).

A worker forked after a kill collects again to report what ran: that
collection is not held to the deadline (it passed already), only what
follows its stop.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from pytest_expire import dumps, offspring
from pytest_expire.records import read_records
from pytest_expire.report import notice, session_interrupting, session_killing
from pytest_expire.session_deadline import SessionDeadline
from pytest_expire.signals import interrupt_main_thread
from pytest_expire.verdict import wall_clock

# How often the supervisor looks again while the worker is in a test past the deadline
# (the watchdog enforces it there).
_IN_A_TEST_POLL = 0.5
# The least time an interrupted worker has to report its interruption (the summary, whose
# plugins may import modules there, JUnit XML) before it is killed.
_REPORT_TIME = 5.0


class SessionOverrun:
    """In a supervisor: the session's deadline over its worker's collection and over what
    follows the session's stop."""

    def __init__(self, deadline: SessionDeadline | None, grace: float) -> None:
        self.deadline = deadline
        self.grace = grace
        #: Whether this watcher killed the worker: the run ends, with status 2.
        self.killed = False
        self._outside_since: float | None = None
        self._interrupted_at: float | None = None
        # What an interrupted worker has to end before it is killed.
        self._patience = max(grace, _REPORT_TIME)

    def check(
        self, pid: int, records: Path, first: bool, directory: Path | None, timeout: float
    ) -> float:
        """How long the supervisor may wait for worker ``pid`` (recording into ``records``;
        ``first``: the session's first worker) before it calls again, ``timeout`` at
        most; interrupt or kill it first if it is overdue outside the tests."""
        deadline = self.deadline
        if deadline is None or self.killed:
            return timeout
        now = time.monotonic()
        left = deadline.end - wall_clock()
        if left > 0:
            return min(timeout, left)
        recorded = read_records(records)
        if recorded.exitstatus is not None or recorded.torn_down:
            # Its teardown is over: its reports remain, then its exit, which has a
            # deadline of its own.
            return timeout
        in_a_test = bool(recorded.tests) and not recorded.tests[-1].finished
        collecting = not recorded.tests
        if in_a_test or (collecting and not first):
            self._outside_since = None
            return min(timeout, _IN_A_TEST_POLL)
        if self._outside_since is None:
            self._outside_since = now
        if self._interrupted_at is None:
            due = self._outside_since + self.grace
            if now < due:
                return min(timeout, due - now)
            self._interrupted_at = now
            where = "collecting its tests" if collecting else "past its last test"
            notice(session_interrupting(deadline.label, where, _stacks(directory, pid)))
            interrupt_main_thread(pid)
            return min(timeout, self._patience)
        due = self._interrupted_at + self._patience
        if now < due:
            return min(timeout, due - now)
        self.killed = True
        text = _stacks(directory, pid)
        left_running = (
            offspring.of_session(directory, pid)
            if directory is not None
            else [child for child in offspring.of_pids([pid]) if child.process.pid != pid]
        )
        notice(session_killing(pid, self._patience, deadline.label, text))
        os.kill(pid, signal.SIGSTOP)
        offspring.kill(left_running)
        os.kill(pid, signal.SIGKILL)
        return timeout


def _stacks(directory: Path | None, pid: int) -> str:
    """The stacks of worker ``pid``, rendered as in a report."""
    if directory is None:
        return "(no stacks: the session has no watchdog's directory)\n"
    # Here only: the watchdog's reader (psutil and all) stays out of every session.
    from pytest_expire import diagnose

    return dumps.render(dumps.parse(diagnose.stacks_of(directory, pid))).rstrip("\n")
