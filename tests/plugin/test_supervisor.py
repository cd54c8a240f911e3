"""The forked workers of a supervised session: what the user sees is one ordinary run.

Each scenario runs a real pytest session (``python -m pytest``) whose
worker is really killed or crashes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET

import psutil
import pytest
from snippets import ARGS, FOLLOWER, HOLD_THE_GIL_FOREVER, wait_until_exists

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


def test_ctrl_c_reaches_the_worker_which_reports_the_interruption(
    pytester: pytest.Pytester,
) -> None:
    started = pytester.path / "started"
    pytester.makepyfile(
        test_suite=textwrap.dedent(
            f"""
            import time

            def test_passes():
                pass

            def test_waits():
                open({str(started)!r}, "w").close()
                time.sleep(3600)
            """
        )
    )
    session = subprocess.Popen(
        [sys.executable, "-m", "pytest", "--expire-default=600", "-p", "no:cacheprovider"],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a process group of its own, as a terminal's job
        text=True,
    )
    try:
        wait_until_exists(started, 60)
        descendants = psutil.Process(session.pid).children(recursive=True)
        os.killpg(session.pid, signal.SIGINT)
        output, _ = session.communicate(timeout=60)
    finally:
        if session.poll() is None:
            os.killpg(session.pid, signal.SIGKILL)
            session.wait()
    assert session.returncode == pytest.ExitCode.INTERRUPTED, output
    assert "KeyboardInterrupt" in output
    assert "1 passed" in output
    _, alive = psutil.wait_procs(descendants, timeout=10)
    assert not alive


def test_a_thread_at_the_end_of_collection_keeps_the_tests_in_process(
    pytester: pytest.Pytester,
) -> None:
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
    result.stdout.fnmatch_lines(["*2 threads run in this process*a test that must be killed*"])


def test_pytest_main_in_a_program_is_not_forked(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_suite="""
        import os

        def test_runs_in_the_program():
            assert os.environ["PYTEST_EXPIRE_OWNER"] == str(os.getpid())
        """
    )
    program = pytester.makepyfile(
        program="""
        import sys
        import pytest

        code = pytest.main(["--expire-default=30", "test_suite.py", "-p", "no:cacheprovider"])
        print("the program goes on after pytest.main:", int(code))
        sys.exit(code)
        """
    )
    result = pytester.run(sys.executable, program)
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*1 passed*", "the program goes on after pytest.main: 0"])
