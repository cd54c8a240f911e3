"""The watchdog's word on a test's deadline, shared with the test's process.

Whether a test ran past its deadline must not depend on anything the code
under test can patch or replace: not ``time.time`` (freezegun,
``monkeypatch``), not a signal handler it installs, not an interrupt it
swallows. So the watchdog, in a process of its own, says it: each test
process of the session has a *verdict page*, a small file in the session's
directory that both map shared, holding five numbers:

- ``armed``: the token of the deadline the process has armed now (0: none),
  written by the test's process as it arms and disarms;
- ``expired``: the token of the last deadline the watchdog found passed,
  written by the watchdog before it does anything else about it;
- ``started``: when the process started (``/proc`` clock ticks), so that a
  process that reuses the PID of a dead one is never taken for it;
- ``test started``: when its running test started (:func:`boot_ticks`), so
  that the processes started since are the test's (``offspring``);
- ``joined``: set by a process that joined the session on behalf of this
  one (``registry``), so that the end of a test looks for the processes it
  started only if it started some.

A deadline's *token* is its expiration time as armed, kept apart from the
tokens the watchdog may still speak of (:class:`Tokens`), and the timer the
watchdog holds carries it bit for bit. The test's process reads the page at
the end of each phase and in its interrupt handler (a load from memory:
nothing per test but that); the watchdog reads ``armed`` to know whether
the expired test is still running before it interrupts or kills.

Times come from :data:`wall_clock`, the real-time clock taken when this
module was imported: a test that patches ``time.time`` does not move it
(nor the plugin's waits: :data:`monotonic_clock`, :data:`sleep`).
This module imports neither pytest nor psutil: both sides import it.
"""

from __future__ import annotations

import functools
import math
import mmap
import os
import time
from pathlib import Path

#: ``time.time()`` that no patch of the ``time`` module reaches (freezegun replaces
#: ``time.time`` and every module attribute bound to it, not this).
wall_clock = functools.partial(time.clock_gettime, time.CLOCK_REALTIME)
#: ``time.monotonic()`` and ``time.sleep()`` likewise, for the plugin's own
#: waits in a test's process: a test may replace ``time.monotonic`` with a
#: fake clock that raises, or ``time.sleep`` with one that returns at once.
monotonic_clock = functools.partial(time.clock_gettime, time.CLOCK_MONOTONIC)
sleep = functools.partial(time.sleep)
_boot_clock = functools.partial(time.clock_gettime, time.CLOCK_BOOTTIME)
_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")

_ARMED, _EXPIRED, _STARTED, _TEST_STARTED, _JOINED = range(5)
_SIZE = 5 * 8


def page_path(directory: Path, pid: int) -> Path:
    return directory / f"verdict-{pid}.bin"


def start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks after boot (field 22 of ``/proc/PID/stat``)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            line = stat.read()
    except OSError:  # no such process
        return None
    # The command name (field 2, in parentheses) may hold spaces and parentheses.
    return int(line[line.rindex(b")") + 2 :].split()[19])


def boot_ticks() -> int:
    """Now, in the clock of :func:`start_time`: a process started at or after this
    moment has a start time of at least this."""
    return int(_boot_clock() * _TICKS_PER_SECOND)


class VerdictPage:
    """A process's verdict page: its own side (created) or the watchdog's (opened)."""

    __slots__ = ("_map", "_view")

    def __init__(self, path: Path, create: bool = False) -> None:
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT | os.O_TRUNC if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, _SIZE)
            self._map = mmap.mmap(fd, _SIZE)
        finally:
            os.close(fd)
        # Aligned 8-byte loads and stores: a reader never sees half a number.
        self._view = memoryview(self._map).cast("d")

    @classmethod
    def create(cls, directory: Path) -> VerdictPage:
        """This process's page, new and empty."""
        page = cls(page_path(directory, os.getpid()), create=True)
        page._view[_STARTED] = float(start_time(os.getpid()) or 0)
        return page

    @classmethod
    def of(cls, directory: Path, pid: int) -> VerdictPage | None:
        """The page of the process ``pid`` now names, if that very process made it."""
        try:
            page = cls(page_path(directory, pid))
        except (OSError, ValueError):
            return None
        started = start_time(pid)
        if started is None or page._view[_STARTED] != float(started):
            page.close()
            return None
        return page

    # The test's process.

    def arm(self, token: float) -> None:
        self._view[_ARMED] = token

    def begin_test(self) -> int:
        """A test starts: the processes started from now on are its own; now, in ticks."""
        now = boot_ticks()
        self._view[_TEST_STARTED] = now
        return now

    def take_joined(self) -> bool:
        """Whether a process joined the session on this one's behalf since last asked."""
        if self._view[_JOINED]:
            self._view[_JOINED] = 0.0
            return True
        return False

    def disarm(self) -> None:
        self._view[_ARMED] = 0.0

    def expired(self, token: float) -> bool:
        """Whether the watchdog found the deadline ``token`` passed."""
        return self._view[_EXPIRED] == token

    # The watchdog.

    def armed(self) -> float:
        """The token of the deadline armed now; 0.0 if none."""
        return self._view[_ARMED]

    def mark_expired(self, token: float) -> None:
        self._view[_EXPIRED] = token

    def test_started(self) -> int:
        """When the running test started (:func:`boot_ticks`)."""
        return int(self._view[_TEST_STARTED])

    # A process that joined the session.

    def note_joined(self) -> None:
        self._view[_JOINED] = 1.0

    def close(self) -> None:
        self._view.release()
        self._map.close()


class Tokens:
    """Deadline tokens of one process: expiration times, none equal to the one before.

    The watchdog only ever holds, and so only ever says expired, the token
    this process armed last (a nested session's deadlines aside: they are
    all armed at once, and each is new). A new token must therefore differ
    from the last one and from the page's ``expired``; two deadlines armed in
    the same clock tick would otherwise share one.
    """

    __slots__ = ("_last", "_page")

    def __init__(self, page: VerdictPage) -> None:
        self._page = page
        self._last = 0.0

    def new(self, seconds: float, limit: float = math.inf) -> float:
        """``seconds`` from now, or ``limit`` (the session's deadline) if that comes first:
        then the token is ``limit``, or just past it, never before."""
        token = min(wall_clock() + seconds, limit)
        while token == self._last or self._page.expired(token):
            token = math.nextafter(token, math.inf)
        self._last = token
        return token
