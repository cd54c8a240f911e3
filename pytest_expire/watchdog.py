"""The session's watchdog as the pytest processes see it: started, reached, stopped.

One watchdog per session, started by the process the user started. It must
act while the test's process is wedged (in C code that holds the GIL, say),
so it is a :class:`~pytest_expire.timer.unix_socket_timer.UnixSocketTimerServer`
in a process of its own (``watchdog_process``). Its address goes into the
environment, so every process of the session can reach it.

A test's process arms one timer for its running test (``client``); when it
expires, the watchdog says so in the process's verdict page, collects the
stacks, interrupts, and kills after a grace period (``escalation``). The
stacks go into a *diagnosis file* named after the process, which the
process (or, after a kill, the supervisor) reads into the test's report;
each starts with the token of the deadline it is about, so that a later
test of the same process never shows an earlier one's stacks.

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

from pytest_expire.signals import name as signal_name
from pytest_expire.timer.lifetime import WATCHDOG_READY_TIMEOUT as _READY_TIMEOUT
from pytest_expire.timer.lifetime import WATCHDOG_STOP_TIMEOUT as _STOP_TIMEOUT
from pytest_expire.timer.unix_socket_timer import format_address

#: The scope of the one timer a test's process arms for its running test.
TEST_SCOPE = "test"

#: Where the processes of a session find its watchdog's timer server (its address).
ADDRESS_ENV = "PYTEST_EXPIRE_ADDRESS"
#: Where the processes of a session find the directory they share with its watchdog.
DIRECTORY_ENV = "PYTEST_EXPIRE_DIRECTORY"
#: The PID of the process that started the watchdog: its workers are its children.
OWNER_ENV = "PYTEST_EXPIRE_OWNER"

# What the watchdog process writes once clients can connect.
READY = b"ready\n"
# How many times revive() starts a new watchdog that dies as it starts.
_REVIVALS = 3
# How often a keeper thread looks whether the watchdog was stopped.
_WATCHDOG_CHECK = 1.0


def diagnosis_path(directory: Path, pid: int, killed: bool = False) -> Path:
    """Where the stacks taken at the interrupt (or the kill) of process ``pid``'s test go."""
    return directory / f"{'killed' if killed else 'interrupted'}-{pid}.txt"


def write_diagnosis(
    directory: Path, pid: int, token: float, text: str, killed: bool = False
) -> None:
    """Leave the stacks of the test whose deadline is ``token`` for its report, atomically."""
    path = diagnosis_path(directory, pid, killed)
    partial = path.with_suffix(".partial")
    partial.write_text(f"{token.hex()}\n{text}", encoding="utf-8")
    partial.replace(path)


def read_diagnosis(
    directory: Path, pid: int, killed: bool = False, token: float | None = None
) -> str | None:
    """The stacks taken at the interrupt (or the kill) of process ``pid``'s test.

    With ``token``, only those about that deadline. None if there are none
    (yet). The file is removed once read: the next test of that process to
    expire, or a later process with the same PID, must never find it.
    """
    taken = _take_diagnosis(diagnosis_path(directory, pid, killed), token)
    return None if taken is None else taken[1]


def read_kill(directory: Path, pid: int) -> tuple[float, str] | None:
    """The token of the deadline at which the watchdog killed process ``pid``'s test (the
    session's deadline, or the test's own: ``session_deadline``), and the stacks it took
    then; None if it killed none. Removed once read, as :func:`read_diagnosis` does."""
    return _take_diagnosis(diagnosis_path(directory, pid, killed=True), None)


def _take_diagnosis(path: Path, token: float | None) -> tuple[float, str] | None:
    try:
        header, _, text = path.read_text(encoding="utf-8").partition("\n")
    except FileNotFoundError:
        return None
    if token is not None and header != token.hex():
        return None  # about another deadline: the one asked about has none yet
    path.unlink(missing_ok=True)
    return float.fromhex(header), text


def child_expiries_path(directory: Path, pid: int) -> Path:
    """Where the stacks of the processes whose own timers expired go, for the report of
    the test that process ``pid`` runs (the test that started them)."""
    return directory / f"child-expiries-{pid}.txt"


def take_child_expiries(directory: Path, pid: int) -> str:
    """The stacks written to :func:`child_expiries_path` since last taken; "" if none."""
    path = child_expiries_path(directory, pid)
    try:
        # Renamed first: the watchdog may be appending another child's stacks.
        taken = path.rename(path.with_suffix(".taken"))
    except FileNotFoundError:
        return ""
    text = taken.read_text(encoding="utf-8", errors="replace")
    taken.unlink()
    return text


def mark_supervised(directory: Path) -> None:
    """Say that a killed test is reported by a process that survives it (with its stacks)."""
    (directory / "supervised").touch()


def is_supervised(directory: Path) -> bool:
    return (directory / "supervised").exists()


def helpers_path(directory: Path) -> Path:
    """Where the session lists its own processes (the watchdog's), never diagnosed or killed."""
    return directory / "helpers.pids"


def reaper_path(directory: Path) -> Path:
    """Where the session's child subreaper (its supervisor) leaves its PID."""
    return directory / "reaper.pid"


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
                "pytest_expire.watchdog_process",
                str(self.directory),
                str(self._owner),
                repr(self.grace),
                *([str(self.log)] if self.log is not None else []),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        helpers_path(self.directory).write_text(str(process.pid))
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


def notice(text: str) -> None:
    """Tell the user something on stderr, at once, in one line that names the plugin.

    On a line of its own: pytest's progress line (``test_suite.py ..F``) is
    still open when a deadline passes, and neither this process nor the
    watchdog knows its column; an empty line at worst.
    """
    sys.stderr.write(f"\npytest-expire: {text}\n")
    sys.stderr.flush()


def socket_path(directory: Path) -> Path:
    """Where the watchdog of the session with ``directory`` listens."""
    return directory / "watchdog.sock"
