"""A session over whose process does not exit: said, dumped and ended in time, its status kept.

Each scenario is a real pytest session in a subprocess, serially (supervised)
and under pytest-xdist, whose passing tests leave something that keeps the
process that ran them from exiting: a thread that is not a daemon, a
``multiprocessing`` child that is not one either (joined at exit), an exit
handler that blocks. Each must end about ``--expire-exit`` after its session,
name the test that left it, keep the session's exit status, and leave no
process and no session directory behind (the ``marked`` fixture).
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from collections.abc import Callable

import pytest
from snippets import run_suite

#: A short exit deadline; deadlines on the tests (where given) are far off.
ARGS = ("--expire-exit=1",)
#: Far more than a session with an exit deadline of 1 s takes, even on a loaded
#: machine; far less than a session that waits for ever (or for xdist's own limit,
#: some 10 s past the deadline).
TOO_LONG = 30.0

LEAKS_A_THREAD = """
import threading, time

def test_leaks_a_thread():
    threading.Thread(target=time.sleep, args=(3600,), name="leaked-thread").start()
"""

LEAKS_A_CHILD = """
import multiprocessing, time

def test_leaks_a_child():
    multiprocessing.get_context("fork").Process(target=time.sleep, args=(3600,)).start()
"""

REGISTERS_A_BLOCKING_HANDLER = """
import atexit, time

def test_registers_a_blocking_handler():
    atexit.register(time.sleep, 3600)
"""

FAILS = """

def test_fails():
    assert False
"""


@pytest.fixture(params=["serial", "xdist"])
def mode(request: pytest.FixtureRequest) -> str:
    if request.param == "xdist":
        pytest.importorskip("xdist")
    return str(request.param)


Run = Callable[..., tuple[pytest.RunResult, float]]


@pytest.fixture
def run(pytester: pytest.Pytester, mode: str) -> Run:
    """Run a session of ``source`` (and a test that passes), serially or with 2 workers:
    its result, and how long it took."""

    def run(source: str, *args: str) -> tuple[pytest.RunResult, float]:
        workers = ("-n", "2") if mode == "xdist" else ()
        began = time.monotonic()
        result = run_suite(
            pytester, source, *ARGS, *workers, *args, follower=True, timeout=2 * TOO_LONG
        )
        return result, time.monotonic() - began

    return run


def _ended_in_time(result: pytest.RunResult, took: float, mode: str, leftover: str) -> None:
    """The process that ran the tests was ended 1 s after its session, saying what kept it."""
    assert took < TOO_LONG
    who = "xdist worker gw*" if mode == "xdist" else "the process that ran the session"
    result.stderr.fnmatch_lines(
        [
            f"pytest-expire: {who} (process *) did not exit within 1 s of the end of its session*",
            leftover,
            "pytest-expire: killed process * and the processes it left*",
        ]
    )


def test_a_thread_that_is_not_a_daemon(run: Run, mode: str, marked: str) -> None:
    result, took = run(LEAKS_A_THREAD, "--expire-default=30")
    result.assert_outcomes(passed=2)
    assert result.ret == 0
    _ended_in_time(
        result,
        took,
        mode,
        '  thread "leaked-thread" (not a daemon), started during '
        "test_suite.py::test_leaks_a_thread (call)",
    )
    result.stderr.fnmatch_lines(['Thread 0x* "leaked-thread" (most recent call first):'])


def test_a_multiprocessing_child_that_is_not_a_daemon(run: Run, mode: str, marked: str) -> None:
    # No deadline: nothing ends the child as the session ends, and exit joins it.
    result, took = run(LEAKS_A_CHILD)
    result.assert_outcomes(passed=2)
    assert result.ret == 0
    _ended_in_time(
        result,
        took,
        mode,
        "  process * started during test_suite.py::test_leaks_a_child (call)",
    )
    result.stderr.fnmatch_lines(["*in _exit_function"])


def test_an_exit_handler_that_blocks(run: Run, mode: str, marked: str) -> None:
    result, took = run(REGISTERS_A_BLOCKING_HANDLER)
    result.assert_outcomes(passed=2)
    assert result.ret == 0
    _ended_in_time(
        result,
        took,
        mode,
        "  exit handler time.sleep, registered during "
        "test_suite.py::test_registers_a_blocking_handler (call)",
    )


def test_the_session_keeps_its_exit_status(run: Run, mode: str, marked: str) -> None:
    result, took = run(REGISTERS_A_BLOCKING_HANDLER + FAILS, "--expire-default=30")
    result.assert_outcomes(passed=2, failed=1)
    assert result.ret == 1
    _ended_in_time(result, took, mode, "  exit handler time.sleep, registered during *")
    if mode == "serial":
        result.stderr.fnmatch_lines(["*; the session's exit status stands: 1"])


def test_the_ini_sets_it(pytester: pytest.Pytester, marked: str) -> None:
    pytester.makeini("[pytest]\nexpire_exit = 1\n")
    pytester.makepyfile(test_suite=REGISTERS_A_BLOCKING_HANDLER)
    result = pytester.runpytest_subprocess(timeout=2 * TOO_LONG)
    result.assert_outcomes(passed=1)
    result.stderr.fnmatch_lines(
        ["*did not exit within 1 s of the end of its session (exit status 0)*"]
    )


def test_a_bad_ini_value_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nexpire_exit = soon\n")
    pytester.makepyfile("def test_ok(): pass")
    result = pytester.runpytest_subprocess(timeout=2 * TOO_LONG)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini expire_exit: expected a number of seconds, got 'soon'*"])


#: Makes the session unsupervised (see "The session goes on" in docs/plugin.md): a
#: thread runs when pytest starts, so the tests run in the process the user started.
STARTS_A_THREAD_AT_IMPORT = """
import threading, time

threading.Thread(target=time.sleep, args=(3600,), name="started-by-conftest", daemon=True).start()
"""


@pytest.mark.parametrize(
    ("source", "leftover", "stage"),
    [
        (
            LEAKS_A_THREAD,
            '  thread "leaked-thread" (not a daemon), started during '
            "test_suite.py::test_leaks_a_thread (call)",
            "joining threads",
        ),
        (
            LEAKS_A_CHILD,
            "  process * started during test_suite.py::test_leaks_a_child (call)",
            "running exit handlers",
        ),
        (
            REGISTERS_A_BLOCKING_HANDLER,
            "  exit handler time.sleep, registered during "
            "test_suite.py::test_registers_a_blocking_handler (call)",
            "running exit handlers",
        ),
    ],
    ids=["thread", "child", "exit handler"],
)
def test_an_unsupervised_session_ends_at_its_exit_deadline(
    pytester: pytest.Pytester, source: str, leftover: str, stage: str, marked: str
) -> None:
    pytester.makeconftest(STARTS_A_THREAD_AT_IMPORT)
    pytester.makepyfile(test_suite=textwrap.dedent(source) + FAILS)
    began = time.monotonic()
    result = pytester.runpytest_subprocess(
        *ARGS, "--expire-report=report.json", timeout=2 * TOO_LONG
    )
    took = time.monotonic() - began
    assert took < TOO_LONG
    result.assert_outcomes(passed=1, failed=1)
    assert result.ret == 1  # the session's, which its process ends with
    result.stderr.fnmatch_lines(
        [
            "pytest-expire: the process that ran the session (process *) did not exit within "
            "1 s of the end of its session (exit status 1)*",
            leftover,
            # Its own words: no supervisor ended it.
            "pytest-expire: killed the processes it left; process * ends now; the session's "
            "exit status stands: 1",
        ]
    )
    # The conftest's thread is a daemon, started outside the tests: not a leftover.
    assert "started-by-conftest" not in result.stderr.str().partition("---")[0]
    report = json.loads((pytester.path / "report.json").read_text())
    (ended,) = report["leftovers"]
    assert (ended["xdist_worker"], ended["exit_status"], ended["stage"]) == (None, 1, stage)
    nodeids = {item["kind"]: item["nodeid"] for item in ended["found"]}
    kind = {"joining threads": "thread"}.get(stage, "exit handler")
    if source == LEAKS_A_CHILD:
        kind = "process"
    assert nodeids[kind] == f"test_suite.py::{source.split('def ')[1].split('(')[0]}"


def test_pytest_main_called_by_a_program_is_left_to_the_program(
    pytester: pytest.Pytester, marked: str
) -> None:
    # The program's process is its own: pytest returns, the program goes on for longer
    # than the exit deadline, and nothing ends it.
    pytester.makepyfile(
        test_suite=textwrap.dedent(LEAKS_A_THREAD),
        program="""
        import os, sys, threading, time

        import pytest

        threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
        status = pytest.main(["--expire-exit=1", "-p", "no:randomly", "test_suite.py"])
        time.sleep(3)
        print("the program goes on after", int(status))
        sys.stdout.flush()
        os._exit(0)  # its leaked thread is the program's business
        """,
    )
    result = pytester.run(sys.executable, "program.py", timeout=2 * TOO_LONG)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*1 passed*", "the program goes on after 0"])
    assert "did not exit" not in result.stderr.str()
