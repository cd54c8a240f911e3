"""Stacks of processes that did not register for dumps, read from outside by py-spy.

A process the test started other than by forking (``subprocess``, a
``multiprocessing`` spawn) has no faulthandler registration of ours. py-spy
reads a Python process's stacks without its cooperation, through ptrace, so
the watchdog can still show where it waits. py-spy is optional (the
``native`` extra); without it, or where ptrace is not allowed, the report
says so. All processes are sampled at once, so the wait is that of the
slowest, not of their sum.

py-spy also reads a process's native (C) frames, between its Python ones:
where a test stuck in C code waits (a lock, a system call), which its
Python stacks end before. To unwind them it must pause the process
(``--nonblocking`` refuses ``--native``), so only a process about to be
killed is read so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Collection
from pathlib import Path

# py-spy attaches, reads and detaches in well under a second for one process;
# past this it is given up, so that the test's report is not held back.
_TIMEOUT = 3.0


def find_py_spy() -> str | None:
    """py-spy beside this interpreter (an unactivated virtual environment), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


def dump(pids: list[int], native: Collection[int] = ()) -> dict[int, str]:
    """The stacks py-spy reads of each of ``pids`` and ``native``, or why it could not.

    Those of ``native`` are read with their native frames too, in the same
    batch as the others, so that they add no wait of their own. Why a
    process's native frames are missing is said in one line: it goes under
    the Python stacks that faulthandler dumped, which stay the main text.
    """
    py_spy = find_py_spy()
    if py_spy is None:
        return dict.fromkeys(
            native, "(no native frames: py-spy, the native extra, is not installed)\n"
        )
    runs = {
        pid: subprocess.Popen(
            [py_spy, "dump", *(["--native"] if pid in native else []), "--pid", str(pid)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # Its errors in one line, even where CI sets RUST_BACKTRACE.
            env={**os.environ, "RUST_BACKTRACE": "0"},
        )
        for pid in dict.fromkeys([*pids, *native])
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
        # An error is one line, the first (a non-Python process: "Failed to
        # find python version"), however many py-spy writes.
        reason = output.strip().partition("\n")[0]
        if pid not in native:
            texts[pid] = (
                f"(read by py-spy)\n{output}"
                if run.returncode == 0
                else f"(no stacks: py-spy could not read them: {reason})\n"
            )
        elif run.returncode == 0:
            texts[pid] = f"native frames of process {pid} (py-spy --native):\n{output}"
        else:
            texts[pid] = f"(no native frames: py-spy could not read them: {reason})\n"
    return texts
