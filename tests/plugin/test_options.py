"""The plugin's interface: options, ini, environment, markers, header, bad input."""

from __future__ import annotations

import pytest
from snippets import FOLLOWER, SWALLOWS_EVERY_INTERRUPT

SLOW_TEST = """
import time
import pytest

{decorator}
def test_slow():
    time.sleep(0.8)
"""

#: What a refused value says, as fnmatch patterns.
EMPTY = "expected a number of seconds, got an empty value (0 means none)"
TOO_LONG = "expected at most 315360000 seconds (10 years: longer than any test run*"


def run_slow(pytester: pytest.Pytester, *args: str, decorator: str = "") -> pytest.RunResult:
    pytester.makepyfile(test_slow=SLOW_TEST.format(decorator=decorator))
    return pytester.runpytest_subprocess(*args, timeout=60)


def test_off_unless_set(pytester: pytest.Pytester) -> None:
    result = run_slow(pytester)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["expire: no default deadline, grace 5 s"])


def test_header_shows_the_effective_settings(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_ok(): pass")
    result = pytester.runpytest_subprocess("--expire-default=120", "--expire-grace=2")
    result.stdout.fnmatch_lines(["expire: default 120 s (--expire-default), grace 2 s"])


@pytest.mark.parametrize(
    ("setup", "args", "outcome"),
    [
        # marker > CLI
        ("marker", ["--expire-default=30"], "failed"),
        # CLI > env
        ("env", ["--expire-default=30"], "passed"),
        # env > ini
        ("env+ini", [], "passed"),
        ("ini", [], "failed"),
        ("env_short", [], "failed"),
    ],
)
def test_precedence_marker_cli_env_ini(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    setup: str,
    args: list[str],
    outcome: str,
) -> None:
    decorator = "@pytest.mark.expires(0.3)" if setup == "marker" else ""
    if setup in ("env", "env+ini"):
        monkeypatch.setenv("PYTEST_EXPIRE_DEFAULT", "30")
    if setup == "env_short":
        monkeypatch.setenv("PYTEST_EXPIRE_DEFAULT", "0.3")
    if setup in ("ini", "env+ini"):
        pytester.makeini("[pytest]\nexpire_default = 0.3\n")
    result = run_slow(pytester, *args, decorator=decorator)
    result.assert_outcomes(**{outcome: 1})


def test_marker_zero_or_none_disables_a_default(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import time
        import pytest

        @pytest.mark.expires(0)
        def test_zero():
            time.sleep(0.6)

        @pytest.mark.expires(None)
        def test_none():
            time.sleep(0.6)
        """
    )
    result = pytester.runpytest_subprocess("--expire-default=0.3", timeout=60)
    result.assert_outcomes(passed=2)


def test_marker_on_class_and_module_and_closest_wins(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import time
        import pytest

        pytestmark = pytest.mark.expires(0.3)

        def test_module_level():
            time.sleep(0.8)

        @pytest.mark.expires(after=5)
        class TestClass:
            def test_class_level(self):
                time.sleep(0.8)

            @pytest.mark.expires(0.3)
            def test_method_level(self):
                time.sleep(0.8)
        """
    )
    result = pytester.runpytest_subprocess("-rA", timeout=60)
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(["PASSED *TestClass::test_class_level"])


def test_strict_markers_clean(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.expires(10)
        def test_marked():
            pass
        """
    )
    result = pytester.runpytest_subprocess("--strict-markers")
    result.assert_outcomes(passed=1)
    result = pytester.runpytest_subprocess("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.expires(seconds):*"])


def test_disabled_with_p_no_expire(pytester: pytest.Pytester) -> None:
    result = run_slow(pytester, "-p", "no:expire", "--expire-default=0.3")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unrecognized arguments: --expire-default=0.3*"])
    result = run_slow(pytester, "-p", "no:expire", decorator="@pytest.mark.expires(0.3)")
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--expire-default=soon"], "*argument --expire-default: expected a number of seconds*"),
        (["--expire-default=-5"], "*argument --expire-default: *>= 0, got '-5'*"),
        (["--expire-grace=x"], "*argument --expire-grace: expected a number of seconds*"),
        # An unset shell variable must not switch the deadlines off unnoticed.
        (["--expire-default="], f"*argument --expire-default: {EMPTY}*"),
        (["--expire-grace="], f"*argument --expire-grace: {EMPTY}*"),
        (["--expire-default=1e9"], f"*argument --expire-default: {TOO_LONG}, got '1e9'*"),
        (["--expire-grace=1e9"], f"*argument --expire-grace: {TOO_LONG}, got '1e9'*"),
        (["--expire-default=1e400"], "*argument --expire-default: *finite*, got '1e400'*"),
        (["--expire-default=inf"], "*argument --expire-default: *finite*, got 'inf'*"),
        (["--expire-grace=1e400"], "*argument --expire-grace: *finite*, got '1e400'*"),
        (["--expire-grace=nan"], "*argument --expire-grace: *finite*, got 'nan'*"),
    ],
)
def test_bad_options_are_usage_errors(
    pytester: pytest.Pytester, args: list[str], message: str
) -> None:
    pytester.makepyfile("def test_ok(): pass")
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_bad_ini_and_env_are_usage_errors(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile("def test_ok(): pass")
    pytester.makeini("[pytest]\nexpire_default = later\n")
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini expire_default: expected a number of seconds, got 'later'*"])
    monkeypatch.setenv("PYTEST_EXPIRE_DEFAULT", "-1")
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*environment PYTEST_EXPIRE_DEFAULT: *>= 0, got '-1'*"])


@pytest.mark.parametrize(
    ("source", "value", "message"),
    [
        ("env", "1e400", "environment PYTEST_EXPIRE_DEFAULT: *finite*"),
        ("env", "nan", "environment PYTEST_EXPIRE_DEFAULT: *finite*"),
        ("env", "1e9", f"environment PYTEST_EXPIRE_DEFAULT: {TOO_LONG}*"),
        ("expire_default", "inf", "ini expire_default: *finite*"),
        ("expire_default", "1e9", f"ini expire_default: {TOO_LONG}*"),
        ("expire_grace", "1e400", "ini expire_grace: *finite*"),
        ("expire_grace", "nan", "ini expire_grace: *finite*"),
        ("expire_grace", "1e9", f"ini expire_grace: {TOO_LONG}*"),
    ],
)
def test_infinite_and_huge_ini_and_env_values_are_usage_errors(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    source: str,
    value: str,
    message: str,
) -> None:
    pytester.makepyfile("def test_ok(): pass")
    if source == "env":
        monkeypatch.setenv("PYTEST_EXPIRE_DEFAULT", value)
    else:
        pytester.makeini(f"[pytest]\n{source} = {value}\n")
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}"])
    assert "Traceback" not in result.stderr.str()


@pytest.mark.parametrize(
    ("ini", "args", "grace"),
    [
        ("expire_grace = 0", [], "0 s"),
        ("", ["--expire-grace=0"], "0 s"),
        ("expire_grace =", [], "5 s"),
    ],
)
def test_a_grace_of_zero_is_zero_and_only_empty_is_unset(
    pytester: pytest.Pytester, ini: str, args: list[str], grace: str
) -> None:
    pytester.makepyfile("def test_ok(): pass")
    pytester.makeini(f"[pytest]\n{ini}\n")
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"expire: no default deadline, grace {grace}"])


def test_an_ini_grace_of_zero_kills_right_after_the_interrupt(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nexpire_default = 0.5\nexpire_grace = 0\n")
    pytester.makepyfile(SWALLOWS_EVERY_INTERRUPT + FOLLOWER)
    result = pytester.runpytest_subprocess(timeout=60)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_hangs expired after 0.5 s*was killed 0 s later*"])


@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_environment_variable_counts_as_unset(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, empty: str
) -> None:
    """Documented: an empty variable passes to the ini's value, unlike an empty option."""
    monkeypatch.setenv("PYTEST_EXPIRE_DEFAULT", empty)
    pytester.makeini("[pytest]\nexpire_default = 0.3\n")
    result = run_slow(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["expire: default 0.3 s (ini), grace 5 s"])


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("expires('60')", "got '60'"),
        ("expires(-1)", ">= 0"),
        ("expires(1, 2)", "got 2 values"),
        ("expires(seconds=1)", "unknown keyword seconds"),
        ("expires(after=1, seconds=2)", "unknown keyword seconds"),
        ("expires(True)", "got True"),
        ("expires(float('inf'))", "finite"),
        ("expires(10**400)", f"{TOO_LONG}, got an integer of over 300 digits"),
        ("expires(10**9)", f"{TOO_LONG}, got 1e+09"),
    ],
)
def test_bad_markers_are_usage_errors_naming_the_test(
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
    result.stderr.fnmatch_lines(
        [
            "*test_bad_markers_are_usage_errors_naming_the_test.py::test_marked: "
            f"@pytest.mark.expires*{message}*"
        ]
    )
    assert "Traceback" not in result.stderr.str()
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_a_bad_marker_is_a_usage_error_in_a_supervised_session_too(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.expires("soon")
        def test_marked():
            pass
        """
    )
    result = pytester.runpytest_subprocess("--expire-default=30")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*::test_marked: @pytest.mark.expires takes one number*"])
