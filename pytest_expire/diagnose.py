"""What the watchdog does at a deadline: collect the stacks of a test's processes, kill them.

Runs in the watchdog process only (``watchdog_process``), called by its
timer server when a test's timers expire, before the server sends their
signal (see ``watchdog`` for the two timers of a test).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import psutil

from pytest_expire import native_stacks, stacks
from pytest_expire.timer.file_based_local_timer import FileTimerRequest
from pytest_expire.watchdog import (
    INTERRUPT_SCOPE,
    KILL_SCOPE,
    diagnosis_path,
    helpers_path,
    is_supervised,
)


class Diagnose:
    """What the watchdog does when a test's timer expires, before the signal is sent.

    Runs in the watchdog process. At the interrupt, the stacks of the test's process and of its
    descendants are collected and written where the test's process will read
    them into its report; at the kill, the descendants are killed first, so
    none is orphaned when the test's process dies. A test killed is mostly
    stuck in C code, where its Python stacks end at the call into it: at the
    kill, the native frames of the test's process are collected as well.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __call__(self, pid: int, timers: list[FileTimerRequest]) -> str | None:
        scopes = {timer.scope_id for timer in timers}
        interrupted, killed = INTERRUPT_SCOPE in scopes, KILL_SCOPE in scopes
        if not (interrupted or killed):
            return None
        text = self.stacks_of_tree(pid, native=killed)
        if interrupted:
            _write_atomically(diagnosis_path(self.directory, pid), text)
        if killed:
            _write_atomically(diagnosis_path(self.directory, pid, killed=True), text)
            notice = (
                f"pytest-expire: the test running in process {pid} did not end after its "
                "interrupt; killing it"
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

    def stacks_of_tree(self, pid: int, native: bool = False) -> str:
        """The stacks of ``pid`` and of every process it started, as one text.

        With ``native``, the native frames of ``pid`` too: py-spy pauses it to
        read them, which only a process about to be killed can afford.
        """
        tree = self._tree(pid)
        if not tree:
            return f"process {pid} is gone\n"
        pids = [process.pid for process in tree]
        dumps = stacks.collect(self.directory, pids)
        spied = native_stacks.dump(
            [p for p in pids if p not in dumps], native=[pid] if native else []
        )
        unregistered = (
            "(no stacks: this process did not register for dumps; "
            "with py-spy installed, it is read from outside)\n"
        )
        # A process's own dump first, then what py-spy read of it.
        texts = {p: dumps.get(p, "") + spied.get(p, "") for p in dumps.keys() | spied.keys()}
        parts = [
            f"--- process {process.pid}: {_command_line(process)} ---\n"
            f"{texts.get(process.pid, unregistered)}"
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


def _read_pids(path: Path) -> list[int]:
    try:
        return [int(word) for word in path.read_text().split()]
    except (FileNotFoundError, ValueError):
        return []


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def _command_line(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline()) or process.name()
    except psutil.Error:
        return "?"


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
