"""How an expired test reads: the short summary, the failure, the stacks, JUnit XML.

Real sessions, serially and with 2 xdist workers, whose reports must read the
same: ``expired after N s (in PHASE)`` on the short summary line and as JUnit's
message, the failure pointing where the test hung, the stacks folded (the
test's thread first, pytest's frames in one line) in the terminal and in
JUnit's ``<failure>``, whether the test was interrupted, ended late or killed.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from snippets import ARGS, FOLLOWER, GIL_HANG_SUITE, run_suite

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


def _failure(pytester: pytest.Pytester, module: str, name: str) -> ET.Element:
    """The JUnit failure of ``module``'s test ``name``."""
    cases = ET.parse(pytester.path / "report.xml").getroot().iter("testcase")
    (case,) = [
        case for case in cases if (case.get("classname"), case.get("name")) == (module, name)
    ]
    (failure,) = [child for child in case if child.tag == "failure"]
    return failure


def test_an_interrupted_a_late_and_a_killed_test(
    pytester: pytest.Pytester, workers: tuple[str, ...], marked: str
) -> None:
    # One session, each test in a module of its own with a test that must pass after it.
    pytester.makepyfile(
        test_interrupted=WAITS_IN_A_HELPER + FOLLOWER,
        test_ends_late=ENDS_LATE + FOLLOWER,
        test_killed=GIL_HANG_SUITE,
    )
    result = pytester.runpytest_subprocess(
        *ARGS, "-p", "no:randomly", "-rA", "--junitxml=report.xml", *workers, timeout=120
    )
    result.assert_outcomes(passed=3, failed=3)
    # Each module's follower passed; under xdist, in the order the workers ended them.
    for module in ("test_ends_late", "test_interrupted", "test_killed"):
        result.stdout.fnmatch_lines([f"PASSED {module}.py::test_still_runs"])
    assert "_pytest/runner.py" not in result.stdout.str()

    # Interrupted: its stacks, folded, where it waits.
    result.stdout.fnmatch_lines(
        [
            "*- expired: test_interrupted.py::test_hangs after 0.5 s -*",
            "--- process *: the test's process ---",
            'Thread 0x* "MainThread", the test\'s (most recent call first):',
            '  File "*test_interrupted.py", line 4 in wait_for_ever',
            '  File "*test_interrupted.py", line 7 in test_hangs',
            "  (* frames of pytest, pluggy*)",
        ]
    )
    result.stdout.fnmatch_lines(
        ["FAILED test_interrupted.py::test_hangs - expired after 0.5 s (in call)"]
    )
    failure = _failure(pytester, "test_interrupted", "test_hangs")
    assert failure.get("message") == "expired after 0.5 s (in call)"
    text = failure.text or ""
    assert "expired: test_interrupted.py::test_hangs after 0.5 s" in text
    assert "line 4 in wait_for_ever" in text

    # Ended past its deadline (it swallowed its interrupt): where it was.
    result.stdout.fnmatch_lines(
        [
            "*test_ends_late.py::test_hangs expired after 0.5 s (in call)",
            "where it was:",
            '  File "*test_ends_late.py", line 5 in test_hangs',
        ]
    )
    result.stdout.fnmatch_lines(
        ["FAILED test_ends_late.py::test_hangs - expired after 0.5 s (in call)"]
    )
    failure = _failure(pytester, "test_ends_late", "test_hangs")
    assert failure.get("message") == "expired after 0.5 s (in call)"

    # Killed: the kill said in full, where it hung, and the stacks taken before the kill.
    result.stdout.fnmatch_lines(
        ["FAILED test_killed.py::test_hangs - expired after 0.5 s (in call); killed"]
    )
    failure = _failure(pytester, "test_killed", "test_hangs")
    assert failure.get("message") == "expired after 0.5 s (in call); killed"
    text = failure.text or ""
    assert "it did not stop when interrupted and its process was killed 0.5 s later" in text
    assert "in hold_the_gil_forever" in text
    assert "expired: test_killed.py::test_hangs after 0.5 s" in text


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
    result = run_suite(pytester, NESTED_AWAITS, *ARGS, follower=True)
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
