"""The session's watchdog: a timer server in a process of its own, and what it does at a deadline.

One watchdog per session, started by the process the user started. It must
act while the test's process is wedged (in C code that holds the GIL, say),
so it is a :class:`~pytest_expire.timer.unix_socket_timer.UnixSocketTimerServer`
in a process of its own (``watchdog_process``). Its address goes into the
environment, so every process of the session can reach it.

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
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

from pytest_expire import native_stacks, stacks
from pytest_expire.interrupt import INTERRUPT_SIGNAL
from pytest_expire.timer.file_based_local_timer import FileTimerRequest
from pytest_expire.timer.unix_socket_timer import (
    ADDRESS_ENV,
    UnixSocketTimerClient,
    format_address,
)

logger = logging.getLogger(__name__)

_KILL_SUFFIX = " [kill]"

#: Where the processes of a session find the directory they share with its watchdog.
DIRECTORY_ENV = "PYTEST_EXPIRE_DIRECTORY"
#: The PID of the process that started the watchdog: its workers are its children.
OWNER_ENV = "PYTEST_EXPIRE_OWNER"

# What the watchdog process writes once clients can connect.
READY = b"ready\n"
# How long its start may take: an interpreter and the timer server's imports,
# well under a second on an idle machine, but CI machines are not idle.
_READY_TIMEOUT = 30.0
# How long stop() waits for it before killing it.
_STOP_TIMEOUT = 2.0


class Diagnose:
    """What the watchdog does when a test's timer expires, before the signal is sent.

    Runs in the watchdog process. At the interrupt, the stacks of the test's process and of its
    descendants are collected and written where the test's process will read
    them into its report; at the kill, the descendants are killed first, so
    none is orphaned when the test's process dies.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

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
                notice if is_supervised(self.directory) else f"{notice}. Its stacks:\n{text}",
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
        dumps.update(native_stacks.dump([p.pid for p in tree if p.pid not in dumps]))
        unregistered = (
            "(no stacks: this process did not register for dumps; "
            "with py-spy installed, it is read from outside)\n"
        )
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


def mark_supervised(directory: Path) -> None:
    """Say that a killed test is reported by a process that survives it (with its stacks)."""
    (directory / "supervised").touch()


def is_supervised(directory: Path) -> bool:
    return (directory / "supervised").exists()


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
    :data:`DIRECTORY_ENV`, and :data:`OWNER_ENV`: this process), for the
    processes the session starts. The process is started at once and
    awaited only by :meth:`wait_ready`, so that it starts while pytest
    collects.
    """

    def __init__(self) -> None:
        # A short path: a Unix socket's path is limited to 107 bytes.
        self.directory = Path(tempfile.mkdtemp(prefix="pytest-expire-"))
        self.address = format_address(str(socket_path(self.directory)))
        self._ready = False
        self._owner = os.getpid()
        try:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pytest_expire.watchdog_process",
                    str(self.directory),
                    str(os.getpid()),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
            )
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise
        helpers_path(self.directory).write_text(str(self._process.pid))
        os.environ[ADDRESS_ENV] = self.address
        os.environ[DIRECTORY_ENV] = str(self.directory)
        os.environ[OWNER_ENV] = str(os.getpid())

    def wait_ready(self) -> None:
        """Return once the watchdog accepts clients; raise if it failed to start."""
        if self._ready:
            return
        assert self._process.stdout is not None
        readable, _, _ = select.select([self._process.stdout], [], [], _READY_TIMEOUT)
        answer = self._process.stdout.readline() if readable else b""
        self._process.stdout.close()
        if answer != READY:
            self.stop()
            raise RuntimeError(
                "pytest-expire: the watchdog process did not start "
                f"(it said {answer!r}; its errors, if any, are above)"
            )
        self._ready = True

    def stop(self) -> None:
        """Stop the watchdog; in a forked copy of the process that started it, do nothing."""
        if os.getpid() != self._owner:
            return
        if os.environ.get(ADDRESS_ENV) == self.address:
            for name in (ADDRESS_ENV, DIRECTORY_ENV, OWNER_ENV):
                os.environ.pop(name, None)
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def socket_path(directory: Path) -> Path:
    """Where the watchdog of the session with ``directory`` listens."""
    return directory / "watchdog.sock"


class WatchdogClient:
    """A test process's link to the watchdog: arms and disarms a test's two timers.

    Both go in one message each way: one system call to arm, one to disarm.
    """

    def __init__(self, address: str) -> None:
        self._client = UnixSocketTimerClient(address, signal=INTERRUPT_SIGNAL)

    def arm(self, scope: str, expiration_time: float, grace: float) -> None:
        self._client.acquire_many(
            (
                (scope, expiration_time, INTERRUPT_SIGNAL),
                (scope + _KILL_SUFFIX, expiration_time + grace, signal.SIGKILL),
            )
        )

    def disarm(self, scope: str) -> None:
        self._client.release_many((scope, scope + _KILL_SUFFIX))

    def close(self) -> None:
        self._client.close()
