"""How an expired test reads: the short summary, the failure, the stacks, JUnit XML.

Real sessions, serially and with 2 xdist workers, whose reports must read the
same: ``expired after N s (in PHASE)`` on the short summary line and as JUnit's
message, the failure pointing where the test hung, the stacks folded (the
test's thread first, pytest's frames in one line) in the terminal and in
JUnit's ``<failure>``, whether the test was interrupted, ended late or killed.
"""

from __future__ import annotations

import textwrap
import xml.etree.ElementTree as ET

import pytest
from snippets import ARGS, FOLLOWER, GIL_HANG_SUITE

WAITS_IN_A_HELPER = """
import time

def wait_for_ever():
    time.sleep(3600)

def test_hangs():
    wait_for_ever()
"""

#: Swallows its interrupt and returns within the grace: it ended past its deadline.
ENDS_LATE = """
import time

def test_hangs():
    try:
        time.sleep(3600)
    except BaseException:
        pass
"""


@pytest.fixture(params=["serial", "xdist"])
def workers(request: pytest.FixtureRequest) -> tuple[str, ...]:
    if request.param == "xdist":
        pytest.importorskip("xdist")
        return ("-n", "2")
    return ()


def _failure(pytester: pytest.Pytester, name: str) -> ET.Element:
    cases = ET.parse(pytester.path / "report.xml").getroot().iter("testcase")
    (case,) = [case for case in cases if case.get("name") == name]
    (failure,) = [child for child in case if child.tag == "failure"]
    return failure


def _run(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_suite=textwrap.dedent(source) + FOLLOWER)
    return pytester.runpytest_subprocess(
        *ARGS, "-p", "no:randomly", "--junitxml=report.xml", *args, timeout=120
    )


def test_an_interrupted_test(
    pytester: pytest.Pytester, workers: tuple[str, ...], marked: str
) -> None:
    result = _run(pytester, WAITS_IN_A_HELPER, *workers)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*- expired: test_suite.py::test_hangs after 0.5 s -*",
            "--- process *: the test's process ---",
            'Thread 0x* "MainThread", the test\'s (most recent call first):',
            '  File "*test_suite.py", line 4 in wait_for_ever',
            '  File "*test_suite.py", line 7 in test_hangs',
            "  (* frames of pytest, pluggy*)",
        ]
    )
    result.stdout.fnmatch_lines(
        ["FAILED test_suite.py::test_hangs - expired after 0.5 s (in call)"]
    )
    assert "_pytest/runner.py" not in result.stdout.str()
    failure = _failure(pytester, "test_hangs")
    assert failure.get("message") == "expired after 0.5 s (in call)"
    text = failure.text or ""
    assert "expired: test_suite.py::test_hangs after 0.5 s" in text
    assert "line 4 in wait_for_ever" in text


def test_a_test_that_ended_past_its_deadline(
    pytester: pytest.Pytester, workers: tuple[str, ...], marked: str
) -> None:
    result = _run(pytester, ENDS_LATE, *workers)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_suite.py::test_hangs expired after 0.5 s (in call)",
            "where it was:",
            '  File "*test_suite.py", line 5 in test_hangs',
        ]
    )
    result.stdout.fnmatch_lines(
        ["FAILED test_suite.py::test_hangs - expired after 0.5 s (in call)"]
    )
    assert _failure(pytester, "test_hangs").get("message") == "expired after 0.5 s (in call)"


def test_a_killed_test(pytester: pytest.Pytester, workers: tuple[str, ...], marked: str) -> None:
    result = _run(pytester, GIL_HANG_SUITE, *workers)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["FAILED test_suite.py::test_hangs - expired after 0.5 s (in call); killed"]
    )
    failure = _failure(pytester, "test_hangs")
    assert failure.get("message") == "expired after 0.5 s (in call); killed"
    text = failure.text or ""
    # The kill said in full, where it hung, and the stacks taken before the kill.
    assert "it did not stop when interrupted and its process was killed 0.5 s later" in text
    assert "in hold_the_gil_forever" in text
    assert "expired: test_suite.py::test_hangs after 0.5 s" in text


NESTED_AWAITS = """
import asyncio

async def inner():
    await asyncio.Event().wait()

async def outer():
    await inner()

def test_hangs():
    asyncio.run(outer())
"""


def test_a_hung_coroutine_is_shown_down_to_its_innermost_await(
    pytester: pytest.Pytester, marked: str
) -> None:
    result = _run(pytester, NESTED_AWAITS)
    result.assert_outcomes(passed=1, failed=1)
    # Suspended, the coroutines are on no thread's stack: their task knows them.
    result.stdout.fnmatch_lines(
        [
            "asyncio tasks:",
            "Task 'Task-1' (outermost await first):",
            '  File "*test_suite.py", line 7 in outer',
            '  File "*test_suite.py", line 4 in inner',
            '  File "*locks.py", line * in wait',
            "  awaiting <Future pending*",
        ]
    )
