"""The plugin's interface: options, ini, environment, markers, header, bad input."""

from __future__ import annotations

import pytest

SLOW_TEST = """
import time
import pytest

{decorator}
def test_slow():
    time.sleep(0.8)
"""


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
    ("marker", "message"),
    [
        ("expires('60')", "got '60'"),
        ("expires(-1)", ">= 0"),
        ("expires(1, 2)", "got 2 values"),
        ("expires(seconds=1)", "unknown keyword seconds"),
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
        [f"*test_bad_markers_are_usage_errors_naming_the_test.py::test_marked*{message}*"]
    )
    assert "Traceback" not in result.stderr.str()


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
