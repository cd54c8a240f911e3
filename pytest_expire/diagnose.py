"""What the watchdog reads and ends of a test's process tree: stacks, and the kill.

Runs in the watchdog process only (``watchdog_process``), called by the
escalation of an expired test (``escalation``).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil

from pytest_expire import native_stacks, stacks
from pytest_expire.watchdog import helpers_path

_UNREGISTERED = (
    "(no stacks: this process did not register for dumps; "
    "with py-spy installed, it is read from outside)\n"
)


def stacks_of_tree(directory: Path, pid: int, native: bool = False) -> str:
    """The stacks of ``pid`` and of every process it started, as one text.

    With ``native``, the native frames of ``pid`` too: py-spy pauses it to
    read them, which only a process about to be killed can afford.
    """
    processes = tree(directory, pid)
    if not processes:
        return f"process {pid} is gone\n"
    pids = [process.pid for process in processes]
    dumps = stacks.collect(directory, pids)
    spied = native_stacks.dump([p for p in pids if p not in dumps], native=[pid] if native else [])
    # A process's own dump first, then what py-spy read of it.
    texts = {p: dumps.get(p, "") + spied.get(p, "") for p in dumps.keys() | spied.keys()}
    return "\n".join(
        f"--- process {process.pid}: {_command_line(process)} ---\n"
        f"{texts.get(process.pid, _UNREGISTERED)}"
        for process in processes
    )


def tree(directory: Path, pid: int) -> list[psutil.Process]:
    """``pid`` and its descendants, less the session's own helper processes."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return []
    helpers = {os.getpid(), *_read_pids(helpers_path(directory))}
    return [process for process in processes if process.pid not in helpers]


def kill_descendants(directory: Path, pid: int) -> None:
    """SIGKILL every process ``pid`` started, the deepest first, none by a reused PID."""
    for process in reversed(tree(directory, pid)[1:]):
        _kill(process)


def _read_pids(path: Path) -> list[int]:
    try:
        return [int(word) for word in path.read_text().split()]
    except (FileNotFoundError, ValueError):
        return []


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
