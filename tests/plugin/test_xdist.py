"""Under pytest-xdist: the controller hosts the watchdog, a killed worker's test is reported.

Every session here runs real xdist workers with real hangs that no
interrupt ends (C code holding the GIL), so the watchdog kills the worker:
the test must be reported as expired in the phase it hung in, with its
duration and stacks (in the terminal and in JUnit XML), the worker
replaced, the run gone on, and nothing left behind: no session directory
in the temp directory, no process. Each session has a temp directory of
its own, which every process it starts inherits in its environment: that
is how a process left behind is found, wherever it went.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from snippets import HOLD_THE_GIL_FOREVER

pytest.importorskip("xdist")

ARGS = ("--expire-grace=0.5", "-p", "no:randomly", "-p", "no:cacheprovider")


@pytest.fixture
def temp_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The session's temp directory (``tempfile.gettempdir()`` in all its processes).

    Short, as the watchdog's Unix socket lives in it.
    """
    path = Path(tempfile.mkdtemp(prefix="xdist-"))
    monkeypatch.setenv("TMPDIR", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run(
    pytester: pytest.Pytester, tests: str, followers: int, *args: str, pause: float = 0
) -> pytest.RunResult:
    """A session of ``tests``, then ``followers`` tests that must run and pass (each
    ``pause`` long), with ``hold_the_gil_forever()`` at hand."""
    pytester.makepyfile(
        test_suite=HOLD_THE_GIL_FOREVER
        + "import os, subprocess, sys, time\nimport pytest\n"
        + textwrap.dedent(tests)
        + textwrap.dedent(
            f"""
            @pytest.mark.parametrize("i", range({followers}))
            def test_still_runs(i):
                time.sleep({pause})
            """
        )
    )
    return pytester.runpytest_subprocess(*ARGS, "--junitxml=report.xml", *args, timeout=60)


def assert_nothing_left(temp_dir: Path) -> None:
    """No session directory in the session's temp directory, no process of the session alive.

    A process left is killed (by PID) before the test fails.
    """
    assert not list(temp_dir.glob("pytest-expire-*"))
    left = []
    for process in psutil.process_iter():
        try:
            if process.pid != os.getpid() and process.environ().get("TMPDIR") == str(temp_dir):
                left.append(process)
        except psutil.Error:  # gone, a zombie, or not ours to read
            continue
    # A process killed just now may still be on its way out.
    _, alive = psutil.wait_procs(left, timeout=3)
    for process in alive:
        process.kill()
    assert not alive, [" ".join(process.cmdline()) for process in alive]


def junit_cases(pytester: pytest.Pytester) -> dict[str, list[ET.Element]]:
    """The JUnit XML's test cases by name (test function's name and parameters): one
    per run of the test (``--dist each`` runs it on every worker)."""
    cases: dict[str, list[ET.Element]] = {}
    for case in ET.parse(pytester.path / "report.xml").getroot().iter("testcase"):
        cases.setdefault(case.get("name", ""), []).append(case)
    return cases


def assert_killed_in_junit(
    cases: list[ET.Element], tag: str, message: str, stacks: str, phase: str = "call"
) -> None:
    """A killed test's JUnit case (of ``cases``, the one that did not pass): one ``tag``
    whose message is ``message`` (the short summary's words), the kill and the stacks
    in its text, and its real duration, at least its deadline and grace (0.5 s each
    here)."""
    (case,) = [case for case in cases if len(case)]
    (element,) = [child for child in case if child.tag in ("failure", "error")]
    assert element.tag == tag
    # JUnit's own words around it for an error: 'failed on setup with "..."'.
    assert element.get("message", "") in (message, f'failed on {phase} with "{message}"')
    assert "did not stop when interrupted and its process was killed" in (element.text or "")
    assert stacks in (element.text or "")
    assert 1.0 <= float(case.get("time", "0")) < 30


def test_a_hang_in_each_phase_is_reported_in_that_phase(
    pytester: pytest.Pytester, temp_dir: Path
) -> None:
    result = run(
        pytester,
        """
        @pytest.fixture
        def stuck_in_setup():
            hold_the_gil_forever()

        @pytest.fixture
        def stuck_in_teardown():
            yield
            hold_the_gil_forever()

        def test_hangs_in_setup(stuck_in_setup):
            pass

        def test_hangs_in_call():
            # Killed with its worker: the worker's tree is killed.
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
            hold_the_gil_forever()

        def test_hangs_in_teardown(stuck_in_teardown):
            pass

        def test_exits_in_call():
            # A crash of its own: xdist's words, in the phase it happened in.
            os._exit(3)
        """,
        4,
        "-n",
        "2",
        "--expire-default=0.5",
    )
    # test_hangs_in_teardown passed its call, as in a serial session.
    result.assert_outcomes(passed=5, failed=2, errors=2)
    killed = "it did not stop when interrupted and its process was killed 0.5 s later"
    for phase in ("setup", "call", "teardown"):
        result.stdout.fnmatch_lines(
            [f"*test_hangs_in_{phase} expired after 0.5 s (in {phase}); {killed}"]
        )
        result.stdout.fnmatch_lines(
            [f"*- expired: test_suite.py::test_hangs_in_{phase} after 0.5 s -*"]
        )
    result.stdout.fnmatch_lines(
        ["*worker 'gw*' crashed while running 'test_suite.py::test_exits_in_call'"]
    )
    cases = junit_cases(pytester)
    for phase, tag in (("setup", "error"), ("call", "failure"), ("teardown", "error")):
        assert_killed_in_junit(
            cases[f"test_hangs_in_{phase}"],
            tag,
            f"expired after 0.5 s (in {phase}); killed",
            "in hold_the_gil_forever",
            phase,
        )
    assert "import time; time.sleep(3600)" in (cases["test_hangs_in_call"][0][0].text or "")
    assert cases["test_exits_in_call"][0][0].tag == "failure"
    assert not any(len(cases[f"test_still_runs[{i}]"][0]) for i in range(4))
    assert_nothing_left(temp_dir)


def test_with_markers_only_every_worker_is_a_client_of_the_controllers_watchdog(
    pytester: pytest.Pytester, temp_dir: Path
) -> None:
    # No default deadline: the controller cannot know that some test has one.
    result = run(
        pytester,
        """
        from pathlib import Path
        from pytest_expire.client import current_link

        @pytest.mark.expires(0.5)
        def test_hangs():
            hold_the_gil_forever()

        @pytest.mark.expires(0.7)
        def test_hangs_longer():
            hold_the_gil_forever()

        @pytest.mark.expires(30)
        @pytest.mark.parametrize("i", range(4))
        def test_is_a_client(i):
            # A worker's parent is the controller, whose watchdog it uses.
            assert os.environ["PYTEST_EXPIRE_OWNER"] == str(os.getppid())
            assert current_link().directory == Path(os.environ["PYTEST_EXPIRE_DIRECTORY"])
        """,
        2,
        "-n",
        "auto",
        "--maxprocesses=2",
    )
    result.assert_outcomes(passed=6, failed=2)
    killed = "it did not stop when interrupted and its process was killed 0.5 s later"
    result.stdout.fnmatch_lines([f"*test_hangs expired after 0.5 s (in call); {killed}"])
    result.stdout.fnmatch_lines([f"*test_hangs_longer expired after 0.7 s (in call); {killed}"])
    # In the reports, not only on stderr as a kill that nobody reports.
    assert "Its stacks:" not in result.stderr.str()
    cases = junit_cases(pytester)
    for name, seconds in (("test_hangs", "0.5"), ("test_hangs_longer", "0.7")):
        assert_killed_in_junit(
            cases[name],
            "failure",
            f"expired after {seconds} s (in call); killed",
            "in hold_the_gil_forever",
        )
    assert_nothing_left(temp_dir)


EVERYWHERE = "True"


@pytest.mark.parametrize(
    ("args", "hangs", "outcomes"),
    [
        # xdist's schedulers by scope would run the killed test again on each new
        # worker, where it hangs again (pytest-xdist#1371).
        (("--dist", "loadscope"), EVERYWHERE, {"passed": 12, "failed": 1}),
        (("--dist", "loadfile"), EVERYWHERE, {"passed": 12, "failed": 1}),
        # Every worker runs every test. Hanging on one worker only: xdist's scheduler
        # fails two workers replaced at once (KeyError in EachScheduling.schedule).
        (
            ("--dist", "each"),
            'os.environ["PYTEST_XDIST_WORKER"] == "gw0"',
            {"passed": 25, "failed": 1},
        ),
        (("--max-worker-restart=1",), EVERYWHERE, {"passed": 12, "failed": 1}),
    ],
    ids=["loadscope", "loadfile", "each", "max-worker-restart=1"],
)
def test_the_run_goes_on_after_a_kill(
    pytester: pytest.Pytester,
    temp_dir: Path,
    args: tuple[str, ...],
    hangs: str,
    outcomes: dict[str, int],
) -> None:
    result = run(
        pytester,
        f"""
        def test_hangs():
            if {hangs}:
                hold_the_gil_forever()
        """,
        12,
        "-n",
        "2",
        "--expire-default=0.5",
        *args,
    )
    result.assert_outcomes(**outcomes)
    result.stdout.fnmatch_lines(["*test_hangs expired after 0.5 s (in call); it did not stop*"])
    assert_killed_in_junit(
        junit_cases(pytester)["test_hangs"],
        "failure",
        "expired after 0.5 s (in call); killed",
        "in hold_the_gil_forever",
    )
    assert_nothing_left(temp_dir)


@pytest.mark.parametrize(
    ("args", "stop", "exit_code"),
    [
        # xdist's exit status when it stops after failures.
        (("-x",), "stopping after 1 failures", pytest.ExitCode.INTERRUPTED),
        (("--maxfail=1",), "stopping after 1 failures", pytest.ExitCode.INTERRUPTED),
        (
            ("--max-worker-restart=0",),
            "worker gw* crashed and worker restarting disabled",
            pytest.ExitCode.TESTS_FAILED,
        ),
    ],
    ids=["x", "maxfail=1", "max-worker-restart=0"],
)
def test_a_kill_stops_a_run_told_to_stop(
    pytester: pytest.Pytester,
    temp_dir: Path,
    args: tuple[str, ...],
    stop: str,
    exit_code: pytest.ExitCode,
) -> None:
    # The tests that follow take longer than the kill: some are never handed out.
    result = run(
        pytester,
        """
        def test_hangs():
            hold_the_gil_forever()
        """,
        60,
        "-n",
        "2",
        "--expire-default=0.5",
        *args,
        pause=0.1,
    )
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] == 1
    assert 0 < outcomes["passed"] < 60
    assert result.ret == exit_code
    result.stdout.fnmatch_lines([f"*{stop}*"])
    result.stdout.fnmatch_lines(["*test_hangs expired after 0.5 s (in call); it did not stop*"])
    assert_nothing_left(temp_dir)
