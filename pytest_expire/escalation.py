"""What the watchdog does when a test's deadline passes: say so, diagnose, interrupt, kill.

Runs in the watchdog process only (``watchdog_main``). The timer server
calls :class:`Escalation` from its loop when a test's timer expires; it
writes the watchdog's word into the test's verdict page at once (from then
on the test fails as expired, however it ends: ``verdict``) and hands the
rest to a thread of its own, so that a slow diagnosis (a stopped process
that never dumps, py-spy reading a large tree) never holds up the loop and
the deadlines of other tests. Each step happens only while the test still
runs (the page names its token as armed):

1. Diagnose: the stacks of the test's process and of every process it
   started, written where the test's process reads them into its report,
   and logged through ``debug_info_logging``: one record per expiry, with
   the stacks (the server leaves the expiry to it: ``Logged.BY_CALLBACK``).
2. Interrupt: :data:`~pytest_expire.signals.INTERRUPT_SIGNAL`, if the
   process handles it (a test may have reset it).
3. Kill, a grace period after the interrupt was really sent: the stacks
   again (with native frames), then the test's process is stopped, so that
   it cannot go on while its children die, then its descendants and it are
   killed. Never skipped because the watchdog was late: a kill owed is sent.

Every signal goes through the pidfd the server opened when the test's
process connected, so none reaches a process that reused its PID.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
import time
from pathlib import Path
from typing import NamedTuple

from pytest_expire import diagnose, dumps, offspring
from pytest_expire.report import child_expired, child_expired_heading, killing, notice
from pytest_expire.session_directory import child_expiries_path, is_supervised, write_diagnosis
from pytest_expire.signals import INTERRUPT_SIGNAL, handles, send
from pytest_expire.timer import debug_info_logging
from pytest_expire.timer.api import FileTimerRequest, Logged
from pytest_expire.timer.unix_socket_timer import UnixSocketTimerServer
from pytest_expire.verdict import VerdictPage, wall_clock
from pytest_expire.watchdog import TEST_SCOPE

logger = logging.getLogger(__name__)

# How often the grace period looks whether the interrupted test ended.
_POLL = 0.02
# How often an adopted deadline looks whether its test ended before it.
_ADOPTED_POLL = 0.1


class Escalation:
    """The server's ``on_expired``: one escalation thread per expired test."""

    def __init__(self, directory: Path, grace: float, run_id: str) -> None:
        self.directory = directory
        self.grace = grace
        self.run_id = run_id
        # Set once the server exists (it takes this object as its on_expired).
        self.server: UnixSocketTimerServer | None = None

    def __call__(self, pid: int, timers: list[FileTimerRequest]) -> str | Logged | None:
        token = next((t.expiration_time for t in timers if t.scope_id == TEST_SCOPE), None)
        if token is None:
            return self._child_expired(pid, timers)
        if self.server is None:
            return None
        page = VerdictPage.of(self.directory, pid)
        if page is None:
            logger.warning("process %d armed a test's timer but has no verdict page", pid)
            return None
        pidfd = self.server.worker_pidfd(pid)
        if pidfd is None:
            page.close()
            return None
        self._start(_Expiry(pid, pidfd, page, token, [timer.to_json() for timer in timers]))
        return Logged.BY_CALLBACK

    def _child_expired(self, pid: int, timers: list[FileTimerRequest]) -> str:
        """A process's own timers expired (the library used by a process a test started,
        through the session's watchdog): its stacks, before the server signals it.

        The server logs them through the debug-info hook; they also go into
        the report of the test that started the process, and the session is
        told in one line. Faulthandler's dump only (a second at most): the
        server's loop waits.
        """
        text = diagnose.stacks_of(self.directory, pid)
        scopes = ", ".join(repr(timer.scope_id) for timer in timers)
        owner = offspring.owner_of(self.directory, pid)
        if owner is None:
            notice(child_expired(pid, scopes))
        else:
            with open(child_expiries_path(self.directory, owner.owner), "a") as expiries:
                expiries.write(f"{child_expired_heading(pid, scopes)}\n{text}")
            page = VerdictPage.of(self.directory, owner.owner)
            if page is not None:
                page.note_joined()
                page.close()
            notice(child_expired(pid, scopes, owner.owner, owner.nodeid))
        return text

    def adopt_armed(self) -> int:
        """Take over the deadlines a watchdog that died left armed; how many there were.

        Call it before the server starts. A test's process that lost its
        watchdog arms its next deadline with the new one; the deadline it
        runs under now is only in its verdict page, and is escalated from
        there, at its time.
        """
        assert self.server is not None
        adopted = 0
        for path in self.directory.glob("verdict-*.bin"):
            try:
                pid = int(path.stem.partition("-")[2])
            except ValueError:
                continue
            page = VerdictPage.of(self.directory, pid)
            token = page.armed() if page is not None else 0.0
            pidfd = self.server.worker_pidfd(pid) if token else None
            if page is None or pidfd is None:
                if page is not None:
                    page.close()
                continue
            self._start(_Expiry(pid, pidfd, page, token, []), at=token)
            adopted += 1
        return adopted

    def _start(self, expiry: _Expiry, at: float | None = None) -> None:
        """Escalate in a thread of its own: at once, or once the wall clock reads ``at``."""

        def escalate() -> None:
            try:
                if at is None or _wait_until(at, expiry):
                    self._escalate(expiry)
            except Exception:
                logger.exception("the escalation of process %d's expired test failed", expiry.pid)
            finally:
                os.close(expiry.pidfd)
                expiry.page.close()

        threading.Thread(target=escalate, name=f"escalation-{expiry.pid}", daemon=True).start()

    def _escalate(self, expiry: _Expiry) -> None:
        pid, pidfd, page, token = expiry.pid, expiry.pidfd, expiry.page, expiry.token
        if page.armed() != token:
            return  # the test ended in time
        page.mark_expired(token)
        text = diagnose.stacks_of_test(self.directory, pid, page.test_started())
        write_diagnosis(self.directory, pid, token, text)
        debug_info_logging.log_debug_info_for_expired_timers(
            self.run_id, {pid: expiry.timers}, stacks={pid: text}
        )
        if page.armed() != token:
            return
        if handles(pid, INTERRUPT_SIGNAL):
            send(pidfd, INTERRUPT_SIGNAL)
        if not self._ends_within_grace(expiry):
            self._kill(expiry)

    def _ends_within_grace(self, expiry: _Expiry) -> bool:
        """Wait out the grace period from now; whether the test ended (or its process)."""
        kill_at = time.monotonic() + self.grace
        while expiry.page.armed() == expiry.token:
            remaining = kill_at - time.monotonic()
            if remaining <= 0:
                return False
            readable, _, _ = select.select([expiry.pidfd], [], [], min(remaining, _POLL))
            if readable:
                return True  # the process exited
        return True

    def _kill(self, expiry: _Expiry) -> None:
        pid, pidfd, page, token = expiry.pid, expiry.pidfd, expiry.page, expiry.token
        since = page.test_started()
        text = diagnose.stacks_of_test(self.directory, pid, since, native=True)
        # Stopped first: it cannot end the test (and report it passed) while
        # its children die, and the page cannot change any more.
        send(pidfd, signal.SIGSTOP)
        if page.armed() != token:
            send(pidfd, signal.SIGCONT)  # it ended the test while its stacks were read
            return
        write_diagnosis(self.directory, pid, token, text, killed=True)
        # Supervised, the stacks go into the test's report; otherwise this
        # is the last the user hears of the session.
        shown = None if is_supervised(self.directory) else dumps.render(dumps.parse(text))
        notice(killing(pid, self.grace, shown))
        logger.info(
            "%s; its stacks, read before the kill:\n%s", killing(pid, self.grace), text.rstrip()
        )
        offspring.kill_tree(self.directory, pid, since)
        send(pidfd, signal.SIGKILL)


class _Expiry(NamedTuple):
    """An expired test's process, as the escalation holds it."""

    pid: int
    #: Opened while the process was known: signals through it reach no other.
    pidfd: int
    page: VerdictPage
    #: The deadline that passed.
    token: float
    #: The expired timers, for the debug-info hook.
    timers: list[str]


def _wait_until(when: float, expiry: _Expiry) -> bool:
    """Wait until the wall clock reads ``when``; False if the test or its process ended first."""
    while expiry.page.armed() == expiry.token:
        remaining = when - wall_clock()
        if remaining <= 0:
            return True
        readable, _, _ = select.select([expiry.pidfd], [], [], min(remaining, _ADOPTED_POLL))
        if readable:
            return False
    return False
