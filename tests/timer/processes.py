"""Helpers for tests that start processes and wait on them."""

from __future__ import annotations

import multiprocessing.process
import select
import subprocess
import time
from collections.abc import Callable


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
