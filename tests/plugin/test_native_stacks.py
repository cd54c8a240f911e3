"""Native frames at the kill: where in C a test that no interrupt ended was stuck.

A test killed is mostly stuck in C code, where its Python stacks end at the
call into it. At the kill (never at the interrupt, which must stay fast),
py-spy reads the test's process with its native frames; without py-spy, or
when it fails, the report says why in one line.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from snippets import ARGS, GIL_HANG_SUITE, skip_unless_py_spy_reads_processes

from pytest_expire import native_stacks


def test_c_code_holding_the_gil_is_reported_with_its_native_frames(
    pytester: pytest.Pytester,
) -> None:
    skip_unless_py_spy_reads_processes()
    pytester.makepyfile(test_suite=GIL_HANG_SUITE)
    result = pytester.runpytest_subprocess(*ARGS, timeout=120)
    result.assert_outcomes(passed=1, failed=1)
    # The lock's C frame, above the Python frame that called into it: only
    # py-spy's native dump has both (faulthandler's stacks end at the caller).
    result.stdout.fnmatch_lines(
        [
            "*expired: test_suite.py::test_hangs after 0.5 s*",
            "native frames of process * (py-spy --native):",
            "*pthread_mutex_lock (*",
            "*hold_the_gil_forever (test_suite.py:*",
        ]
    )
    result.stdout.no_fnmatch_line("*no native frames*")


def test_native_frames_are_not_read_at_the_interrupt(pytester: pytest.Pytester) -> None:
    skip_unless_py_spy_reads_processes()
    pytester.makepyfile(
        test_suite="""
        import time

        def test_sleeps():
            time.sleep(3600)
        """
    )
    result = pytester.runpytest_subprocess(*ARGS, timeout=120)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*expired: test_suite.py::test_sleeps after 0.5 s*"])
    result.stdout.no_fnmatch_line("*native frames*")


def test_why_py_spy_failed_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    if native_stacks.find_py_spy() is None:
        pytest.skip("py-spy is not installed (the native extra)")
    # Not a Python process: py-spy fails, and prints a backtrace under RUST_BACKTRACE.
    monkeypatch.setenv("RUST_BACKTRACE", "1")
    not_python = subprocess.Popen(["sleep", "60"])
    try:
        (text,) = native_stacks.dump([], native=[not_python.pid]).values()
    finally:
        not_python.kill()
        not_python.wait()
    assert text.startswith("(no native frames: py-spy could not read them: Error: "), text
    assert text.count("\n") == 1, text


def test_a_py_spy_past_its_timeout_is_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    if native_stacks.find_py_spy() is None:
        pytest.skip("py-spy is not installed (the native extra)")
    monkeypatch.setattr(native_stacks, "_TIMEOUT", 0.0)
    assert native_stacks.dump([], native=[os.getpid()]) == {
        os.getpid(): "(no native frames: py-spy could not read them: "
        "py-spy did not finish within 0 s)\n"
    }


def test_without_py_spy_the_report_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native_stacks, "find_py_spy", lambda: None)
    assert native_stacks.dump([os.getpid()], native=[os.getppid()]) == {
        os.getppid(): "(no native frames: py-spy, the native extra, is not installed)\n"
    }
