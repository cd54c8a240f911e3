"""The deadline of the whole run (``--expire-session``): real sessions, serially and with
2 xdist workers.

When it passes, the test running then expires (with its stacks; killed if it
does not stop), the tests not started do not start and the summary says how
many, the JUnit XML is complete, and the run does not exit 0. One deadline for
the run: a supervised session that goes on in a new worker after a kill keeps
its supervisor's.
"""

from __future__ import annotations

import importlib.util
import re
import textwrap
import time
import xml.etree.ElementTree as ET

import pytest
from snippets import HOLD_THE_GIL_FOREVER, run_suite

#: One test that passes, then tests that hang (each worker of two starts one at least).
HANGS_AFTER_ONE = """
import time

def test_first():
    pass

def test_hangs():
    time.sleep(3600)

def test_hangs_too():
    time.sleep(3600)

def test_later_1():
    pass

def test_later_2():
    pass

def test_later_3():
    pass
"""

#: The same, the first to hang holding the GIL in C code: only a kill ends it.
STUCK_IN_C_AFTER_ONE = HOLD_THE_GIL_FOREVER + HANGS_AFTER_ONE.replace(
    "def test_hangs():\n    time.sleep(3600)",
    "def test_hangs():\n    hold_the_gil_forever()",
)

PASSES = """
def test_one():
    pass

def test_two():
    pass
"""

#: What the summary says above its last line: why the session stopped, and how many
#: tests did not run (pytest's words for a stopped session, then xdist's).
STOPPED = "!* *Interrupted: pytest-expire: the session's deadline (--expire-session=2) passed: "
SESSION_EXPIRED = r"expired after ([\d.]+) s \(in call\): the session's deadline \({}\) passed"

without_pytest_timeout = pytest.mark.skipif(
    importlib.util.find_spec("pytest_timeout") is not None,
    reason="pytest-timeout is installed here: its names are its own",
)


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short summary lines in full: pytest cuts them to the terminal's width."""
    monkeypatch.setenv("COLUMNS", "300")


def _run(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    return run_suite(pytester, source, "--expire-grace=0.5", "--junitxml=report.xml", *args)


def _cases(pytester: pytest.Pytester) -> dict[str, list[ET.Element]]:
    """Each JUnit test case by name: what it holds (a failure, say)."""
    root = ET.parse(pytester.path / "report.xml").getroot()
    return {case.get("name") or "": list(case) for case in root.iter("testcase")}


def _seconds_given(result: pytest.RunResult, label: str) -> list[float]:
    """The time each test expired at the session's deadline had, as its report says."""
    pattern = re.compile(f"FAILED .* - {SESSION_EXPIRED.format(re.escape(label))}")
    return [float(found[1]) for line in result.outlines if (found := pattern.search(line))]


def test_the_running_test_expires_and_the_rest_do_not_run(
    pytester: pytest.Pytester, workers: tuple[str, ...], marked: str
) -> None:
    """No deadline but the session's: a watchdog is there for it all the same."""
    result = _run(pytester, HANGS_AFTER_ONE, "--expire-session=2", *workers)
    # Serially one test hangs at the deadline, with two workers one in each.
    failed = 2 if workers else 1
    result.assert_outcomes(passed=1, failed=failed)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        [
            "*- expired: test_suite.py::test_hangs after * s -*",
            "--- process *: the test's process ---",
            'Thread 0x* "MainThread", the test\'s (most recent call first):',
            '  File "*test_suite.py", line 7 in test_hangs',
        ]
    )
    result.stdout.fnmatch_lines([f"{STOPPED}{5 - failed} tests not run !*"])
    given = _seconds_given(result, "--expire-session=2")
    assert len(given) == failed
    assert all(0 < seconds <= 2 for seconds in given)
    cases = _cases(pytester)
    assert len(cases) == 1 + failed
    assert cases["test_first"] == []
    (failure,) = cases["test_hangs"]
    message = failure.get("message") or ""
    assert re.fullmatch(SESSION_EXPIRED.format("--expire-session=2"), message), message
    assert "line 7 in test_hangs" in (failure.text or "")
    assert not {"test_later_1", "test_later_2", "test_later_3"} & set(cases)


def test_a_test_stuck_in_c_at_the_deadline_is_killed_and_the_run_reports(
    pytester: pytest.Pytester, workers: tuple[str, ...], marked: str
) -> None:
    result = _run(pytester, STUCK_IN_C_AFTER_ONE, "--expire-session=2", *workers)
    failed = 2 if workers else 1
    result.assert_outcomes(passed=1, failed=failed)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        [
            "*test_suite.py::test_hangs expired after * s (in call): the session's deadline "
            "(--expire-session=2) passed; it did not stop when interrupted and its process "
            "was killed 0.5 s later"
        ]
    )
    result.stdout.fnmatch_lines([f"{STOPPED}{5 - failed} tests not run !*"])
    (failure,) = _cases(pytester)["test_hangs"]
    message = failure.get("message") or ""
    assert message.endswith("(--expire-session=2) passed; killed"), message
    assert "in hold_the_gil_forever" in (failure.text or "")


def test_the_deadline_is_the_supervisors_across_workers(
    pytester: pytest.Pytester, marked: str
) -> None:
    """The first test that hangs is killed at its own deadline, and the session goes on in
    a new worker: the next one to hang expires at the session's deadline counted from the
    start of the run, not from the new worker's."""
    source = STUCK_IN_C_AFTER_ONE.replace(
        "def test_hangs():", "@pytest.mark.expires(0.5)\ndef test_hangs():"
    )
    result = _run(pytester, f"import pytest\n{source}", "--expire-session=3")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        ["FAILED test_suite.py::test_hangs - expired after 0.5 s (in call); killed"]
    )
    (given,) = _seconds_given(result, "--expire-session=3")
    # The kill came 1 s into the run at least (0.5 s, then the grace): the new worker's
    # test had what was left of the 3 s, not 3 s less the new worker's start.
    assert given < 2.2
    result.stdout.fnmatch_lines(
        [
            "!* Interrupted: pytest-expire: the session's deadline (--expire-session=3) passed: "
            "3 tests not run !*"
        ]
    )


def test_a_run_that_ends_before_its_deadline_is_unaffected(
    pytester: pytest.Pytester, workers: tuple[str, ...], marked: str
) -> None:
    result = _run(pytester, PASSES, "--expire-session=30", *workers)
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        ["expire: no default deadline, grace 0.5 s, session deadline 30 s (--expire-session)"]
    )
    assert "Interrupted" not in result.stdout.str()


def test_a_tests_own_deadline_before_the_sessions_is_its_own(
    pytester: pytest.Pytester, marked: str
) -> None:
    result = _run(pytester, HANGS_AFTER_ONE, "--expire-session=30", "--expire-default=0.5")
    result.assert_outcomes(passed=4, failed=2)
    result.stdout.fnmatch_lines(
        ["FAILED test_suite.py::test_hangs - expired after 0.5 s (in call)"]
    )
    assert "session's deadline" not in result.stdout.str()


@pytest.mark.parametrize(
    ("ini", "environment", "args", "said"),
    [
        ("expire_session = 20", "", [], "20 s (ini expire_session)"),
        ("expire_session = 20", "25", [], "25 s (PYTEST_EXPIRE_SESSION)"),
        ("expire_session = 20", "25", ["--expire-session=30"], "30 s (--expire-session)"),
        # Empty or blank: unset, the ini's stands.
        ("expire_session = 20", " ", [], "20 s (ini expire_session)"),
    ],
)
def test_the_command_line_then_the_environment_then_the_ini(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    ini: str,
    environment: str,
    args: list[str],
    said: str,
) -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    monkeypatch.setenv("PYTEST_EXPIRE_SESSION", environment)
    pytester.makepyfile(PASSES)
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [f"expire: no default deadline, grace 5 s, session deadline {said}"]
    )


@pytest.mark.parametrize(
    ("ini", "environment", "args"),
    [
        ("expire_session = 0", "", []),
        ("expire_session = 20", "0", []),
        ("", "25", ["--expire-session=0"]),
    ],
)
def test_zero_is_no_session_deadline(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    ini: str,
    environment: str,
    args: list[str],
) -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    monkeypatch.setenv("PYTEST_EXPIRE_SESSION", environment)
    pytester.makepyfile(PASSES)
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["expire: no default deadline, grace 5 s"])


def test_the_ini_and_the_environment_stop_a_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, marked: str
) -> None:
    pytester.makeini("[pytest]\nexpire_session = 1\n")
    result = _run(pytester, HANGS_AFTER_ONE)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "FAILED test_suite.py::test_hangs - expired after * s (in call): the session's "
            "deadline (ini expire_session = 1) passed",
            "!* Interrupted: pytest-expire: the session's deadline (ini expire_session = 1) "
            "passed: 4 tests not run !*",
        ]
    )
    monkeypatch.setenv("PYTEST_EXPIRE_SESSION", "1.5")
    result = _run(pytester, HANGS_AFTER_ONE)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*the session's deadline (PYTEST_EXPIRE_SESSION=1.5) passed: 4 tests not run !*"]
    )


@pytest.mark.parametrize(
    ("args", "ini", "environment", "message"),
    [
        (["--expire-session="], "", "", "*argument --expire-session: *got an empty value*"),
        (["--expire-session=-1"], "", "", "*argument --expire-session: *>= 0, got '-1'*"),
        (["--expire-session=soon"], "", "", "*argument --expire-session: *got 'soon'*"),
        (["--expire-session=inf"], "", "", "*argument --expire-session: *finite*"),
        ([], "expire_session = later", "", "*ini expire_session: *got 'later'*"),
        ([], "expire_session = 1e9", "", "*ini expire_session: expected at most 315360000*"),
        ([], "", "nan", "*environment PYTEST_EXPIRE_SESSION: *finite*"),
        ([], "", "-2", "*environment PYTEST_EXPIRE_SESSION: *>= 0, got '-2'*"),
    ],
)
def test_bad_values_are_usage_errors(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    ini: str,
    environment: str,
    message: str,
) -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    monkeypatch.setenv("PYTEST_EXPIRE_SESSION", environment)
    pytester.makepyfile(PASSES)
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stderr.str()


@without_pytest_timeout
def test_pytest_timeouts_session_timeout_under_the_compat(
    pytester: pytest.Pytester, marked: str
) -> None:
    pytester.makeini("[pytest]\nexpire_timeout_compat = true\nsession_timeout = 30\n")
    result = _run(pytester, HANGS_AFTER_ONE, "--session-timeout=1")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*the session's deadline (--session-timeout=1) passed: 4 tests not run !*"]
    )
    result = _run(pytester, PASSES, "--expire-session=20")
    result.stdout.fnmatch_lines(["*session deadline 20 s (--expire-session)*"])
    result = _run(pytester, PASSES)
    result.stdout.fnmatch_lines(["*session deadline 30 s (ini session_timeout)*"])


#: A test module that never finishes its import, and one that would pass.
HANGS_AT_IMPORT = """
import time

time.sleep(3600)

def test_never_collected():
    pass
"""
STUCK_IN_C_AT_IMPORT = HOLD_THE_GIL_FOREVER + "\nhold_the_gil_forever()\n"
#: A session-scoped fixture whose teardown hangs; the session is stopped at its deadline
#: in the first test, so pytest tears the fixture down after the stop, under no test.
HANGS_IN_THE_SESSIONS_TEARDOWN = """
import time

import pytest

@pytest.fixture(scope="session")
def server():
    yield
    time.sleep(3600)

def test_first(server):
    time.sleep(3600)

def test_second(server):
    pass
"""
#: Far more than a deadline of 2 s and what follows it take on a loaded machine.
TOO_LONG = 40.0


def _run_timed(
    pytester: pytest.Pytester, files: dict[str, str], *args: str
) -> tuple[pytest.RunResult, float]:
    for name, source in files.items():
        pytester.makepyfile(**{name: textwrap.dedent(source)})
    began = time.monotonic()
    result = pytester.runpytest_subprocess(
        "-p",
        "no:randomly",
        "--expire-session=2",
        "--expire-grace=0.5",
        "--junitxml=report.xml",
        *args,
        timeout=2 * TOO_LONG,
    )
    return result, time.monotonic() - began


def _line_of(pytester: pytest.Pytester, name: str, text: str) -> int:
    """The number of the first line of file ``name`` that ``text`` begins."""
    lines = (pytester.path / name).read_text().splitlines()
    return next(at for at, line in enumerate(lines, 1) if line.startswith(text))


def test_a_hang_in_collection_ends_at_the_session_deadline(
    pytester: pytest.Pytester, marked: str
) -> None:
    result, took = _run_timed(
        pytester, {"test_hangs": HANGS_AT_IMPORT, "test_passes": "def test_ok():\n    pass\n"}
    )
    assert took < TOO_LONG
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stderr.fnmatch_lines(
        [
            "pytest-expire: the session's deadline (--expire-session=2) passed while it was "
            "collecting its tests, where no test's deadline holds; interrupting it (SIGINT). "
            "Its stacks:",
            "--- process *",
        ]
    )
    # pytest's own report of the interruption: where it was, and the JUnit XML.
    line = _line_of(pytester, "test_hangs.py", "time.sleep(3600)")
    result.stdout.fnmatch_lines([f"*test_hangs.py:{line}: KeyboardInterrupt"])
    assert _cases(pytester) == {}
    assert "killing it" not in result.stderr.str()


def test_a_collection_stuck_in_c_is_killed_after_its_interrupt(
    pytester: pytest.Pytester, marked: str
) -> None:
    result, took = _run_timed(pytester, {"test_stuck": STUCK_IN_C_AT_IMPORT})
    assert took < TOO_LONG
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stderr.fnmatch_lines(
        [
            "*passed while it was collecting its tests*interrupting it (SIGINT)*",
            "pytest-expire: the process running the session (process *) did not end 5 s after "
            "its interrupt at the session's deadline (--expire-session=2); killing it and the "
            "processes it started. Its stacks:",
        ]
    )
    assert "before any test with a deadline began" not in result.stderr.str()


def test_a_hang_in_a_session_fixtures_teardown_after_the_stop_ends(
    pytester: pytest.Pytester, marked: str
) -> None:
    result, took = _run_timed(pytester, {"test_suite": HANGS_IN_THE_SESSIONS_TEARDOWN})
    assert took < TOO_LONG
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stderr.fnmatch_lines(
        [
            "pytest-expire: the session's deadline (--expire-session=2) passed while it was "
            "past its last test, where no test's deadline holds; interrupting it (SIGINT). "
            "Its stacks:",
            "--- process *",
        ]
    )
    # Where it hung: the fixture's teardown, in the stacks and in the interrupt's traceback.
    line = _line_of(pytester, "test_suite.py", "    time.sleep(3600)")
    result.stderr.fnmatch_lines([f'  File "*test_suite.py", line {line} in server'])
    result.stderr.fnmatch_lines(
        [f'  File "*test_suite.py", line {line}, in server', "KeyboardInterrupt"]
    )
    # The expired test's report, in JUnit XML, written before that teardown.
    cases = _cases(pytester)
    assert set(cases) == {"test_first"}
    (failure,) = cases["test_first"]
    assert re.fullmatch(SESSION_EXPIRED.format("--expire-session=2"), failure.get("message") or "")
