"""Every process a test starts is under its deadline, and none outlives the session.

Each scenario is a real pytest session in a subprocess whose tests start real
process trees (non-Python children, ``setsid`` daemons, ``multiprocessing``
children, grandchildren holding a pipe), followed by a test that must run
and pass. Every process of the session carries a mark in its environment, so
that what is left after the session is found wherever it went (a daemon
leaves the tree), and killed by PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable

import psutil
import pytest
from snippets import FOLLOWER, marked_processes

ARGS = ("--expire-default=1", "--expire-grace=1", "-rA", "-p", "no:randomly")


@pytest.fixture(params=["serial", "xdist"])
def mode(request: pytest.FixtureRequest) -> str:
    """Each scenario runs serially (supervised) and under pytest-xdist."""
    if request.param == "xdist":
        pytest.importorskip("xdist")
    return str(request.param)


Run = Callable[..., pytest.RunResult]


@pytest.fixture
def run(pytester: pytest.Pytester, mode: str) -> Run:
    """Run a session of ``source`` (and a test that must pass), serially or with 2 workers."""

    def run(source: str, *args: str, helpers: str = "") -> pytest.RunResult:
        pytester.makepyfile(test_suite=helpers + textwrap.dedent(source) + FOLLOWER)
        workers = ("-n", "2") if mode == "xdist" else ()
        return pytester.runpytest_subprocess(*ARGS, *workers, *args, timeout=120)

    return run


def test_a_hung_child_of_an_interrupted_test_is_ended_with_it(run: Run, marked: str) -> None:
    result = run(
        """
        import subprocess

        def test_waits_for_a_child():
            subprocess.Popen(["sleep", "1000"]).wait()
        """,
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*- expired: test_suite.py::test_waits_for_a_child after 1 s -*",
            "*--- process * sleep 1000 ---*",
            "*- processes test_suite.py::test_waits_for_a_child left running after teardown -*",
            "process * (sleep 1000), started during *: ended by SIGTERM",
        ]
    )
    assert "processes the tests left running" not in result.stdout.str()


def test_a_child_that_ignores_sigterm_is_killed(run: Run, marked: str) -> None:
    result = run(
        """
        import subprocess

        def test_waits_for_a_stubborn_child():
            subprocess.Popen(["bash", "-c", "trap '' TERM; sleep 1000 & wait"]).wait()
        """,
    )
    result.assert_outcomes(passed=1, failed=1)
    # SIG_IGN is inherited: neither the shell nor its child ends on SIGTERM.
    result.stdout.fnmatch_lines(
        [
            "process * (bash -c trap '' TERM; sleep 1000 & wait), started during *: "
            "killed: it ignored SIGTERM for 1 s",
            "process * (sleep 1000), started during *: killed: it ignored SIGTERM for 1 s",
        ]
    )


def test_a_grandchild_holding_the_output_pipe_is_ended(run: Run, marked: str) -> None:
    # The child ends at once; the grandchild keeps its end of the pipe, so
    # the test's read of the child's output never ends.
    result = run(
        """
        import subprocess

        def test_reads_a_childs_output():
            subprocess.run(["bash", "-c", "sleep 1000 & echo started"], capture_output=True)
        """,
    )
    result.assert_outcomes(passed=1, failed=1)
    # Serially at the test's end; under xdist, once it left the worker's tree,
    # at the session's end (see test_a_daemon_started_by_a_killed_test_dies_with_it).
    result.stdout.fnmatch_lines(["process * (sleep 1000)*: ended by SIGTERM"])


def test_a_hung_multiprocessing_child_does_not_hang_the_session_at_exit(
    run: Run, marked: str
) -> None:
    # multiprocessing joins its non-daemon children as the process exits: a
    # hung one that outlived its test would hang the run after its summary.
    result = run(
        """
        import multiprocessing, time

        def hang():
            time.sleep(1000)

        def test_joins_a_hung_child():
            child = multiprocessing.get_context("fork").Process(target=hang)
            child.start()
            child.join()
        """,
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*- expired: test_suite.py::test_joins_a_hung_child after 1 s -*",
            "*in hang*",
            "process *, started during test_suite.py::test_joins_a_hung_child (call): "
            "ended by SIGTERM",
        ]
    )


def during(test: str) -> str:
    """How a non-Python daemon that left the tree is attributed to ``test`` when listed:
    by the environment it was started with, serially and under xdist (where it became
    the controller's child, which does not know the workers' tests)."""
    return f", started during test_suite.py::{test} (call)"


DAEMON = """
import subprocess, time

def start_daemon(seconds):
    # Double-forked into a session of its own: its parent is gone at once.
    subprocess.run(
        ["bash", "-c", f"setsid sleep {seconds} </dev/null >/dev/null 2>&1 &"], check=True
    )
    # A process that is not Python is known by its start time, to 1/100 s:
    # the next test must start later to be told apart.
    time.sleep(0.05)
"""


def test_a_daemon_a_passing_test_leaked_is_ended_when_the_session_ends(
    run: Run, marked: str
) -> None:
    result = run(
        """
        def test_leaks_a_daemon():
            start_daemon(1001)
        """,
        helpers=DAEMON,
    )
    result.assert_outcomes(passed=2)
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "*- processes the tests left running -*",
            f"process * (sleep 1001){during('test_leaks_a_daemon')}: ended by SIGTERM",
        ]
    )


def test_an_unsupervised_sessions_daemon_is_found_by_its_environment(
    pytester: pytest.Pytester, marked: str
) -> None:
    # A thread at start-up keeps the tests in the process that was started:
    # no subreaper adopts the daemon, which leaves every tree at once.
    pytester.makeconftest(
        """
        import threading
        threading.Thread(target=threading.Event().wait, daemon=True).start()
        """
    )
    pytester.makepyfile(
        test_suite=DAEMON
        + textwrap.dedent(
            """
            def test_leaks_a_daemon():
                start_daemon(1007)
            """
        )
        + FOLLOWER
    )
    result = pytester.runpytest_subprocess(*ARGS, timeout=120)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*threads ran in this process when pytest started*",
            "*- processes the tests left running -*",
            f"process * (sleep 1007){during('test_leaks_a_daemon')}: ended by SIGTERM",
        ]
    )


def test_leftovers_only_listed_when_told(pytester: pytest.Pytester, run: Run, marked: str) -> None:
    pytester.makeini("[pytest]\nexpire_leftovers = list\n")
    result = run(
        """
        def test_leaks_a_daemon():
            start_daemon(1002)
        """,
        helpers=DAEMON,
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [f"process * (sleep 1002){during('test_leaks_a_daemon')}: left running"]
    )
    left = marked_processes(marked)
    assert [process.cmdline() for process in left] == [["sleep", "1002"]]
    for process in left:
        process.kill()
    psutil.wait_procs(left, timeout=5)


def test_a_bad_leftovers_setting_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nexpire_leftovers = kill\n")
    pytester.makepyfile("def test_passes(): pass")
    result = pytester.runpytest_subprocess(timeout=60)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*expire_leftovers: 'kill' is not one of end, list*"])


def test_a_daemon_started_by_a_killed_test_dies_with_it(run: Run, mode: str, marked: str) -> None:
    # The test's process is killed; the daemon it started left its tree at
    # once. Serially it is found as a child of the supervisor (a subreaper)
    # and killed with the test; under xdist it became the controller's child,
    # which ends it when the session ends (a controller's children are also
    # the workers: it does not tell them apart from a test's while they run).
    result = run(
        """
        import signal, time

        def test_starts_a_daemon_and_ignores_its_interrupt():
            start_daemon(1003)
            signal.pthread_sigmask(signal.SIG_BLOCK, range(1, signal.NSIG))
            time.sleep(1000)
        """,
        helpers=DAEMON,
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*did not stop when interrupted*"])
    if mode == "serial":
        result.stdout.fnmatch_lines(["*--- process * sleep 1003 ---*"])
        assert "processes the tests left running" not in result.stdout.str()
    else:
        result.stdout.fnmatch_lines(
            [
                "*- processes the tests left running -*",
                f"process * (sleep 1003){during('test_starts_a_daemon_and_ignores_its_interrupt')}"
                ": ended by SIGTERM",
            ]
        )


def test_a_childs_own_deadline_is_reported_with_its_stacks(run: Run) -> None:
    # A test wraps its child in `expires` through the session's watchdog (its
    # address is in the child's environment): at the child's deadline, the
    # child's stacks reach the session and the test's report.
    result = run(
        '''
        import signal, subprocess, sys
        import pytest

        CHILD = """
        import os, time
        from pytest_expire.timer import configure, expires
        from pytest_expire.timer.unix_socket_timer import UnixSocketTimerClient

        def stuck_in_the_child():
            time.sleep(1000)

        configure(UnixSocketTimerClient(os.environ["PYTEST_EXPIRE_ADDRESS"]))
        with expires(after=0.5, scope="child-work"):
            stuck_in_the_child()
        """

        @pytest.mark.expires(30)
        def test_runs_a_child_with_a_deadline():
            child = subprocess.run([sys.executable, "-c", CHILD])
            assert child.returncode == -signal.SIGKILL
        ''',
    )
    result.assert_outcomes(passed=2)
    result.stderr.fnmatch_lines(
        [
            "pytest-expire: the timers 'child-work' of process * expired, started by "
            "test_suite.py::test_runs_a_child_with_a_deadline: its stacks are in that test's report"
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*- expired timers of processes test_suite.py::test_runs_a_child_with_a_deadline "
            "started (found at teardown) -*",
            "--- process *: its timers 'child-work' expired ---",
            "*in stuck_in_the_child*",
        ]
    )


def test_a_process_started_after_the_last_test_is_ended_too(
    pytester: pytest.Pytester, marked: str
) -> None:
    # Started by an exit handler a test registered, after the session's own
    # look at its processes: the supervisor, whose child it became, ends it.
    # (Serial only: a supervisor's end.)
    source = """
        import atexit, subprocess

        def test_registers_an_exit_handler():
            atexit.register(lambda: subprocess.Popen(["setsid", "sleep", "1004"]))
        """
    pytester.makepyfile(test_suite=textwrap.dedent(source) + FOLLOWER)
    result = pytester.runpytest_subprocess(*ARGS, timeout=120)
    result.assert_outcomes(passed=2)
    assert result.ret == 0
    result.stderr.fnmatch_lines(
        ["pytest-expire: left running after the session: process * (sleep 1004): ended by SIGTERM"]
    )


HANG = """
import time

def hang(*args):
    time.sleep(1000)
"""


#: Tests that hang in processes they started, by how they started them.
HUNG_IN_CHILDREN = {
    "spawn_child_on_a_queue": """
        import multiprocessing
        queue = multiprocessing.get_context("spawn").Queue()
        child = multiprocessing.get_context("spawn").Process(target=queue.get)
        child.start()
        child.join()
        """,
    "forkserver_child_on_a_queue": """
        import multiprocessing
        queue = multiprocessing.get_context("forkserver").Queue()
        child = multiprocessing.get_context("forkserver").Process(target=queue.get)
        child.start()
        child.join()
        """,
    "pool": """
        import multiprocessing
        with multiprocessing.get_context("forkserver").Pool(2) as pool:
            pool.apply(hang)
        """,
    "process_pool_executor": """
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(1) as executor:
            executor.submit(hang).result()
        """,
    "popen_of_python": """
        import subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"]).wait()
        """,
    "subprocess_run_of_python": """
        import subprocess, sys
        subprocess.run([sys.executable, "-c", "import time; time.sleep(1000)"])
        """,
    "bash_sleep_and_wait": """
        import subprocess
        subprocess.run(["bash", "-c", "sleep 1000 & wait"])
        """,
}


def test_a_hung_pool_or_child_ends_with_its_test(
    pytester: pytest.Pytester, mode: str, marked: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whether the interrupt lands (and the processes are ended after the
    # teardown) or not (ProcessPoolExecutor's exit waits for its hung worker:
    # the test's process is killed with its tree), the test fails as
    # expired, the next one passes, and nothing is left (the marked fixture).
    # One session for all: each way of starting children in a module of its own.
    for kind, body in HUNG_IN_CHILDREN.items():
        test = "def test_hangs_in_its_children():\n" + textwrap.indent(
            textwrap.dedent(body), "    "
        )
        pytester.makepyfile(**{f"test_{kind}": HANG + test + FOLLOWER})
    workers = ("-n", "2") if mode == "xdist" else ()
    monkeypatch.setenv("COLUMNS", "300")  # the short summary's lines in full
    # Any deadline will do: half a second each, and as long a grace.
    result = pytester.runpytest_subprocess(
        *ARGS, "--expire-default=0.5", "--expire-grace=0.5", *workers, timeout=120
    )
    result.assert_outcomes(passed=len(HUNG_IN_CHILDREN), failed=len(HUNG_IN_CHILDREN))
    for kind in HUNG_IN_CHILDREN:
        result.stdout.fnmatch_lines(
            [
                f"*test_{kind}.py::test_hangs_in_its_children expired after 0.5 s (in call)*",
                f"FAILED test_{kind}.py::test_hangs_in_its_children - expired after 0.5 s*",
            ]
        )
        result.stdout.fnmatch_lines([f"PASSED test_{kind}.py::test_still_runs"])


OUTPUT_HOLDERS = """
import os, subprocess, time

def test_forks_a_python_daemon():
    # Double-forked: the daemon keeps every descriptor of the test's process,
    # pytest's saved copy of its output among them.
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            time.sleep(1005)
        os._exit(0)
    os.wait()

def test_starts_a_daemon_on_its_output():
    # Not captured (-s): the daemon's output is the session's.
    subprocess.run(["bash", "-c", "setsid sleep 1006 &"], check=True)
"""


def test_no_process_holds_the_sessions_output_open(
    pytester: pytest.Pytester, mode: str, marked: str
) -> None:
    # `pytest | tee`: the pipe ends when no process holds its write end. A
    # daemon a test left behind must not keep the CI job's log open.
    pytester.makepyfile(test_suite=OUTPUT_HOLDERS + FOLLOWER)
    workers = ("-n", "2") if mode == "xdist" else ()
    command = [sys.executable, "-m", "pytest", *ARGS, "-s", *workers]
    session = subprocess.Popen(
        command,
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = session.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(session.pid, signal.SIGKILL)
        output, _ = session.communicate()
        pytest.fail(f"the session's output was still open a minute later:\n{output}")
    assert session.returncode == 0, output
    assert "3 passed" in output, output
    assert "processes the tests left running" in output, output


@pytest.mark.parametrize("outer_worker", ["gw0", "gw1"])
def test_a_workers_end_spares_the_other_workers_of_a_session_run_by_an_xdist_worker(
    pytester: pytest.Pytester, marked: str, monkeypatch: pytest.MonkeyPatch, outer_worker: str
) -> None:
    # A session a test runs under pytest-xdist inherits the outer worker's name:
    # its own workers are started with it and with the session's mark. The
    # worker that ends first must not take the other, still running a test,
    # for a process its tests left behind. Each outer name matches one of them.
    pytest.importorskip("xdist")
    monkeypatch.setenv("PYTEST_XDIST_WORKER", outer_worker)
    pytester.makepyfile(
        test_a="def test_quick():\n    pass\n",
        test_b="import time\n\ndef test_slow():\n    time.sleep(2)\n",
    )
    result = pytester.runpytest_subprocess(
        *ARGS, "-n", "2", "--dist", "loadfile", "--expire-default=10", timeout=120
    )
    result.assert_outcomes(passed=2)
    assert "crashed" not in result.stdout.str()
    assert "processes the tests left running" not in result.stdout.str()
