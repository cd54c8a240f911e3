"""Test code shared by the plugin's tests: hangs that no interrupt ends, and waiting for them."""

from __future__ import annotations

import time
from pathlib import Path


def wait_until_exists(path: Path, seconds: float) -> None:
    """Wait for a file a test in another session writes once it has started."""
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared: the test never started"
        time.sleep(0.05)


HOLD_THE_GIL_FOREVER = """
import ctypes

def hold_the_gil_forever():
    # A second lock of a non-recursive mutex through PyDLL, which keeps the
    # GIL: no Python runs again in this process and no handler ever runs.
    libc = ctypes.PyDLL(None)
    mutex = ctypes.create_string_buffer(64)
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)
"""

FOLLOWER = """

def test_still_runs():
    assert True
"""

ARGS = ("--expire-default=0.5", "--expire-grace=0.5")
