"""What the watchdog says reaches the user: its log file, other plugins' hook, its notices.

Real sessions in subprocesses: the debug-info hook's records (with the
stacks) and each kill in the ``--expire-log`` file, serially and under
xdist; ``pytest_expire_expired`` implemented in a conftest, its section in
the failure and in JUnit XML whichever process makes the report; the
watchdog's notices on lines of their own, never inside the progress line.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET

import pytest
from snippets import ARGS, FOLLOWER, GIL_HANG_SUITE, HOLD_THE_GIL_FOREVER

SLEEPS = """
import time

def test_sleeps():
    time.sleep(3600)
"""


def test_the_debug_info_hook_and_the_kills_reach_the_log(
    pytester: pytest.Pytester, workers: tuple[str, ...], marked: str
) -> None:
    pytester.makepyfile(test_suite=GIL_HANG_SUITE + SLEEPS)
    (pytester.path / "watchdog.log").write_text("left from an earlier run\n")
    result = pytester.runpytest_subprocess(
        *ARGS, "--expire-log=watchdog.log", "-p", "no:randomly", *workers, timeout=120
    )
    result.assert_outcomes(passed=1, failed=2)
    log = (pytester.path / "watchdog.log").read_text()
    assert "left from an earlier run" not in log
    # Per expired test, one record of the debug-info hook, with its stacks.
    assert log.count("INFO pytest_expire.timer.debug_info_logging [watchdog ") == 2
    assert log.count("Timers expired for run:[pytest-expire]") == 2
    assert log.count("--- stacks of worker ") == 2
    assert "in test_sleeps" in log
    assert "in hold_the_gil_forever" in log
    # The kill, with the stacks read before it.
    assert "did not end 0.5 s after its interrupt; killing it; its stacks, read before" in log


def test_the_ini_names_the_log_relative_to_where_pytest_starts(
    pytester: pytest.Pytester, marked: str
) -> None:
    pytester.makeini("[pytest]\nexpire_log = logs/watchdog.log\n")
    (pytester.path / "logs").mkdir()
    pytester.makepyfile(test_suite=SLEEPS)
    result = pytester.runpytest_subprocess(*ARGS, timeout=120)
    result.assert_outcomes(failed=1)
    assert "in test_sleeps" in (pytester.path / "logs" / "watchdog.log").read_text()


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("missing/watchdog.log", "*--expire-log: the directory of 'missing/watchdog.log' *"),
        (".", "*--expire-log: '.' is a directory, not a file*"),
        ("", "*--expire-log: expected a file path, got ''*"),
    ],
)
def test_a_log_that_cannot_be_written_is_a_usage_error(
    pytester: pytest.Pytester, value: str, error: str
) -> None:
    pytester.makepyfile("def test_ok(): pass")
    result = pytester.runpytest_subprocess(f"--expire-log={value}", timeout=60)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([error])


#: A plugin that adds its own state to every expired test's report.
ADDS_ITS_STATE = """
def pytest_expire_expired(report, expiry):
    return (
        "state of my plugin",
        f"{report.nodeid}: {expiry['action']} in {expiry['phase']} after {expiry['deadline']} s; "
        f"stacks of {expiry['stacks'].count('--- process ')} process(es)",
    )
"""


def test_other_plugins_add_their_state_to_the_report(
    pytester: pytest.Pytester, workers: tuple[str, ...], marked: str
) -> None:
    # One session: a test interrupted, one killed, each in a module of its own.
    pytester.makeconftest(ADDS_ITS_STATE)
    pytester.makepyfile(
        test_interrupted=SLEEPS + FOLLOWER,
        test_killed=HOLD_THE_GIL_FOREVER
        + "\ndef test_sleeps():\n    hold_the_gil_forever()\n"
        + FOLLOWER,
    )
    result = pytester.runpytest_subprocess(
        *ARGS, "--junitxml=report.xml", "-p", "no:randomly", *workers, timeout=120
    )
    result.assert_outcomes(passed=2, failed=2)
    cases = ET.parse(pytester.path / "report.xml").getroot().iter("testcase")
    failures = {
        case.get("classname"): child for case in cases for child in case if child.tag == "failure"
    }
    assert set(failures) == {"test_interrupted", "test_killed"}
    for action in ("interrupted", "killed"):
        said = (
            f"test_{action}.py::test_sleeps: {action} in call after 0.5 s; stacks of 1 process(es)"
        )
        result.stdout.fnmatch_lines(["*- state of my plugin -*", said])
        assert said in (failures[f"test_{action}"].text or "")


def test_a_hook_that_fails_loses_nothing(
    pytester: pytest.Pytester, workers: tuple[str, ...], marked: str
) -> None:
    pytester.makeconftest("def pytest_expire_expired(report, expiry):\n    raise KeyError('x')\n")
    pytester.makepyfile(test_suite=SLEEPS + FOLLOWER)
    result = pytester.runpytest_subprocess(*ARGS, "-p", "no:randomly", *workers, timeout=120)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*- pytest_expire_expired failed -*", "KeyError: 'x'"])
    result.stdout.fnmatch_lines(
        ["FAILED test_suite.py::test_sleeps - expired after 0.5 s (in call)"]
    )


def test_the_watchdogs_notices_are_never_inside_the_progress_line(
    pytester: pytest.Pytester, marked: str
) -> None:
    # Unsupervised (started from a program), the kill's notice is all the user sees.
    pytester.makepyfile(test_suite=GIL_HANG_SUITE)
    session = subprocess.run(
        [sys.executable, "-m", "pytest", *ARGS, "-p", "no:randomly", "test_suite.py"],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
    )
    lines = session.stdout.splitlines()
    notices = [line for line in lines if "pytest-expire: " in line]
    assert any("killing it" in line for line in notices), session.stdout
    assert all(line.startswith("pytest-expire: ") for line in notices), textwrap.indent(
        session.stdout, "  "
    )
