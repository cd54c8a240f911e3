"""The session's watchdog: a timer server in a process of its own, and what it does at a deadline.

One watchdog per session, started by the process the user started. It must
act while the test's process is wedged (in C code that holds the GIL, say),
so it is a :class:`~pytest_expire.timer.unix_socket_timer.UnixSocketTimerServer`
run with ``start(process=True)``. Its address goes into the environment, so
every process of the session can reach it.

A test arms two timers (:class:`WatchdogClient`): at its deadline the
*interrupt* timer, whose expiry first collects the stacks of the test's
process and of every process it started (:class:`Diagnose`), then sends
:data:`~pytest_expire.interrupt.INTERRUPT_SIGNAL`; a grace period later the
*kill* timer, whose expiry kills what the test started and then the test's
process. A test that ends in time releases both.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing.resource_tracker
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import psutil

from pytest_expire import stacks
from pytest_expire.interrupt import INTERRUPT_SIGNAL
from pytest_expire.timer.file_based_local_timer import FileTimerRequest
from pytest_expire.timer.unix_socket_timer import (
    ADDRESS_ENV,
    UnixSocketTimerClient,
    UnixSocketTimerServer,
    format_address,
)

logger = logging.getLogger(__name__)

_KILL_SUFFIX = " [kill]"

#: Where the processes of a session find the directory they share with its watchdog.
DIRECTORY_ENV = "PYTEST_EXPIRE_DIRECTORY"
#: The PID of the process that started the watchdog: its workers are its children.
OWNER_ENV = "PYTEST_EXPIRE_OWNER"


class Diagnose:
    """What the watchdog does when a test's timer expires, before the signal is sent.

    Runs in the watchdog process (so it pickles: it holds only the session's
    directory). At the interrupt, the stacks of the test's process and of its
    descendants are collected and written where the test's process will read
    them into its report; at the kill, the descendants are killed first, so
    none is orphaned when the test's process dies.
    """

    def __init__(self, directory: Path, supervised: bool) -> None:
        self.directory = directory
        self.supervised = supervised

    def __call__(self, pid: int, timers: list[FileTimerRequest]) -> str | None:
        interrupts = [timer.scope_id for timer in timers if timer.signal == INTERRUPT_SIGNAL]
        kills = [
            timer.scope_id.removesuffix(_KILL_SUFFIX)
            for timer in timers
            if timer.scope_id.endswith(_KILL_SUFFIX)
        ]
        if not (interrupts or kills):
            return None
        text = self.stacks_of_tree(pid)
        for scope in interrupts:
            _write_atomically(diagnosis_path(self.directory, scope), text)
        for scope in kills:
            _write_atomically(diagnosis_path(self.directory, scope, killed=True), text)
        if kills:
            notice = (
                f"pytest-expire: {', '.join(kills)} did not end after its interrupt; killing it"
            )
            # Supervised, the stacks go into the test's report; otherwise this
            # is the last the user hears of the session.
            print(
                notice if self.supervised else f"{notice}. Its stacks:\n{text}",
                file=sys.stderr,
                flush=True,
            )
            for process in reversed(self._tree(pid)[1:]):
                _kill(process)
        return text

    def stacks_of_tree(self, pid: int) -> str:
        """The stacks of ``pid`` and of every process it started, as one text."""
        tree = self._tree(pid)
        if not tree:
            return f"process {pid} is gone\n"
        dumps = stacks.collect(self.directory, [process.pid for process in tree])
        unregistered = "(no stacks: this process did not register for dumps)\n"
        parts = [
            f"--- process {process.pid}: {_command_line(process)} ---\n"
            f"{dumps.get(process.pid, unregistered)}"
            for process in tree
        ]
        return "\n".join(parts)

    def _tree(self, pid: int) -> list[psutil.Process]:
        """``pid`` and its descendants, less the session's own helper processes."""
        try:
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return []
        helpers = {os.getpid(), *_read_pids(helpers_path(self.directory))}
        return [process for process in tree if process.pid not in helpers]


def diagnosis_path(directory: Path, scope: str, killed: bool = False) -> Path:
    """Where the stacks taken at the interrupt (or the kill) of test ``scope`` are written."""
    digest = hashlib.sha1(scope.encode(), usedforsecurity=False).hexdigest()[:20]
    return directory / f"{'killed' if killed else 'interrupted'}-{digest}.txt"


def read_diagnosis(directory: Path, scope: str, killed: bool = False) -> str:
    try:
        return diagnosis_path(directory, scope, killed).read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def _command_line(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline()) or process.name()
    except psutil.Error:
        return "?"


def helpers_path(directory: Path) -> Path:
    """Where the session lists its own processes (the watchdog's), never diagnosed or killed."""
    return directory / "helpers.pids"


def _read_pids(path: Path) -> list[int]:
    try:
        return [int(word) for word in path.read_text().split()]
    except (FileNotFoundError, ValueError):
        return []


def _kill(process: psutil.Process) -> None:
    """SIGKILL ``process`` through a pidfd, so a reused PID is never hit."""
    try:
        pidfd = os.pidfd_open(process.pid)
    except OSError:
        return
    try:
        # The pidfd is of the process psutil listed only if that still runs
        # with the same start time.
        if process.is_running():
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(pidfd)


class SessionWatchdog:
    """The watchdog process of a session and the directory it shares with the tests.

    Both are announced in the environment (:data:`ADDRESS_ENV`,
    :data:`DIRECTORY_ENV`), for the processes the session starts.
    """

    def __init__(self, supervised: bool) -> None:
        # A short path: a Unix socket's path is limited to 107 bytes.
        self.directory = Path(tempfile.mkdtemp(prefix="pytest-expire-"))
        self._server = UnixSocketTimerServer(
            address=format_address(str(self.directory / "watchdog.sock")),
            run_id="pytest-expire",
            on_expired=Diagnose(self.directory, supervised),
        )
        try:
            self._server.start(process=True)
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise
        helpers = [self._server.watchdog_pid, _resource_tracker_pid()]
        helpers_path(self.directory).write_text(" ".join(str(pid) for pid in helpers if pid))
        os.environ[ADDRESS_ENV] = self.address
        os.environ[DIRECTORY_ENV] = str(self.directory)
        os.environ[OWNER_ENV] = str(os.getpid())

    @property
    def address(self) -> str:
        return self._server.address

    def stop(self) -> None:
        if os.environ.get(ADDRESS_ENV) == self.address:
            for name in (ADDRESS_ENV, DIRECTORY_ENV, OWNER_ENV):
                os.environ.pop(name, None)
        self._server.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def _resource_tracker_pid() -> int | None:
    """multiprocessing's resource tracker, which starting the watchdog process started."""
    tracker = multiprocessing.resource_tracker._resource_tracker
    return getattr(tracker, "_pid", None)


class WatchdogClient:
    """A test process's link to the watchdog: arms and disarms a test's two timers."""

    def __init__(self, address: str) -> None:
        self._interrupt = UnixSocketTimerClient(address, signal=INTERRUPT_SIGNAL)
        self._kill = UnixSocketTimerClient(address, signal=signal.SIGKILL)

    def arm(self, scope: str, expiration_time: float, grace: float) -> None:
        self._interrupt.acquire(scope, expiration_time)
        self._kill.acquire(scope + _KILL_SUFFIX, expiration_time + grace)

    def disarm(self, scope: str) -> None:
        self._interrupt.release(scope)
        self._kill.release(scope + _KILL_SUFFIX)

    def close(self) -> None:
        self._interrupt.close()
        self._kill.close()
