"""Test code the plugin's tests share: hangs no interrupt ends, running a suite, waiting,
probing py-spy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from pytest_expire import native_stacks

#: Put into the environment of a session under test (see the ``marked`` fixture):
#: every process it starts carries it, wherever it went.
MARK = "PYTEST_EXPIRE_TEST_MARK"


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

#: A test that swallows every interrupt: only a kill ends it.
SWALLOWS_EVERY_INTERRUPT = """
import time

def test_hangs():
    while True:
        try:
            time.sleep(3600)
        except BaseException:
            pass
"""

FOLLOWER = """

def test_still_runs():
    assert True
"""

#: A test that holds the GIL in C code forever, then one that must still run.
GIL_HANG_SUITE = (
    HOLD_THE_GIL_FOREVER
    + """

def test_hangs():
    hold_the_gil_forever()
"""
    + FOLLOWER
)

ARGS = ("--expire-default=0.5", "--expire-grace=0.5")


def run_suite(
    pytester: pytest.Pytester,
    source: str,
    *args: str,
    follower: bool = False,
    timeout: float = 120,
) -> pytest.RunResult:
    """A pytest session in a subprocess of ``source`` as ``test_suite.py``, then of
    ``FOLLOWER`` (a test that must still run) if asked, its tests in the order written."""
    pytester.makepyfile(test_suite=textwrap.dedent(source) + (FOLLOWER if follower else ""))
    return pytester.runpytest_subprocess("-p", "no:randomly", *args, timeout=timeout)


@contextmanager
def pytest_job(
    directory: Path, *args: str, output: bool = False
) -> Iterator[subprocess.Popen[str]]:
    """``python -m pytest`` in ``directory``, in a process group of its own (as a terminal's
    job), with its output in a pipe or discarded; its whole group is killed if still there."""
    stream = subprocess.PIPE if output else subprocess.DEVNULL
    session = subprocess.Popen(
        [sys.executable, "-m", "pytest", *args],
        cwd=directory,
        stdout=stream,
        stderr=subprocess.STDOUT if output else subprocess.DEVNULL,
        start_new_session=True,
        text=True,
    )
    try:
        yield session
    finally:
        if session.poll() is None:
            os.killpg(session.pid, signal.SIGKILL)
            session.communicate()


def skip_unless_py_spy_reads_processes() -> None:
    """Skip where py-spy is missing or may not ptrace (a container, Yama's ptrace_scope)."""
    py_spy = native_stacks.find_py_spy()
    if py_spy is None:
        pytest.skip("py-spy is not installed (the native extra)")
    # py-spy reads its parent, not a descendant, as the watchdog's reads the test's process:
    # Yama's ptrace_scope 1 refuses both alike.
    probe = subprocess.run(
        [py_spy, "dump", "--native", "--pid", str(os.getpid())],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        reason = (probe.stderr or probe.stdout).strip().partition("\n")[0]
        pytest.skip(f"py-spy cannot read a process here: {reason}")


def marked_processes(mark: str) -> list[psutil.Process]:
    """The running processes whose environment carries ``mark`` (zombies ended already)."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            if process.pid == os.getpid() or process.status() == psutil.STATUS_ZOMBIE:
                continue
            if process.environ().get(MARK) == mark:
                found.append(process)
        except psutil.Error:
            continue
    return found
