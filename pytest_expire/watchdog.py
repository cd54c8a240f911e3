"""The session's watchdog process as the pytest processes see it: started, revived, stopped.

One watchdog per session, started by the process the user started. It must
act while the test's process is wedged (in C code that holds the GIL, say),
so it is a :class:`~pytest_expire.timer.unix_socket_timer.UnixSocketTimerServer`
in a process of its own (``watchdog_main``). Its address and the
directory it shares with the tests (``session_directory``) go into the
environment, so every process of the session can reach it.

A test's process arms one timer for its running test (``client``); when it
expires, the watchdog says so in the process's verdict page, collects the
stacks, interrupts, and kills after a grace period (``escalation``).

This module is imported by every pytest process of a session, so it imports
neither pytest (the watchdog process imports it too, and starts faster
without) nor what only the watchdog needs (psutil, py-spy).
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from pytest_expire.report import notice
from pytest_expire.session_directory import (
    ADDRESS_ENV,
    DIRECTORY_ENV,
    OWNER_ENV,
    record_helpers,
    socket_path,
)
from pytest_expire.signals import name as signal_name
from pytest_expire.timer.lifetime import WATCHDOG_READY_TIMEOUT as _READY_TIMEOUT
from pytest_expire.timer.lifetime import WATCHDOG_STOP_TIMEOUT as _STOP_TIMEOUT
from pytest_expire.timer.unix_socket_timer import format_address

#: The scope of the one timer a test's process arms for its running test.
TEST_SCOPE = "test"

# What the watchdog process writes once clients can connect.
READY = b"ready\n"
# How many times revive() starts a new watchdog that dies as it starts.
_REVIVALS = 3
# How often a keeper thread looks whether the watchdog was stopped.
_WATCHDOG_CHECK = 1.0


class SessionWatchdog:
    """The watchdog process of a session and the directory it shares with the tests.

    Both are announced in the environment (:data:`ADDRESS_ENV`,
    :data:`DIRECTORY_ENV`, and :data:`OWNER_ENV`: this process), for the
    processes the session starts. The process is started at once and
    awaited only by :meth:`wait_ready`, so that it starts while pytest
    collects.
    """

    def __init__(self, grace: float, log: Path | None = None) -> None:
        # A short path: a Unix socket's path is limited to 107 bytes.
        self.directory = Path(tempfile.mkdtemp(prefix="pytest-expire-"))
        self.address = format_address(str(socket_path(self.directory)))
        self.grace = grace
        #: Where the watchdog logs what it does (``--expire-log``), if anywhere.
        self.log = log
        self._owner = os.getpid()
        self._stopped = False
        try:
            self._process = self._launch()
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise
        os.environ[ADDRESS_ENV] = self.address
        os.environ[DIRECTORY_ENV] = str(self.directory)
        os.environ[OWNER_ENV] = str(os.getpid())

    def _launch(self) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pytest_expire.watchdog_main",
                str(self.directory),
                str(self._owner),
                repr(self.grace),
                *([str(self.log)] if self.log is not None else []),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        record_helpers(self.directory, [process.pid])
        self._ready = False
        return process

    @property
    def pid(self) -> int:
        """The watchdog process's PID (a new one after :meth:`revive`)."""
        return self._process.pid

    def wait_ready(self) -> None:
        """Return once the watchdog accepts clients; raise if it failed to start."""
        if self._ready:
            return
        answer = self._await_ready()
        if answer != READY:
            self.stop()
            raise RuntimeError(
                "the session's watchdog process did not start "
                f"(it said {answer!r}; its errors, if any, are above)"
            )

    def _await_ready(self) -> bytes:
        """What the watchdog process said once it could take clients (``READY``), or b""."""
        assert self._process.stdout is not None
        readable, _, _ = select.select([self._process.stdout], [], [], _READY_TIMEOUT)
        answer = self._process.stdout.readline() if readable else b""
        self._process.stdout.close()
        self._ready = answer == READY
        return answer

    def revive(self) -> bool:
        """Start a new watchdog at the same address if this one died; whether it had.

        Something killed it (a test, a cleanup fixture, the OOM killer): the
        session goes on with a new one, which takes over the deadlines its
        clients had armed (``Escalation.adopt_armed``), and the loss is said
        once, here. A new one that dies while it starts is started again, a
        few times; then the session goes on without a watchdog, and says so.
        Never raises: it runs in a supervisor's wait, or a keeper thread.
        """
        if self._stopped or os.getpid() != self._owner or self._process.poll() is None:
            return False
        code = self._process.returncode
        how = f"killed by {signal_name(-code)}" if code < 0 else f"exit status {code}"
        for _ in range(_REVIVALS):
            if self._process.stdout is not None:
                self._process.stdout.close()
            try:
                self._process = self._launch()
            except OSError as error:
                notice(f"the session's watchdog process ended ({how}); starting another: {error}")
                break
            if self._await_ready() == READY:
                notice(
                    f"the session's watchdog process ended ({how}); "
                    f"a new one (process {self._process.pid}) took over"
                )
                return True
            self._process.kill()
            self._process.wait()
        notice(
            f"the session's watchdog process ended ({how}) and no new one would start: "
            "the tests go on without one (no stacks, no interrupt, no kill; a test that "
            "ends after its deadline still fails)"
        )
        self._stopped = True
        return True

    def resume(self) -> None:
        """Let a stopped watchdog go on (something sent it SIGSTOP): a stopped
        watchdog looks alive, and enforces nothing."""
        if self._stopped or os.getpid() != self._owner or self._process.poll() is not None:
            return
        try:
            with open(f"/proc/{self._process.pid}/stat", "rb") as stat:
                state = stat.read().rpartition(b")")[2].split()[0]
        except (OSError, IndexError):
            return
        if state in (b"T", b"t"):
            # Our child, not reaped: its PID cannot have been reused.
            os.kill(self._process.pid, signal.SIGCONT)
            notice(f"the session's watchdog (process {self._process.pid}) was stopped; resumed it")

    def keep_alive(self) -> None:
        """Revive the watchdog whenever it dies, from a thread of this process.

        For a process that has threads anyway and waits on nothing else (an
        xdist controller); a supervisor watches the watchdog in its own wait.
        """

        def watch() -> None:
            while not self._stopped:
                process = self._process
                try:
                    process.wait(_WATCHDOG_CHECK)
                except subprocess.TimeoutExpired:
                    self.resume()
                    continue
                if not self.revive() and process is self._process:
                    return

        threading.Thread(target=watch, name="pytest-expire-keeper", daemon=True).start()

    def stop(self) -> None:
        """Stop the watchdog; in a forked copy of the process that started it, do nothing."""
        if os.getpid() != self._owner:
            return
        self._stopped = True
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


def begin_log(path: Path) -> None:
    """Empty the watchdog's log file as the session begins: its watchdogs append to it
    (one started after another died goes on where that one stopped)."""
    path.write_bytes(b"")
