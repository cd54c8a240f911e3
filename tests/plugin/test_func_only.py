"""Func-only deadlines: the test function alone under its deadline, its fixtures' setup
and teardown each under the same deadline on their own."""

from __future__ import annotations

import pytest

#: Three phases of 0.3 s: each well inside a deadline of 0.8 s, together past it.
SLOW_PHASES = """
import time
import pytest

@pytest.fixture
def slow_fixture():
    time.sleep(0.3)
    yield
    time.sleep(0.3)

{decorator}
def test_slow_phases(slow_fixture):
    time.sleep(0.3)
"""


@pytest.mark.parametrize(
    ("decorator", "args", "ini"),
    [
        ("", ["--expire-default=0.8", "--expire-func-only"], ""),
        ("", [], "expire_default = 0.8\nexpire_func_only = true\n"),
        ("@pytest.mark.expires(0.8, func_only=True)", [], ""),
        ("@pytest.mark.expires(after=0.8, func_only=True)", [], ""),
        # No seconds in the marker: the default's, each phase on its own.
        ("@pytest.mark.expires(func_only=True)", ["--expire-default=0.8"], ""),
    ],
)
def test_each_phase_has_the_whole_deadline(
    pytester: pytest.Pytester, decorator: str, args: list[str], ini: str
) -> None:
    if ini:
        pytester.makeini(f"[pytest]\n{ini}")
    pytester.makepyfile(test_phases=SLOW_PHASES.format(decorator=decorator))
    result = pytester.runpytest_subprocess(*args, timeout=60)
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("decorator", "args"),
    [
        ("", ["--expire-default=0.8"]),
        # The marker's word beats the session's.
        ("@pytest.mark.expires(0.8, func_only=False)", ["--expire-func-only"]),
    ],
)
def test_without_func_only_the_phases_share_the_deadline(
    pytester: pytest.Pytester, decorator: str, args: list[str]
) -> None:
    pytester.makepyfile(test_phases=SLOW_PHASES.format(decorator=decorator))
    result = pytester.runpytest_subprocess("--expire-grace=0.5", *args, timeout=60)
    # 0.6 s of setup and call, then the teardown's 0.3 s passes the 0.8 s.
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*test_slow_phases expired after 0.8 s (in teardown)*"])


@pytest.mark.parametrize(
    ("phase", "outcomes"),
    [
        ("setup", {"errors": 1, "passed": 1}),
        ("call", {"failed": 1, "passed": 1}),
        ("teardown", {"errors": 1, "passed": 2}),
    ],
)
def test_a_hang_is_reported_in_its_phase(
    pytester: pytest.Pytester, phase: str, outcomes: dict[str, int]
) -> None:
    # Fixtures are timed too, each phase on its own: a hanging one expires in its phase.
    pytester.makepyfile(
        f"""
        import time
        import pytest

        def hang_in(phase):
            if phase == {phase!r}:
                time.sleep(30)

        @pytest.fixture
        def fixture():
            hang_in("setup")
            yield
            hang_in("teardown")

        def test_hangs(fixture):
            hang_in("call")

        def test_still_runs():
            pass
        """
    )
    result = pytester.runpytest_subprocess(
        "--expire-default=0.5", "--expire-func-only", "--expire-grace=0.5", timeout=60
    )
    result.assert_outcomes(**outcomes)
    result.stdout.fnmatch_lines([f"*test_hangs expired after 0.5 s (in {phase})*"])


def test_a_slow_setup_leaves_the_call_its_whole_deadline(pytester: pytest.Pytester) -> None:
    # Setup 0.4 s, then a call of 0.4 s: inside 0.5 s each, past it together. The
    # call's deadline starts as the setup ends, not when the test began.
    pytester.makepyfile(
        """
        import time
        import pytest

        @pytest.fixture
        def slow_setup():
            time.sleep(0.4)

        @pytest.mark.expires(0.5, func_only=True)
        def test_call(slow_setup):
            time.sleep(0.4)

        @pytest.mark.expires(0.5)
        def test_together(slow_setup):
            time.sleep(0.4)
        """
    )
    result = pytester.runpytest_subprocess("--expire-grace=0.5", "-rA", timeout=60)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*::test_together expired after 0.5 s (in call)", "PASSED *::test_call"]
    )


def test_the_header_says_func_only(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nexpire_func_only = true\n")
    pytester.makepyfile("def test_ok(): pass")
    result = pytester.runpytest_subprocess("--expire-default=30")
    result.stdout.fnmatch_lines(
        [
            "expire: default 30 s (--expire-default), grace 5 s, "
            "func-only (setup, call and teardown each timed on its own)"
        ]
    )


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("expires(1, func_only='yes')", "func_only takes True or False, got 'yes'"),
        ("expires(1, func_only=1)", "func_only takes True or False, got 1"),
        ("expires(func_only=True, seconds=1)", "unknown keyword seconds"),
    ],
)
def test_a_bad_func_only_is_a_usage_error_naming_the_test(
    pytester: pytest.Pytester, marker: str, message: str
) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.{marker}
        def test_marked():
            pass
        """
    )
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*::test_marked: @pytest.mark.expires*{message}*"])
