"""The tricky spots of a deadline: edges in time, forks, capture, children."""

from __future__ import annotations

import re

import pytest
from snippets import skip_unless_py_spy_reads_processes


def test_an_interrupt_never_lands_in_the_next_test(pytester: pytest.Pytester) -> None:
    # Tests that end right at their 0.1 s deadline, each followed by one that
    # takes no time and has a deadline it cannot reach: an interrupt meant for
    # the first must never fail the second.
    pytester.makepyfile(
        """
        import time
        import pytest

        @pytest.mark.parametrize("i", range(25))
        def test_pair(i):
            time.sleep(0.1 + (i % 5 - 2) * 0.002)

        @pytest.mark.expires(30)
        @pytest.mark.parametrize("i", range(25))
        def test_quick(i):
            pass
        """
    )
    pytester.makeconftest(
        """
        def pytest_collection_modifyitems(items):
            pairs = [item for item in items if "test_pair" in item.nodeid]
            quick = [item for item in items if "test_quick" in item.nodeid]
            items[:] = [item for both in zip(pairs, quick) for item in both]
        """
    )
    result = pytester.runpytest_subprocess("--expire-default=0.1", "-rA", timeout=120)
    output = result.stdout.str()
    assert len(re.findall(r"^PASSED .*test_quick", output, re.M)) == 25, output
    # Named on the failure's first line, and on the short summary's.
    expired = re.findall(r"(\S+::\S+) expired after", output)
    expired += re.findall(r"^FAILED (\S+) - expired after", output, re.M)
    assert expired and all("test_pair" in nodeid for nodeid in expired), expired


def test_an_ended_tests_timers_never_reach_a_test_without_a_deadline(
    pytester: pytest.Pytester,
) -> None:
    # A test's timers are released with the next test's arm; a test without a
    # deadline arms nothing, so it must release them itself, or the first
    # test's kill (0.3 + 0.3 s after it started) would end the second.
    pytester.makepyfile(
        """
        import time
        import pytest

        @pytest.mark.expires(0.3)
        def test_quick():
            pass

        def test_slow_without_deadline():
            time.sleep(1.5)
        """
    )
    result = pytester.runpytest_subprocess("--expire-grace=0.3", timeout=60)
    result.assert_outcomes(passed=2)
    assert "killed" not in result.stdout.str() + result.stderr.str()


def test_a_wait_between_two_tests_is_not_taken_for_a_hang(pytester: pytest.Pytester) -> None:
    # An xdist worker waits between two tests until it learns its next one;
    # an outer hook wrapper that sleeps after each test stands for that wait
    # here. The ended test's timers must be gone by then, or its kill (0.3 +
    # 0.3 s after it started) would end the worker.
    pytester.makepyfile(
        """
        def test_first():
            pass

        def test_second():
            pass
        """
    )
    pytester.makeconftest(
        """
        import time
        import pytest

        @pytest.hookimpl(wrapper=True, tryfirst=True)
        def pytest_runtest_protocol(item):
            try:
                return (yield)
            finally:
                time.sleep(1.0)
        """
    )
    result = pytester.runpytest_subprocess("--expire-default=0.3", "--expire-grace=0.3", timeout=60)
    result.assert_outcomes(passed=2)
    assert "killed" not in result.stdout.str() + result.stderr.str()


def test_the_last_tests_timers_never_reach_the_end_of_the_session(
    pytester: pytest.Pytester,
) -> None:
    # After the last test (or the test -x stops at) nothing arms again: its
    # timers must be released before the session's slow end.
    pytester.makepyfile(
        """
        def test_fails():
            assert False

        def test_never_runs():
            pass
        """
    )
    pytester.makeconftest(
        """
        import time

        def pytest_sessionfinish():
            time.sleep(1.5)
        """
    )
    result = pytester.runpytest_subprocess(
        "--expire-default=0.3", "--expire-grace=0.3", "-x", timeout=60
    )
    result.assert_outcomes(failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "killed" not in result.stdout.str() + result.stderr.str()


def test_each_expired_test_of_a_process_gets_its_own_stacks(pytester: pytest.Pytester) -> None:
    # The watchdog files its stacks by the process's PID, and one process
    # runs both tests: the second must not show the first's stacks.
    pytester.makepyfile(
        test_suite="""
        import time

        def first_waits():
            time.sleep(3600)

        def second_waits():
            time.sleep(3600)

        def test_first():
            first_waits()

        def test_second():
            second_waits()
        """
    )
    result = pytester.runpytest_subprocess("--expire-default=0.3", timeout=60)
    result.assert_outcomes(failed=2)
    output = result.stdout.str()

    def section(test: str) -> str:
        """The report section of ``test``'s stacks: up to the next test's header or the summary."""
        start = output.index(f"expired: test_suite.py::{test} after")
        return re.split(r"\n(?:_{3,}|={3,}) ", output[start:])[0]

    first, second = section("test_first"), section("test_second")
    assert "in first_waits" in first and "second_waits" not in first
    assert "in second_waits" in second and "first_waits" not in second


def test_a_forked_child_dumps_its_own_stacks(pytester: pytest.Pytester) -> None:
    child_pid_file = pytester.path / "child.pid"
    pytester.makepyfile(
        f"""
        import os, time

        def hang_in_the_child():
            time.sleep(3600)

        def test_forks():
            pid = os.fork()
            if pid == 0:
                hang_in_the_child()
                os._exit(0)
            with open({str(child_pid_file)!r}, "w") as file:
                file.write(str(pid))
            try:
                os.waitpid(pid, 0)
            finally:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
        """
    )
    result = pytester.runpytest_subprocess("--expire-default=0.5", timeout=60)
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    child_pid = child_pid_file.read_text()
    # The child's dump: from its heading to the blank line that ends its one thread.
    child_dump = output[output.index(f"--- process {child_pid}:") :].split("\n\n")[0]
    assert "hang_in_the_child" in child_dump
    assert "os.waitpid" not in child_dump


def test_a_subprocess_that_did_not_join_is_read_from_outside(pytester: pytest.Pytester) -> None:
    # In isolated mode (-I) it does not join the session, so it is not
    # registered for dumps: py-spy (the native extra) reads its stacks
    # through ptrace.
    skip_unless_py_spy_reads_processes()
    pytester.makepyfile(
        """
        import subprocess, sys, time

        CHILD = "import time\\ndef waits_in_a_subprocess():\\n    time.sleep(3600)\\n" \\
            "waits_in_a_subprocess()\\n"

        def test_starts_and_hangs():
            child = subprocess.Popen([sys.executable, "-I", "-c", CHILD])
            try:
                time.sleep(3600)
            finally:
                child.kill()
                child.wait()
        """
    )
    result = pytester.runpytest_subprocess("--expire-default=1", timeout=60)
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    assert "(read by py-spy)" in output, output
    assert "waits_in_a_subprocess" in output


def test_the_dump_reaches_the_report_despite_capture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import sys, time

        def test_prints_and_hangs():
            print("to stdout")
            sys.stderr.write("to stderr")
            time.sleep(3600)
        """
    )
    for capture in ("fd", "sys", "no"):
        result = pytester.runpytest_subprocess(
            "--expire-default=0.5", f"--capture={capture}", timeout=60
        )
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(["*expired: *test_prints_and_hangs after 0.5 s*"])
        assert "in test_prints_and_hangs" in result.stdout.str()


def test_a_test_without_a_deadline_starts_no_watchdog(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTEST_EXPIRE_ADDRESS", raising=False)  # this session's own, if any
    pytester.makepyfile(
        """
        import os

        def test_no_deadline():
            assert "PYTEST_EXPIRE_ADDRESS" not in os.environ
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize(("marker", "per_test"), [("", False), ("@pytest.mark.expires(30)", True)])
def test_per_test_hooks_only_when_some_test_has_a_deadline(
    pytester: pytest.Pytester, marker: str, per_test: bool
) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        {marker}
        def test_first(pytestconfig):
            hooks = pytestconfig.pluginmanager.get_plugin("expire-session-tests")
            assert (hooks is not None) is {per_test}

        def test_second():
            pass
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=2)


def test_the_watchdog_address_is_in_the_environment(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import os
        import pytest

        @pytest.mark.expires(30)
        def test_armed():
            assert os.environ["PYTEST_EXPIRE_ADDRESS"].startswith("unix:/")
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)


def test_a_hang_in_one_teardown_does_not_skip_the_others(pytester: pytest.Pytester) -> None:
    # The interrupt ends the hung teardown; the teardown of the other fixture,
    # and the setup of the next test, must still happen as if it had failed.
    torn_down = pytester.path / "torn-down"
    pytester.makepyfile(
        f"""
        import time
        import pytest

        @pytest.fixture
        def tidy():
            yield
            open({str(torn_down)!r}, "w").close()

        @pytest.fixture
        def stuck(tidy):
            yield
            time.sleep(3600)

        @pytest.mark.expires(0.5)
        def test_hangs_in_teardown(stuck):
            pass

        def test_next():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-rA", timeout=60)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*expired after 0.5 s (in teardown)*", "PASSED *::test_next"])
    assert torn_down.exists()


def test_an_interrupt_waits_until_it_lands_outside_pytest(pytester: pytest.Pytester) -> None:
    # Raised in the middle of pytest's (or pluggy's) own code, the interrupt
    # could leave the session's state half updated: it lands once the test's
    # own code runs again.
    pytester.makepyfile(
        """
        import time
        import pytest

        INTERNAL = {"__name__": "_pytest.pretend_internal", "time": time}
        exec(
            "def spin_inside_pytest(seconds):\\n"
            "    end = time.monotonic() + seconds\\n"
            "    while time.monotonic() < end:\\n"
            "        pass\\n",
            INTERNAL,
        )

        @pytest.mark.expires(0.2)
        def test_spins_inside_then_outside():
            # The test's first line of its own after the spin is the loop.
            end = time.monotonic() + 30
            INTERNAL["spin_inside_pytest"](1.0)
            while time.monotonic() < end:  # the interrupt lands here
                pass
        """
    )
    assert_interrupted_where_marked(pytester.runpytest_subprocess(timeout=60))


def test_an_interrupt_never_lands_in_a_hook_between_phases(pytester: pytest.Pytester) -> None:
    # A conftest's hook runs between the setup and the call: an exception
    # there would break pytest itself. The interrupt lands in the call.
    pytester.makeconftest(
        """
        import time

        def pytest_runtest_logreport(report):
            if report.when == "setup":
                end = time.monotonic() + 1.0
                while time.monotonic() < end:
                    pass
        """
    )
    pytester.makepyfile(
        """
        import time
        import pytest

        @pytest.mark.expires(0.2)
        def test_spins():
            end = time.monotonic() + 30
            while time.monotonic() < end:  # the interrupt lands here
                pass
        """
    )
    result = pytester.runpytest_subprocess(timeout=60)
    assert_interrupted_where_marked(result)
    result.stdout.no_fnmatch_line("*INTERNALERROR*")


def assert_interrupted_where_marked(result: pytest.RunResult) -> None:
    """The one test failed in its call, at the line marked "the interrupt lands here"."""
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [">*while time.monotonic() < end:  # the interrupt lands here", "*(in call)*"]
    )
