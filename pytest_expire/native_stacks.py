"""Stacks of processes that did not register for dumps, read from outside by py-spy.

A process the test started other than by forking (``subprocess``, a
``multiprocessing`` spawn) has no faulthandler registration of ours. py-spy
reads a Python process's stacks without its cooperation, through ptrace, so
the watchdog can still show where it waits. py-spy is optional (the
``native`` extra); without it, or where ptrace is not allowed, the report
says so. All processes are sampled at once, so the wait is that of the
slowest, not of their sum.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

# py-spy attaches, reads and detaches in well under a second for one process;
# past this it is given up, so that the test's report is not held back.
_TIMEOUT = 3.0


def find_py_spy() -> str | None:
    """py-spy beside this interpreter (an unactivated virtual environment), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


def dump(pids: list[int]) -> dict[int, str]:
    """The stacks py-spy reads of each of ``pids``, or why it could not."""
    py_spy = find_py_spy()
    if py_spy is None or not pids:
        return {}
    runs = {
        pid: subprocess.Popen(
            [py_spy, "dump", "--pid", str(pid)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for pid in pids
    }
    deadline = time.monotonic() + _TIMEOUT
    texts = {}
    for pid, run in runs.items():
        try:
            output, _ = run.communicate(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            run.kill()
            run.communicate()
            output = f"py-spy did not finish within {_TIMEOUT:g} s\n"
        texts[pid] = (
            f"(read by py-spy)\n{output}"
            if run.returncode == 0
            else (f"(no stacks: py-spy could not read them: {output.strip()})\n")
        )
    return texts
