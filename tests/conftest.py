"""Fixtures and settings shared by the whole suite."""

from __future__ import annotations

import multiprocessing.resource_tracker
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

# The suite starts a thousand Python processes (the sessions under test, their
# workers, their children). Each compiles anew every module it imports, and
# pytest rewrites the asserts of every plugin's (this one's, hypothesis's)
# anew, when bytecode may not be written (PYTHONDONTWRITEBYTECODE, as some
# CI images and containers set it): half a second of CPU per pytest process.
# They write it, then, into a cache of their own outside the source tree.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
os.environ["PYTHONPYCACHEPREFIX"] = str(
    Path(tempfile.gettempdir()) / f"bytecode-of-the-pytest-expire-suite-{os.getuid()}"
)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: two workers per CPU. The suite's tests mostly wait (for
    deadlines to pass, processes to start and end), not compute: one worker
    per CPU leaves the CPUs half idle. PYTEST_XDIST_AUTO_NUM_WORKERS, where
    set, still decides (xdist's own implementation reads it)."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    return 2 * len(os.sched_getaffinity(0))


def _helper_pids() -> set[int]:
    """Long-lived helpers that multiprocessing starts once per process, not per test."""
    tracker_pid = getattr(multiprocessing.resource_tracker._resource_tracker, "_pid", None)
    return {tracker_pid} if tracker_pid else set()


@pytest.fixture(autouse=True)
def no_process_left_behind() -> Iterator[None]:
    """Fail a test that leaves a process behind, after killing what it left (by PID)."""
    me = psutil.Process(os.getpid())
    before = {child.pid for child in me.children(recursive=True)}
    yield
    left = [
        child
        for child in me.children(recursive=True)
        if child.pid not in before and child.pid not in _helper_pids()
    ]
    # A child that was just killed may still be on its way out.
    _, alive = psutil.wait_procs(left, timeout=2)
    for child in alive:
        child.kill()
    psutil.wait_procs(alive, timeout=2)
    assert not alive, f"the test left processes behind: {[p.pid for p in alive]}"
