"""Under pytest-rerunfailures, an attempt that was killed is a failed attempt.

pytest-rerunfailures reports an attempt's setup, call and teardown only
once the attempt ended, and runs pytest_runtest_logfinish after each
attempt: a worker killed in an attempt has no report of it yet, and may
have finished an attempt before. The killed test fails in the phase it hung
in, whatever attempt it was in.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from snippets import ARGS, HOLD_THE_GIL_FOREVER


def test_a_killed_attempt_fails_the_test_in_its_phase(pytester: pytest.Pytester) -> None:
    pytest.importorskip("pytest_rerunfailures")
    attempted = pytester.path / "attempted"
    pytester.makepyfile(
        test_suite=HOLD_THE_GIL_FOREVER
        + f"""
import os, time

def test_hangs_in_each_attempt():
    hold_the_gil_forever()

def test_hangs_in_its_rerun():
    if not os.path.exists({str(attempted)!r}):
        open({str(attempted)!r}, "w").close()
        time.sleep(30)  # interrupted: a failed first attempt, rerun
    hold_the_gil_forever()

def test_still_runs():
    pass
"""
    )
    result = pytester.runpytest_subprocess(
        *ARGS, "--reruns", "1", "-p", "no:randomly", "--junitxml=report.xml"
    )
    assert result.parseoutcomes() == {"failed": 2, "passed": 1, "rerun": 1}
    result.stdout.fnmatch_lines(
        [
            "*test_hangs_in_each_attempt expired after 0.5 s (in call); it did not stop*",
            "*test_hangs_in_its_rerun expired after 0.5 s (in call); it did not stop*",
        ]
    )
    result.stdout.no_fnmatch_line("*ERROR at setup*")
    result.stdout.no_fnmatch_line("*died between two tests*")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    failed = {
        case.get("name")
        for case in ET.parse(pytester.path / "report.xml").getroot().iter("testcase")
        if case.find("failure") is not None
    }
    assert failed == {"test_hangs_in_each_attempt", "test_hangs_in_its_rerun"}
