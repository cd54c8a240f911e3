"""Hangs that no interrupt ends: the test's process is killed, the session goes on.

The process the user started supervises a worker that runs the tests; these
sessions kill that worker and must still end with one summary, one complete
JUnit XML and one exit code.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import textwrap
import time
import xml.etree.ElementTree as ET

import psutil
import pytest
from snippets import (
    ARGS,
    FOLLOWER,
    GIL_HANG_SUITE,
    HOLD_THE_GIL_FOREVER,
    SWALLOWS_EVERY_INTERRUPT,
    pytest_job,
    wait_until_exists,
)


def test_c_code_holding_the_gil_is_killed_and_reported(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=GIL_HANG_SUITE)
    result = pytester.runpytest_subprocess(*ARGS, "--junitxml=report.xml", timeout=120)
    result.assert_outcomes(passed=1, failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*test_suite.py::test_hangs expired after 0.5 s (in call); it did not stop when "
            "interrupted and its process was killed 0.5 s later*",
            "*expired: test_suite.py::test_hangs after 0.5 s*",
        ]
    )
    # The stacks were taken while the GIL was held.
    assert "in hold_the_gil_forever" in result.stdout.str()
    cases = ET.parse(pytester.path / "report.xml").getroot().iter("testcase")
    outcomes = {case.get("name"): {child.tag for child in case} for case in cases}
    assert set(outcomes) == {"test_hangs", "test_still_runs"}
    assert "failure" in outcomes["test_hangs"]
    assert not outcomes["test_still_runs"] & {"failure", "error"}


def test_a_test_that_swallows_the_interrupt_is_killed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SWALLOWS_EVERY_INTERRUPT + FOLLOWER)
    result = pytester.runpytest_subprocess(*ARGS, timeout=120)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_hangs expired after 0.5 s (in call); it did not stop*"])


def test_a_hang_in_setup_holding_the_gil_is_an_error_in_setup(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_suite=HOLD_THE_GIL_FOREVER
        + textwrap.dedent(
            """
            import pytest

            @pytest.fixture
            def stuck():
                hold_the_gil_forever()

            def test_hangs(stuck):
                pass
            """
        )
        + FOLLOWER
    )
    result = pytester.runpytest_subprocess(*ARGS, timeout=120)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*test_hangs expired after 0.5 s (in setup)*"])


def test_several_kills_in_one_session(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_suite=HOLD_THE_GIL_FOREVER
        + textwrap.dedent(
            """
            import pytest

            @pytest.mark.parametrize("i", range(3))
            def test_hangs(i):
                hold_the_gil_forever()

            @pytest.mark.parametrize("i", range(3))
            def test_passes(i):
                pass
            """
        )
    )
    result = pytester.runpytest_subprocess(*ARGS, "-p", "no:randomly", timeout=120)
    result.assert_outcomes(passed=3, failed=3)


def test_processes_a_killed_test_started_are_killed(pytester: pytest.Pytester) -> None:
    pid_file = pytester.path / "child.pid"
    pytester.makepyfile(
        test_suite=HOLD_THE_GIL_FOREVER
        + textwrap.dedent(
            f"""
            import subprocess, sys

            def test_hangs():
                child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
                with open({str(pid_file)!r}, "w") as file:
                    file.write(str(child.pid))
                hold_the_gil_forever()
            """
        )
        + FOLLOWER
    )
    result = pytester.runpytest_subprocess(*ARGS, timeout=120)
    result.assert_outcomes(passed=1, failed=1)
    child_pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while psutil.pid_exists(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not psutil.pid_exists(child_pid) or (
        psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE
    )


def test_nothing_outlives_a_session_killed_with_sigkill(pytester: pytest.Pytester) -> None:
    started = pytester.path / "started"
    pytester.makepyfile(
        test_suite=textwrap.dedent(
            f"""
            import time

            def test_long():
                open({str(started)!r}, "w").close()
                time.sleep(3600)
            """
        )
    )
    with pytest_job(pytester.path, "--expire-default=600", "-p", "no:cacheprovider") as session:
        wait_until_exists(started, 30)
        descendants = psutil.Process(session.pid).children(recursive=True)
        assert len(descendants) >= 2  # the watchdog and the worker at least
        session.send_signal(signal.SIGKILL)
        session.wait()
        _, alive = psutil.wait_procs(descendants, timeout=10)
        assert not alive, [process.cmdline() for process in alive]


def test_an_endless_loop_in_c_holding_the_gil_is_killed(pytester: pytest.Pytester) -> None:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the endless loop with")
    source = pytester.path / "spin.c"
    source.write_text('void spin(void) { for (;;) { __asm__ volatile(""); } }\n')
    library = pytester.path / "libspin.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-O1", "-o", library, source], check=True)
    pytester.makepyfile(
        test_suite=textwrap.dedent(
            f"""
            import ctypes

            def test_spins_in_c():
                ctypes.PyDLL({str(library)!r}).spin()  # PyDLL: the GIL stays held
            """
        )
        + FOLLOWER
    )
    result = pytester.runpytest_subprocess(*ARGS, timeout=120)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*test_spins_in_c expired after 0.5 s (in call); it did not stop*"]
    )
    assert "in test_spins_in_c" in result.stdout.str()
