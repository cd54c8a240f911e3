"""A worker that ends in the middle of the session, by any exit or signal, is a failed test.

Each scenario runs a real pytest session whose worker process really ends
early; the session goes on in a new worker and ends with one summary, one
JUnit XML and a failing exit status.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

# A deadline for every test: the session is supervised, and none expires.
ARGS = ("--expire-default=30", "-p", "no:randomly", "--junitxml=report.xml")


def _outcomes(pytester: pytest.Pytester) -> dict[str | None, str]:
    """Each test case of the JUnit XML and how it ended: passed, failure or error."""
    cases = ET.parse(pytester.path / "report.xml").getroot().iter("testcase")
    return {case.get("name"): next((child.tag for child in case), "passed") for case in cases}


def test_os_exit_in_a_test_fails_it_and_the_session_goes_on(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_suite="""
        import os
        import pytest

        @pytest.fixture
        def exits_at_teardown():
            yield
            os._exit(3)

        def test_passes_first():
            pass

        def test_exits():
            print("the last words")
            os._exit(0)

        def test_exits_in_teardown(exits_at_teardown):
            pass

        def test_still_runs():
            pass
        """
    )
    result = pytester.runpytest_subprocess(*ARGS)
    result.assert_outcomes(passed=3, failed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*test_exits: its process exited with status 0 in call; the session went on*",
            "*Captured stdout call*",
            "the last words",
        ]
    )
    result.stdout.fnmatch_lines(
        ["*test_exits_in_teardown: its process exited with status 3 in teardown*"]
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert _outcomes(pytester) == {
        "test_passes_first": "passed",
        "test_exits": "failure",
        "test_exits_in_teardown": "error",
        "test_still_runs": "passed",
    }


def test_a_worker_ended_by_a_real_time_signal_is_named(pytester: pytest.Pytester) -> None:
    # A real-time signal has no member in signal.Signals; its default action ends the process.
    pytester.makepyfile(
        test_suite="""
        import os, signal

        def test_signals_itself():
            os.kill(os.getpid(), signal.SIGRTMIN + 10)

        def test_still_runs():
            pass
        """
    )
    result = pytester.runpytest_subprocess(*ARGS)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*test_signals_itself: its process died in call (SIGRTMIN+10); the session went on*"]
    )
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    assert _outcomes(pytester) == {"test_signals_itself": "failure", "test_still_runs": "passed"}
