"""A test process's link to its session's watchdog: one per process, shared by nested sessions.

A process that runs tests arms, for the test it runs, one timer with the
watchdog (scope ``watchdog.TEST_SCOPE``, no signal of the server's own: what
happens at the deadline is the watchdog's escalation, ``escalation``). The
timer's expiration time is the deadline's token (``verdict``), which the
process also writes into its verdict page, where the watchdog writes its
word back. Arming is one write of bytes made ahead
(``UnixSocketTimerClient.prepare``) and one store into the page.

One link serves every pytest session of the process: a session run inside a
test (pytester's in-process runs, ``pytest.main()`` from a test) arms its
tests' deadlines inside the outer test's, and the watchdog holds the
earliest of them. The interrupt handler, the dump registration and the
verdict page are the process's, so a nested session's end must not undo
them: the link is closed when its last session ends. A forked child starts
without a link (its parent's deadlines are not its own).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_expire import interrupt, stacks
from pytest_expire.interrupt import Deadline
from pytest_expire.registry import TEST_PROCESS_ENV, TestStarts
from pytest_expire.report import notice
from pytest_expire.timer.unix_socket_timer import TimerServerError, UnixSocketTimerClient
from pytest_expire.verdict import (
    Tokens,
    VerdictPage,
    monotonic_clock,
    page_path,
    sleep,
    wall_clock,
)
from pytest_expire.watchdog import TEST_SCOPE

if TYPE_CHECKING:
    from pytest_expire.session_deadline import SessionDeadline

# How long a process waits for a new watchdog once it found its own gone
# (one watchdog start: an interpreter and a few imports), and how often it tries.
_RECONNECT_TIMEOUT = 10.0
_RECONNECT_POLL = 0.05


class Link:
    """This process's timer on the watchdog, its verdict page, and its armed deadlines."""

    def __init__(self, address: str, directory: Path, revive: Callable[[], object]) -> None:
        self.directory = directory
        self._revive = revive
        self._client = self._new_client(address)
        self._timer = self._client.prepare([(TEST_SCOPE, 0)])
        self.page = VerdictPage.create(directory)
        self._tokens = Tokens(self.page)
        self._sessions = 0
        self._lost: str | None = None
        #: When each test started: who started a process that did not join the session.
        self.test_starts = TestStarts()
        stacks.register(directory)
        # The processes the tests start join the session on this one's behalf.
        os.environ[TEST_PROCESS_ENV] = str(os.getpid())
        interrupt.on_debugger = self.pause
        interrupt.install(self.page)

    def _new_client(self, address: str) -> UnixSocketTimerClient:
        """A client of the watchdog at ``address``; if that is gone, of the new one its
        owner starts (see :meth:`_reconnect`), waited for a while."""
        waited_until = monotonic_clock() + _RECONNECT_TIMEOUT
        revived = False
        while True:
            try:
                # Signal 0: the server itself signals nobody; the escalation does.
                return UnixSocketTimerClient(address, signal=0)
            except TimerServerError:
                if monotonic_clock() >= waited_until:
                    raise
                if not revived:
                    self._revive()
                    revived = True
                sleep(_RECONNECT_POLL)

    def arm(
        self, nodeid: str, seconds: float | None, session: SessionDeadline | None = None
    ) -> Deadline:
        """Arm a deadline of ``seconds`` from now for test ``nodeid``, or the ``session``'s
        deadline if that comes first (or the test has none of its own)."""
        deadline = Deadline(nodeid, seconds, session)
        self._new_token(deadline)
        if not interrupt.armed:
            # The processes started from now on are this test's (a nested
            # session's tests run inside it).
            self.test_starts.add(self.page.begin_test(), nodeid)
        interrupt.armed.append(deadline)
        if self._publish():
            # The wait for a new watchdog was the plugin's, not the test's.
            self._new_token(deadline)
            self._publish()
        return deadline

    def renew(self, deadline: Deadline) -> None:
        """Give ``deadline`` its whole time again, from now (a rerun, or back from a debugger),
        as far as the session's deadline allows."""
        if deadline.spent and len(interrupt.armed) == 1:
            # A new attempt at the test.
            self.test_starts.add(self.page.begin_test(), deadline.nodeid)
        self._new_token(deadline, restart=deadline.spent)
        deadline.paused = False
        deadline.expired_in = None
        deadline.spent = False
        deadline.notes.clear()
        self._publish()

    def _new_token(self, deadline: Deadline, restart: bool = True) -> None:
        """Its token from now: its seconds, or the session's deadline if that comes first.
        ``restart``: its test starts now (a new attempt), for what its report says."""
        if restart:
            deadline.started = wall_clock()
        seconds = math.inf if deadline.seconds is None else deadline.seconds
        limit = math.inf if deadline.session is None else deadline.session.end
        deadline.token = self._tokens.new(seconds, limit)

    def suspend(self, deadline: Deadline) -> None:
        """The test of ``deadline`` ended its teardown: off the clock until it ends, or
        until a plugin that reruns it (pytest-rerunfailures) starts the next attempt,
        which :meth:`renew` gives a deadline of its own (a delay between two
        attempts is charged to neither)."""
        deadline.spent = True
        self._publish()

    def pause(self, deadline: Deadline) -> None:
        """Stop ``deadline``'s clock: someone is looking at its test in a debugger."""
        deadline.paused = True
        self._publish()

    def disarm(self, deadline: Deadline) -> None:
        """The test of ``deadline`` ended."""
        armed = interrupt.armed
        for position in range(len(armed) - 1, -1, -1):
            if armed[position] is deadline:
                del armed[position]
                break
        if armed or not deadline.spent:  # else its suspension published it gone already
            self._publish()

    def expired(self, deadline: Deadline) -> bool:
        """Whether ``deadline`` passed: the watchdog said so, or it is behind this clock.

        The clock is ``verdict.wall_clock``, which no patch of ``time`` reaches;
        it catches a phase that ended after its deadline before the watchdog
        got to it. A debugger changes how a deadline is enforced, not whether
        it passed: a test found under one is neither interrupted nor killed,
        but if it ends late it fails (pytest's own debugger gives the test
        its whole deadline again when it continues, see :meth:`renew`).
        """
        return self.page.expired(deadline.token) or wall_clock() >= deadline.token

    def _publish(self) -> bool:
        """Hold the earliest running deadline with the watchdog, or none; whether that
        meant waiting for a new watchdog.

        None is the page's word alone, with no request: the watchdog acts on
        an expired timer only while the page shows its token armed, and the
        next deadline armed replaces the timer. So a test costs one write.
        """
        tokens = [d.token for d in interrupt.armed if not (d.paused or d.spent)]
        if not tokens:
            self.page.disarm()
            return False
        token = min(tokens)
        self.page.arm(token)
        try:
            self._timer.acquire(token)
        except TimerServerError as exc:
            return self._reconnect(token, exc)
        return False

    def _reconnect(self, token: float, exc: TimerServerError) -> bool:
        """The watchdog is gone: have it revived, and hold the deadline with the new one.

        Its owner starts a new one (this process, through ``revive``, or a
        supervisor or an xdist controller that watches it), which adopts the
        deadline the page shows armed. Waited for once per loss; a watchdog
        that does not come back is said once, and the tests go on, their
        verdicts kept by this process's clock.
        """
        if self._lost is None:
            self._revive()
            waited_until = monotonic_clock() + _RECONNECT_TIMEOUT
            while True:
                try:
                    self._timer.acquire(token)
                    return True
                except TimerServerError as again:
                    exc = again
                if monotonic_clock() >= waited_until:
                    break
                sleep(_RECONNECT_POLL)
            self._lost = str(exc)
            notice(
                f"{exc}; the tests of process {os.getpid()} go on without their watchdog "
                "(no stacks, no interrupt, no kill; a test that ends after its deadline "
                "still fails)"
            )
            return True
        with contextlib.suppress(TimerServerError):
            self._timer.acquire(token)
            self._lost = None
        return False

    def join(self) -> Link:
        """A session of this process uses the link; it will :meth:`leave` it."""
        self._sessions += 1
        return self

    @property
    def nested(self) -> bool:
        """Whether more than one session uses the link (the others run inside a test)."""
        return self._sessions > 1

    def leave(self) -> None:
        """A session is done with the link; the last one closes it."""
        global _link
        self._sessions -= 1
        if self._sessions == 0:
            if _link is self:
                _link = None
            self.close()

    def close(self) -> None:
        """Undo what the link did to the process: timer, handler, dump registration, page."""
        interrupt.uninstall()
        interrupt.on_debugger = None
        stacks.unregister()
        if os.environ.get(TEST_PROCESS_ENV) == str(os.getpid()):
            del os.environ[TEST_PROCESS_ENV]
        with contextlib.suppress(TimerServerError):
            self._timer.release()
        self._client.close()
        self.page.close()
        page_path(self.directory, os.getpid()).unlink(missing_ok=True)


_link: Link | None = None


def new_link(address: str, directory: Path, revive: Callable[[], object]) -> Link:
    """Link this process to the watchdog at ``address``; :func:`current_link` from now on.

    ``revive`` is called when the watchdog is found gone: it starts a new
    one if this process owns it (others' owners watch theirs).
    """
    global _link
    assert _link is None, "a process has one link"
    _link = Link(address, directory, revive)
    return _link


def current_link() -> Link | None:
    """The link of this process, if a session opened one."""
    return _link


def _forget_in_child() -> None:
    """A forked child runs none of its parent's tests: no link, no armed deadline."""
    global _link
    if _link is not None:
        _link = None
        interrupt.armed.clear()


os.register_at_fork(after_in_child=_forget_in_child)
