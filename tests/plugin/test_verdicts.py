"""A test that ran past its deadline is never reported as passed, whatever it did.

Each scenario is a real pytest session in a subprocess, with the hang or the
trick a test suite really plays: an exec'd child, a swallowed interrupt, a
blocking call the dump signal cuts short, a frozen clock, a pytest session
run inside a test, a watchdog late because another worker's tree is slow to
dump.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
from snippets import FOLLOWER, pytest_job, wait_until_exists

from pytest_expire.offspring import helper_pids
from pytest_expire.registry import TEST_PROCESS_ENV
from pytest_expire.session_directory import ADDRESS_ENV, DIRECTORY_ENV, OWNER_ENV, record_helpers

ARGS = ("--expire-default=0.5", "--expire-grace=1", "-rA", "-p", "no:randomly")


def run(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_suite=textwrap.dedent(source) + FOLLOWER)
    return pytester.runpytest_subprocess(*ARGS, *args, timeout=120)


def test_an_execd_child_is_not_ended_by_the_dump_signal(pytester: pytest.Pytester) -> None:
    # The child keeps its PID and start time across exec, but not the
    # dump handler it inherited: the dump signal would end it, and the
    # test's wait would return as if it had finished.
    result = run(
        pytester,
        """
        import os, subprocess, sys

        def test_waits_for_a_child():
            child = subprocess.run(
                [sys.executable, "-c", "import time; time.sleep(60)"], preexec_fn=os.setpgrp
            )
            assert child.returncode == 0
        """,
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_waits_for_a_child expired after 0.5 s (in call)*"])
    result.stdout.no_fnmatch_line("*AssertionError*")


def test_a_test_that_swallows_its_interrupt_and_returns_fails(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
        import time

        def test_swallows():
            try:
                time.sleep(30)
            except BaseException:
                pass
        """,
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_swallows expired after 0.5 s (in call)*"])


def test_a_c_call_woken_early_by_the_dump_signal_fails(pytester: pytest.Pytester) -> None:
    # libc's sleep() returns early when a signal with a handler arrives:
    # the test ends right after its stacks were taken, before its interrupt.
    result = run(
        pytester,
        """
        import ctypes

        def test_sleeps_in_c():
            ctypes.CDLL(None).sleep(30)
        """,
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_sleeps_in_c expired after 0.5 s (in call)*"])


def test_a_phase_that_ends_past_its_deadline_fails_in_that_phase(
    pytester: pytest.Pytester,
) -> None:
    result = run(
        pytester,
        """
        import signal, time
        import pytest
        from pytest_expire.signals import INTERRUPT_SIGNAL

        @pytest.fixture
        def slow_teardown():
            yield
            # No interrupt can reach this teardown; it ends within the grace.
            signal.pthread_sigmask(signal.SIG_BLOCK, {INTERRUPT_SIGNAL})
            try:
                time.sleep(0.8)
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {INTERRUPT_SIGNAL})

        def test_quick_call(slow_teardown):
            pass
        """,
    )
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*test_quick_call expired after 0.5 s (in teardown)*"])


def test_a_clock_frozen_in_a_conftest_does_not_stop_the_deadline(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(
        """
        import time

        time.time = lambda: 1_000_000_000.0
        time.monotonic = lambda: 1000.0
        """
    )
    result = run(
        pytester,
        """
        import time

        def test_hangs():
            for _ in range(200):
                time.sleep(0.1)
        """,
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_hangs expired after 0.5 s (in call)*"])
    result.stdout.no_fnmatch_line("*killed*")


def test_a_clock_frozen_by_the_test_does_not_keep_its_interrupt_off(
    pytester: pytest.Pytester,
) -> None:
    result = run(
        pytester,
        """
        import time

        def test_hangs(monkeypatch):
            monkeypatch.setattr(time, "time", lambda: 0.0)
            for _ in range(200):
                time.sleep(0.1)
        """,
    )
    result.assert_outcomes(passed=1, failed=1)
    # Interrupted where it hangs, not killed for "not stopping".
    result.stdout.fnmatch_lines(["*test_hangs expired after 0.5 s (in call)*"])
    result.stdout.no_fnmatch_line("*killed*")


def test_a_pytest_session_inside_a_test_leaves_the_outer_deadline_alone(
    pytester: pytest.Pytester,
) -> None:
    result = run(
        pytester,
        """
        import time
        import pytest

        pytest_plugins = ["pytester"]

        @pytest.mark.expires(2)
        def test_runs_pytest_inside(pytester):
            pytester.makepyfile(test_inner="def test_inner(): pass")
            pytester.runpytest_inprocess("--expire-default=5", "-p", "no:randomly")
            time.sleep(10)

        def test_expires_after_it():
            time.sleep(10)
        """,
    )
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*test_runs_pytest_inside expired after 2 s (in call)*",
            "*test_expires_after_it expired after 0.5 s (in call)*",
        ]
    )
    result.stdout.no_fnmatch_line("*killed*")
    result.stdout.no_fnmatch_line("*INTERNALERROR*")


def test_a_session_inside_a_test_has_deadlines_of_its_own(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
        import pytest

        pytest_plugins = ["pytester"]

        @pytest.mark.expires(20)
        def test_runs_a_hanging_session(pytester):
            pytester.makepyfile(test_inner="import time\\ndef test_inner(): time.sleep(10)")
            inner = pytester.runpytest_inprocess("--expire-default=0.5", "-p", "no:randomly")
            inner.assert_outcomes(failed=1)
        """,
    )
    result.assert_outcomes(passed=2)


def test_a_late_watchdog_still_kills(pytester: pytest.Pytester) -> None:
    # One worker's test leaves a stopped child, which never dumps: its
    # diagnosis takes the longest it may. The other's test ignores its
    # interrupt: it must be killed a grace period after the interrupt.
    pytest.importorskip("xdist")
    result = run(
        pytester,
        """
        import os, signal, time
        import pytest

        @pytest.fixture
        def stopped_child():
            pid = os.fork()
            if pid == 0:
                os.kill(os.getpid(), signal.SIGSTOP)
                os._exit(0)
            yield
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)

        def test_with_a_stopped_child(stopped_child):
            time.sleep(30)

        def test_ignores_its_interrupt():
            while True:
                try:
                    time.sleep(30)
                except BaseException:
                    pass
        """,
        "-n",
        "2",
        "--expire-grace=0.2",
    )
    result.assert_outcomes(passed=1, failed=2)
    assert result.duration < 20
    result.stdout.fnmatch_lines(["FAILED *test_ignores_its_interrupt*"])


WATCHDOG_KILLER = """
import os, signal, time
from pathlib import Path

def test_kills_the_watchdog_then_hangs():
    directory = Path(os.environ["PYTEST_EXPIRE_DIRECTORY"])
    os.kill(int((directory / "helpers.pids").read_text()), signal.SIGKILL)
    time.sleep(30)

def test_a_later_test_still_expires():
    time.sleep(30)
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_a_watchdog_killed_mid_test_is_replaced(
    pytester: pytest.Pytester, workers: list[str]
) -> None:
    if workers:
        pytest.importorskip("xdist")
    result = run(pytester, WATCHDOG_KILLER, *workers)
    result.assert_outcomes(passed=1, failed=2)
    # In either order: under xdist, the two run side by side.
    result.stdout.fnmatch_lines(
        ["*test_kills_the_watchdog_then_hangs expired after 0.5 s (in call)*"]
    )
    result.stdout.fnmatch_lines(["*test_a_later_test_still_expires expired after 0.5 s (in call)*"])
    assert (
        result.stderr.str().count("the session's watchdog process ended (killed by SIGKILL)") == 1
    )
    assert result.duration < 20


def test_a_program_that_ran_pytest_gets_its_signals_back(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A program outside any session (this one runs in a session of its own,
    # which the program would join as it starts: see test_children_join.py).
    for name in (ADDRESS_ENV, DIRECTORY_ENV, OWNER_ENV, TEST_PROCESS_ENV):
        monkeypatch.delenv(name, raising=False)
    pytester.makepyfile(
        test_suite="""
        import time

        def test_swallows():
            try:
                time.sleep(30)
            except BaseException:
                time.sleep(0.2)
        """
    )
    program = pytester.makepyfile(
        program="""
        import os, signal, sys, time
        import pytest
        from pytest_expire.signals import DUMP_SIGNAL, INTERRUPT_SIGNAL, handles

        code = pytest.main(["-q", "--expire-default=0.5", "--expire-grace=2", "test_suite.py"])
        print("exit code", int(code))
        print("interrupt handler restored", signal.getsignal(INTERRUPT_SIGNAL) is signal.SIG_DFL)
        me = os.getpid()
        print("still handled", handles(me, INTERRUPT_SIGNAL), handles(me, DUMP_SIGNAL))
        time.sleep(2.5)  # past the grace period of the expired test
        print("alive")
        """
    )
    result = pytester.run(sys.executable, str(program), timeout=60)
    result.stdout.fnmatch_lines(
        [
            "exit code 1",
            "interrupt handler restored True",
            "still handled False False",
            "alive",
        ]
    )


def test_each_rerun_runs_under_a_deadline_of_its_own(pytester: pytest.Pytester) -> None:
    pytest.importorskip("pytest_rerunfailures")
    # The first attempt swallows its interrupt and returns: an expired
    # attempt all the same, so it is rerun; the rerun is quick, and passes
    # although the first attempt's deadline is long gone.
    pytester.makepyfile(
        test_suite="""
        import time

        attempts = []

        def test_slow_then_quick():
            attempts.append(1)
            if len(attempts) == 1:
                try:
                    time.sleep(30)
                except BaseException:
                    pass
            time.sleep(0.3)
        """
    )
    result = pytester.runpytest_subprocess(*ARGS, "--reruns", "1", timeout=60)
    # Rerun only because the first attempt, which returned, was judged expired.
    assert result.parseoutcomes() == {"passed": 1, "rerun": 1}
    # The rerun, then the pass; pytest 7.4 prints the progress after each ("R  [100%]. [100%]").
    result.stdout.fnmatch_lines(["test_suite.py R*. *"])


@pytest.mark.parametrize("hangup", [False, True], ids=["SIGKILL to pytest", "terminal hangup"])
def test_a_session_killed_from_outside_leaves_no_watchdog_behind(
    pytester: pytest.Pytester, hangup: bool
) -> None:
    started = pytester.path / "directory"
    pytester.makepyfile(
        test_suite=f"""
        import os, time
        from pathlib import Path

        def test_waits():
            Path({str(started)!r}).write_text(os.environ["PYTEST_EXPIRE_DIRECTORY"])
            time.sleep(60)
        """
    )
    with pytest_job(pytester.path, "--expire-default=60", "-p", "no:cacheprovider") as session:
        wait_until_exists(started, 60)
        while not started.read_text():
            time.sleep(0.05)
        directory = Path(started.read_text())
        watchdog = psutil.Process(int((directory / "helpers.pids").read_text()))
        if hangup:  # the terminal closes: SIGHUP to the whole job
            os.killpg(session.pid, signal.SIGHUP)
        else:  # the process the user started, with SIGKILL: nothing of it cleans up
            session.kill()
        session.wait()
        # The worker dies with it, and the watchdog too, which takes the
        # session's directory with it.
        watchdog.wait(timeout=10)
        deadline = time.monotonic() + 10
        while directory.exists():
            assert time.monotonic() < deadline, f"{directory} outlived its session"
            time.sleep(0.05)


def test_the_delay_between_two_attempts_is_charged_to_neither(pytester: pytest.Pytester) -> None:
    pytest.importorskip("pytest_rerunfailures")
    pytester.makepyfile(
        test_suite="""
        attempts = []

        def test_flaky():
            attempts.append(1)
            assert len(attempts) > 1
        """
    )
    result = pytester.runpytest_subprocess(
        *ARGS, "--reruns", "1", "--reruns-delay", "2.5", "--junitxml=report.xml", timeout=60
    )
    assert result.parseoutcomes() == {"passed": 1, "rerun": 1}
    result.stdout.no_fnmatch_line("*expired*")


def test_ids_that_change_between_collections_end_the_session_after_a_kill(
    pytester: pytest.Pytester,
) -> None:
    # Each new worker collects again, and this test's id is new each time:
    # the session must not run it again and again, killing it each time.
    pytester.makepyfile(
        test_suite="""
        import random, time
        import pytest

        @pytest.mark.parametrize("seed", [random.random()])
        def test_swallows(seed):
            while True:
                try:
                    time.sleep(30)
                except BaseException:
                    pass
        """
    )
    result = pytester.runpytest_subprocess(*ARGS, "--junitxml=report.xml", timeout=60)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        ["*the tests collected again after a worker died differ from those it ran*"]
    )
    # Killed once, reported once: not run again under a new id.
    assert result.parseoutcomes() == {"failed": 1}
    result.stdout.fnmatch_lines(["*test_swallows*expired after 0.5 s (in call); it did not stop*"])
    assert (pytester.path / "report.xml").exists()


def test_a_watchdog_killed_again_as_it_starts_is_started_again(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
        import os, signal, time
        from pathlib import Path

        def watchdog_pid():
            directory = Path(os.environ["PYTEST_EXPIRE_DIRECTORY"])
            return int((directory / "helpers.pids").read_text())

        def test_kills_the_watchdog_twice():
            first = watchdog_pid()
            os.kill(first, signal.SIGKILL)
            while watchdog_pid() == first:
                time.sleep(0.001)
            os.kill(watchdog_pid(), signal.SIGKILL)

        def test_quick():
            pass

        def test_hangs():
            time.sleep(30)
        """,
    )
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*test_hangs expired after 0.5 s (in call)*"])
    assert result.duration < 20


def test_the_watchdogs_pid_is_never_read_half_written(tmp_path: Path) -> None:
    # While the watchdog is started again, a diagnosis of a test's processes
    # reads the list of the session's own: an empty one would leave the new
    # watchdog to be diagnosed and ended with the test's processes.
    record_helpers(tmp_path, [1000])
    done = threading.Event()

    def restart_again_and_again() -> None:
        while not done.is_set():
            record_helpers(tmp_path, [1001])
            record_helpers(tmp_path, [1000])

    writer = threading.Thread(target=restart_again_and_again)
    writer.start()
    try:
        seen = [helper_pids(tmp_path) for _ in range(20_000)]
    finally:
        done.set()
        writer.join()
    assert {tuple(pids) for pids in seen} <= {(1000,), (1001,)}


def test_a_fake_clock_that_raises_does_not_break_the_session(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
        import time

        def test_hangs(monkeypatch):
            def exhausted():
                raise RuntimeError("fake clock exhausted")

            real_sleep = time.sleep
            monkeypatch.setattr(time, "monotonic", exhausted)
            monkeypatch.setattr(time, "sleep", lambda seconds: None)
            real_sleep(30)
        """,
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_hangs expired after 0.5 s (in call)*"])
    result.stdout.no_fnmatch_line("*INTERNALERROR*")


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_a_stopped_watchdog_is_resumed(pytester: pytest.Pytester, workers: list[str]) -> None:
    if workers:
        pytest.importorskip("xdist")
    result = run(
        pytester,
        """
        import os, signal, time
        from pathlib import Path

        def test_stops_the_watchdog_then_hangs():
            directory = Path(os.environ["PYTEST_EXPIRE_DIRECTORY"])
            os.kill(int((directory / "helpers.pids").read_text()), signal.SIGSTOP)
            time.sleep(30)
        """,
        *workers,
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_stops_the_watchdog_then_hangs expired after 0.5 s*"])
    assert "was stopped; resumed it" in result.stderr.str()
    assert result.duration < 20
