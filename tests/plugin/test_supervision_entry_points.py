"""Every way of starting pytest survives the kill of a hung test, and only running ones fork.

Each scenario starts a real pytest session in a process of its own, whose
hung test is really killed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET

import pytest
from snippets import ARGS, GIL_HANG_SUITE

EXPIRED = "*test_hangs expired after 0.5 s (in call); it did not stop*"


def _test_names(report: str) -> set[str | None]:
    return {case.get("name") for case in ET.parse(report).getroot().iter("testcase")}


def test_pytest_main_returns_the_exit_status_to_its_program_after_a_kill(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_suite=GIL_HANG_SUITE)
    program = pytester.makepyfile(
        program=f"""
        import pytest

        args = [*{ARGS!r}, "test_suite.py", "-p", "no:cacheprovider", "--junitxml=report.xml"]
        code = pytest.main(args)
        print("the program goes on after pytest.main:", int(code))
        """
    )
    result = pytester.run(sys.executable, program, timeout=120)
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines([EXPIRED, "*1 failed, 1 passed*"])
    result.stdout.fnmatch_lines(["the program goes on after pytest.main: 1"])
    # Once: the program went on in the process that was started, not in its worker too.
    assert result.stdout.str().count("the program goes on") == 1
    assert _test_names(str(pytester.path / "report.xml")) == {"test_hangs", "test_still_runs"}


@pytest.mark.parametrize(
    ("conftest", "plugins"),
    [
        pytest.param(
            """
            import threading

            def pytest_collection_finish(session):
                threading.Thread(target=threading.Event().wait, daemon=True).start()
            """,
            (),
            id="a conftest's thread at the end of collection",
        ),
        # pytest-rerunfailures starts a thread in pytest_configure when
        # pytest-xdist is installed.
        pytest.param("", ("rerunfailures", "xdist"), id="pytest-rerunfailures beside pytest-xdist"),
    ],
)
def test_a_thread_a_plugin_starts_leaves_the_session_supervised(
    pytester: pytest.Pytester, conftest: str, plugins: tuple[str, ...]
) -> None:
    for plugin in plugins:
        pytest.importorskip({"rerunfailures": "pytest_rerunfailures"}.get(plugin, plugin))
    pytester.makeconftest(conftest)
    pytester.makepyfile(test_suite=GIL_HANG_SUITE)
    loaded = [arg for plugin in plugins for arg in ("-p", plugin)]
    result = pytester.runpytest_subprocess(
        *ARGS, *loaded, "-p", "no:randomly", "--junitxml=report.xml"
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([EXPIRED])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert _test_names(str(pytester.path / "report.xml")) == {"test_hangs", "test_still_runs"}


@pytest.mark.parametrize(
    ("args", "forks"),
    [
        ((), True),
        (("--collect-only",), False),
        (("--fixtures",), False),
        (("--markers",), False),
        (("--help",), False),
        (("--setup-plan",), False),
        (("-n", "1"), False),
    ],
)
def test_only_a_session_that_runs_tests_outside_xdist_forks(
    pytester: pytest.Pytester, args: tuple[str, ...], forks: bool
) -> None:
    if "-n" in args:
        pytest.importorskip("xdist")
    pytester.makeconftest(
        """
        import os, sys

        def pytest_configure(config):
            sys.stderr.write(f"configured in {os.getpid()}\\n")
        """
    )
    pytester.makepyfile("def test_passes(): pass")
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", "--expire-default=30", "-p", "no:cacheprovider", *args],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stdout + stderr
    configured_in = {
        int(line.split()[-1]) for line in stderr.splitlines() if line.startswith("configured in")
    }
    assert configured_in, stdout + stderr
    assert (process.pid in configured_in) is not forks


def test_a_session_inside_a_test_runs_in_the_tests_process(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        textwrap.dedent(
            """
            import os

            pytest_plugins = ["pytester"]

            def test_runs_pytest_inside(pytester):
                pytester.makepyfile(
                    test_inner=f"import os\\ndef test_inner(): assert os.getpid() == {os.getpid()}"
                )
                inner = pytester.runpytest_inprocess("--expire-default=30", "-p", "no:randomly")
                inner.assert_outcomes(passed=1)
            """
        )
    )
    result = pytester.runpytest_subprocess("--expire-default=30", "-p", "no:randomly")
    result.assert_outcomes(passed=1)
