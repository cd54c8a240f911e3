"""Helpers for tests that start processes and wait on them."""

from __future__ import annotations

import multiprocessing.process
import os
import random
import select
import subprocess
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

import pytest

# Starting a process with a chosen PID races with every other process that
# starts meanwhile: the tests of other xdist workers start them in bursts.
# Tries go on this long, a short random pause apart, to outlast a burst.
_PID_TRIES_FOR = 15.0
_PID_PAUSE = 0.02


def wait_until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll ``condition`` until it is true; fail the test after ``timeout`` seconds."""
    give_up_at = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > give_up_at:
            raise AssertionError(f"not true after {timeout} s: {condition}")
        time.sleep(0.005)


def read_line(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> str:
    """The next line ``proc`` prints, within ``timeout``."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"process {proc.pid} printed nothing within {timeout} s"
    return proc.stdout.readline().decode().strip()


def join_or_kill(process: multiprocessing.process.BaseProcess, timeout: float) -> int | None:
    """The exit code of ``process`` within ``timeout``; None if it had to be killed."""
    process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join()
        return None
    return process.exitcode


class _Process(Protocol):
    @property
    def pid(self) -> int | None: ...


P = TypeVar("P", bound=_Process)


def start_with_pid(pid: int, start: Callable[[], P], discard: Callable[[P], None]) -> P:
    """A process started by ``start()`` that got PID ``pid``: a real PID reuse.

    ``pid`` must be free (its process reaped). The kernel hands out the PID
    after the last one it handed out; setting that to ``pid - 1``
    (``ns_last_pid``, as CRIU does) makes the next process get ``pid``, unless
    another process of the machine starts in between: then the process is
    discarded and this tries again. Setting it takes CAP_SYS_ADMIN (root):
    without it the test is skipped.
    """
    give_up_at = time.monotonic() + _PID_TRIES_FOR
    while time.monotonic() < give_up_at:
        try:
            with open("/proc/sys/kernel/ns_last_pid", "w") as last_pid:
                last_pid.write(str(pid - 1))
        except OSError as exc:
            pytest.skip(f"cannot choose the next PID: {exc}")
        if os.path.exists(f"/proc/{pid}"):
            # Another process (or thread) won a race for it: wait for its end.
            time.sleep(_PID_PAUSE)
            continue
        process = start()
        if process.pid == pid:
            return process
        discard(process)
        time.sleep(random.uniform(0, _PID_PAUSE))
    raise AssertionError(f"no process got PID {pid} in {_PID_TRIES_FOR} s")
