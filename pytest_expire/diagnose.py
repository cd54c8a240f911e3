"""What the watchdog reads of a test's processes at a deadline: their stacks, as one text.

Runs in the watchdog process only (``watchdog_main``), called by the
escalation of an expired test (``escalation``), which kills through
``offspring``.
"""

from __future__ import annotations

from pathlib import Path

import psutil

from pytest_expire import native_stacks, offspring, stacks

_UNREGISTERED = (
    "(no stacks: this process did not register for dumps; "
    "with py-spy installed, it is read from outside)\n"
)


def stacks_of_test(directory: Path, pid: int, since: int, native: bool = False) -> str:
    """The stacks of process ``pid`` and of every process its test started (``since``,
    ``offspring``), as one text.

    With ``native``, the native frames of ``pid`` too: py-spy pauses it to
    read them, which only a process about to be killed can afford.
    """
    try:
        processes = [psutil.Process(pid)]
    except psutil.Error:
        return f"process {pid} is gone\n"
    processes += [child.process for child in offspring.of_test(directory, pid, since)]
    return _stacks(directory, processes, native=[pid] if native else [], test_process=pid)


def stacks_of(directory: Path, pid: int) -> str:
    """The stacks of process ``pid`` alone."""
    try:
        return _stacks(directory, [psutil.Process(pid)], native=[])
    except psutil.Error:
        return f"process {pid} is gone\n"


def _stacks(
    directory: Path, processes: list[psutil.Process], native: list[int], test_process: int = 0
) -> str:
    """The stacks of ``processes`` (native frames too for those in ``native``), one text,
    each process under a header that ``dumps`` parses."""
    pids = [process.pid for process in processes]
    dumps = stacks.collect(directory, pids)
    spied = native_stacks.dump([p for p in pids if p not in dumps], native=native)
    # A process's own dump first, then what py-spy read of it.
    texts = {p: dumps.get(p, "") + spied.get(p, "") for p in dumps.keys() | spied.keys()}
    return "\n".join(
        f"--- process {process.pid} ({_role(process, test_process)}): "
        f"{_command_line(process)} ---\n"
        f"{texts.get(process.pid, _UNREGISTERED)}"
        for process in processes
    )


def _role(process: psutil.Process, test_process: int) -> str:
    """Which process it is, in its header: the test's or not, and its parent's PID."""
    try:
        parent = process.ppid()
    except psutil.Error:
        parent = 0
    role = "the test's process, " if process.pid == test_process else ""
    return f"{role}parent {parent}"


def _command_line(process: psutil.Process) -> str:
    try:
        return offspring.command_line(process)
    except psutil.Error:
        return "?"
