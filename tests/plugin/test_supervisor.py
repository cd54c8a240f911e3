"""The forked workers of a supervised session: what the user sees is one ordinary run.

Each scenario runs a real pytest session (``python -m pytest``) whose
worker is really killed or crashes.
"""

from __future__ import annotations

import textwrap
import xml.etree.ElementTree as ET

import pytest
from snippets import ARGS, FOLLOWER, HOLD_THE_GIL_FOREVER

HANGS = HOLD_THE_GIL_FOREVER + textwrap.dedent(
    """
    import pytest

    @pytest.mark.expires(0.5)
    def test_hangs():
        hold_the_gil_forever()
    """
)


def test_with_markers_only_the_session_goes_on_after_a_kill(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=HANGS + FOLLOWER)
    result = pytester.runpytest_subprocess("--expire-grace=0.5", "--junitxml=report.xml")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_hangs expired after 0.5 s (in call); it did not stop*"])
    cases = ET.parse(pytester.path / "report.xml").getroot().iter("testcase")
    assert {case.get("name") for case in cases} == {"test_hangs", "test_still_runs"}


def test_a_crashed_test_is_reported_and_the_session_goes_on(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_suite=textwrap.dedent(
            """
            import os, signal

            def test_passes_first():
                pass

            def test_crashes():
                os.kill(os.getpid(), signal.SIGSEGV)
            """
        )
        + FOLLOWER
    )
    result = pytester.runpytest_subprocess("--expire-default=30", "-p", "no:faulthandler")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        ["*test_crashes: its process died in call (SIGSEGV); the session went on*"]
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_exitfirst_stops_at_the_killed_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=HANGS + FOLLOWER)
    result = pytester.runpytest_subprocess(*ARGS, "-x")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*stopping after 1 failures*"])
    result.stdout.no_fnmatch_line("*test_still_runs*")


def test_the_terminal_shows_each_test_once_and_the_run_as_pytest_does(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_suite=HANGS
        + textwrap.dedent(
            """
            def test_first_of_the_rest():
                pass

            def test_deselected():
                pass
            """
        ),
        test_before=textwrap.dedent(
            """
            import warnings

            def test_warns():
                warnings.warn(UserWarning("recorded by the killed worker"))
            """
        ),
    )
    result = pytester.runpytest_subprocess(
        *ARGS, "-v", "-p", "no:randomly", "-k", "not deselected", "-W", "default"
    )
    result.assert_outcomes(passed=2, failed=1, warnings=1, deselected=1)
    output = result.stdout.str()
    assert output.count("test session starts") == 1
    assert output.count("::test_warns PASSED") == 1
    assert output.count("::test_first_of_the_rest PASSED") == 1
    assert "recorded by the killed worker" in output


def test_a_thread_before_pytest_starts_keeps_the_tests_in_process(
    pytester: pytest.Pytester,
) -> None:
    # A conftest.py of the rootdir is imported before pytest_cmdline_main.
    pytester.makeconftest(
        """
        import threading
        threading.Thread(target=threading.Event().wait, daemon=True).start()
        """
    )
    pytester.makepyfile(
        """
        import os

        def test_runs_in_the_process_that_was_started():
            assert os.environ["PYTEST_EXPIRE_OWNER"] == str(os.getpid())
        """
    )
    result = pytester.runpytest_subprocess("--expire-default=30")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["*2 threads ran in this process when pytest started*a test that must be killed*"]
    )
