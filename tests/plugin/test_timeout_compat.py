"""pytest-timeout's marker, options, ini keys and environment variable, honoured under the
opt-in where pytest-timeout is not installed, and left to it where it is."""

from __future__ import annotations

import importlib.util

import pytest

INSTALLED = importlib.util.find_spec("pytest_timeout") is not None
#: Most of these are about a session without pytest-timeout; run where it is missing.
without_pytest_timeout = pytest.mark.skipif(
    INSTALLED, reason="pytest-timeout is installed here: its names are its own"
)
with_pytest_timeout = pytest.mark.skipif(
    not INSTALLED, reason="pytest-timeout is not installed here"
)

OPT_IN = "[pytest]\nexpire_timeout_compat = true\n"

HANGS = """
import time
import pytest

{decorator}
def test_hangs():
    time.sleep(30)
"""

#: 0.8 s: past a deadline of 0.3 s, well inside one of 30 s.
SLOW = """
import time
import pytest

{decorator}
def test_slow():
    time.sleep(0.8)
"""

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


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("--expire-grace=0.5", *args, timeout=60)


@without_pytest_timeout
def test_the_timeout_marker_sets_a_deadline(pytester: pytest.Pytester) -> None:
    pytester.makeini(OPT_IN)
    pytester.makepyfile(
        """
        import time
        import pytest

        @pytest.mark.timeout(0.5)
        def test_hangs():
            time.sleep(30)

        @pytest.mark.timeout(timeout=0.5, method="thread")
        def test_method_by_keyword():
            pass

        @pytest.mark.timeout(0.5, "signal")
        def test_method_by_position():
            pass
        """
    )
    result = run(pytester, "--strict-markers")
    result.assert_outcomes(failed=1, passed=2)
    result.stdout.fnmatch_lines(["*test_hangs expired after 0.5 s (in call)*"])
    result.stdout.fnmatch_lines(["expire: *, pytest-timeout's marker and settings honoured"])


@without_pytest_timeout
@pytest.mark.parametrize(
    ("args", "ini", "env", "source"),
    [
        (["--expire-timeout-compat", "--timeout=0.5"], "", "", "--timeout"),
        ([], f"{OPT_IN}timeout = 0.5\n", "", "ini timeout"),
        ([], OPT_IN, "0.5", "PYTEST_TIMEOUT"),
    ],
)
def test_the_default_from_pytest_timeouts_option_ini_and_environment(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    ini: str,
    env: str,
    source: str,
) -> None:
    if ini:
        pytester.makeini(ini)
    if env:
        monkeypatch.setenv("PYTEST_TIMEOUT", env)
    pytester.makepyfile(HANGS.format(decorator=""))
    result = run(pytester, *args)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [f"expire: default 0.5 s ({source}), *", "*test_hangs expired after 0.5 s (in call)*"]
    )


@without_pytest_timeout
@pytest.mark.parametrize(
    ("decorator", "ini"),
    [
        ("@pytest.mark.timeout(0.8, func_only=True)", OPT_IN),
        # No seconds in the marker: the default's, as pytest-timeout reads it.
        ("@pytest.mark.timeout(func_only=True)", f"{OPT_IN}timeout = 0.8\n"),
        ("@pytest.mark.timeout(None, func_only=True)", f"{OPT_IN}timeout = 0.8\n"),
        ("", f"{OPT_IN}timeout = 0.8\ntimeout_func_only = true\n"),
    ],
)
def test_func_only_gives_each_phase_the_whole_deadline(
    pytester: pytest.Pytester, decorator: str, ini: str
) -> None:
    pytester.makeini(ini)
    pytester.makepyfile(test_phases=SLOW_PHASES.format(decorator=decorator))
    run(pytester).assert_outcomes(passed=1)


@without_pytest_timeout
def test_func_only_still_expires_a_hanging_call(pytester: pytest.Pytester) -> None:
    pytester.makeini(OPT_IN)
    pytester.makepyfile(HANGS.format(decorator="@pytest.mark.timeout(0.5, func_only=True)"))
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*test_hangs expired after 0.5 s (in call)*"])


@without_pytest_timeout
@pytest.mark.parametrize(
    ("decorator", "args", "ini", "env", "outcome"),
    [
        # One level: pytest-expire's marker first.
        ("@pytest.mark.expires(30)\n@pytest.mark.timeout(0.3)", [], "", {}, "passed"),
        ("@pytest.mark.timeout(0.3)\n@pytest.mark.expires(30)", [], "", {}, "passed"),
        # Any marker before any default.
        ("@pytest.mark.timeout(0.3)", ["--expire-default=30"], "", {}, "failed"),
        # Command line, then environment, then ini; at each, pytest-expire's first.
        ("", ["--expire-default=30", "--timeout=0.3"], "", {}, "passed"),
        ("", ["--timeout=30"], "expire_default = 0.3", {}, "passed"),
        ("", ["--timeout=30"], "", {"PYTEST_EXPIRE_DEFAULT": "0.3"}, "passed"),
        ("", [], "", {"PYTEST_EXPIRE_DEFAULT": "30", "PYTEST_TIMEOUT": "0.3"}, "passed"),
        ("", [], "timeout = 0.3", {"PYTEST_TIMEOUT": "30"}, "passed"),
        ("", [], "expire_default = 30\ntimeout = 0.3", {}, "passed"),
        ("", [], "expire_default = 0.3\ntimeout = 30", {}, "failed"),
        # 0 from pytest-timeout's command line disables a default the ini sets.
        ("", ["--timeout=0"], "expire_default = 0.3", {}, "passed"),
    ],
)
def test_precedence(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    decorator: str,
    args: list[str],
    ini: str,
    env: dict[str, str],
    outcome: str,
) -> None:
    pytester.makeini(f"{OPT_IN}{ini}\n")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    pytester.makepyfile(SLOW.format(decorator=decorator))
    run(pytester, *args).assert_outcomes(**{outcome: 1})


@without_pytest_timeout
def test_the_closest_marker_wins_whichever_it_is(pytester: pytest.Pytester) -> None:
    pytester.makeini(OPT_IN)
    pytester.makepyfile(
        """
        import time
        import pytest

        pytestmark = pytest.mark.timeout(0.3)

        @pytest.mark.expires(30)
        class TestExpires:
            @pytest.mark.timeout(0.3)
            def test_function_timeout(self):
                time.sleep(0.8)

            def test_class_expires(self):
                time.sleep(0.8)

        def test_module_timeout():
            time.sleep(0.8)
        """
    )
    result = run(pytester, "-rA")
    result.assert_outcomes(failed=2, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_function_timeout expired after 0.3 s*",
            "*test_module_timeout expired after 0.3 s*",
            "PASSED *::TestExpires::test_class_expires",
        ]
    )


@without_pytest_timeout
def test_pytest_timeouts_debugger_switch_is_honoured(pytester: pytest.Pytester) -> None:
    pytester.makeini(f"{OPT_IN}timeout_disable_debugger_detection = true\n")
    pytester.makepyfile("def test_ok(): pass")
    result = run(pytester, "--timeout=30")
    result.stdout.fnmatch_lines(
        [
            "expire: default 30 s (--timeout), grace 0.5 s, debugger detection off, "
            "pytest-timeout's marker and settings honoured"
        ]
    )


@without_pytest_timeout
def test_timeout_method_is_accepted_and_ignored(pytester: pytest.Pytester) -> None:
    pytester.makeini(f"{OPT_IN}timeout_method = thread\n")
    pytester.makepyfile(HANGS.format(decorator="@pytest.mark.timeout(0.5)"))
    result = run(pytester, "--timeout-method=signal")
    # Interrupted and failed, neither by SIGALRM nor by ending the session (thread).
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*test_hangs expired after 0.5 s (in call)*"])


@without_pytest_timeout
def test_pytest_timeouts_hooks_in_a_conftest_load_and_are_never_called(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(OPT_IN)
    pytester.makeconftest(
        """
        def pytest_timeout_set_timer(item, settings):
            raise AssertionError("called")

        def pytest_timeout_cancel_timer(item):
            raise AssertionError("called")
        """
    )
    pytester.makepyfile(HANGS.format(decorator="@pytest.mark.timeout(0.5)"))
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*test_hangs expired after 0.5 s (in call)*"])
    result.stdout.no_fnmatch_line("*AssertionError: called*")


@without_pytest_timeout
@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("timeout()", "got no argument"),
        ("timeout(1, 'signal', True)", "got 3 positional arguments"),
        ("timeout(1, timeout=2)", "timeout given twice"),
        ("timeout(1, method='fork')", "method 'fork' is not one of signal, thread"),
        ("timeout(1, disable_debugger_detection=True)", "unknown keyword disable_debugger"),
        ("timeout('soon')", "expected a number of seconds, got 'soon'"),
        ("timeout(-1)", "expected a number of seconds >= 0"),
        ("timeout(1, func_only='yes')", "func_only takes True or False, got 'yes'"),
    ],
)
def test_a_bad_timeout_marker_is_a_usage_error_naming_the_test(
    pytester: pytest.Pytester, marker: str, message: str
) -> None:
    pytester.makeini(OPT_IN)
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.{marker}
        def test_marked():
            pass
        """
    )
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*::test_marked: @pytest.mark.timeout*{message}*"])


@without_pytest_timeout
@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (["--timeout="], "", "--timeout: expected a number of seconds, got an empty value*"),
        (["--timeout=soon"], "", "--timeout: expected a number of seconds, got 'soon'"),
        ([], "timeout = soon", "ini timeout: expected a number of seconds, got 'soon'"),
        ([], "timeout_method = fork", "ini timeout_method: 'fork' is not one of signal, thread"),
    ],
)
def test_bad_values_are_usage_errors(
    pytester: pytest.Pytester, args: list[str], ini: str, message: str
) -> None:
    pytester.makeini(f"{OPT_IN}{ini}\n")
    pytester.makepyfile("def test_ok(): pass")
    result = run(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])


@without_pytest_timeout
def test_without_the_opt_in_the_marker_is_unknown_and_sets_nothing(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_TIMEOUT", "0.3")
    pytester.makepyfile(SLOW.format(decorator="@pytest.mark.timeout(0.3)"))
    result = run(pytester)
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*PytestUnknownMarkWarning: Unknown pytest.mark.timeout*"])
    assert run(pytester, "--strict-markers").ret == pytest.ExitCode.INTERRUPTED


@without_pytest_timeout
@pytest.mark.parametrize(
    "option",
    [
        "--timeout=30",
        "--timeout-method=thread",
        "--timeout-disable-debugger-detection",
        "--session-timeout=30",
    ],
)
def test_without_the_opt_in_pytest_timeouts_options_are_usage_errors(
    pytester: pytest.Pytester, option: str
) -> None:
    # Accepted, they would do nothing: the run a user meant to bound would not be.
    pytester.makepyfile("def test_ok(): pass")
    result = run(pytester, option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: {option.partition('=')[0]}: pytest-timeout's, which is not installed; "
            "pytest-expire honours it with --expire-timeout-compat*"
        ]
    )


@without_pytest_timeout
def test_without_the_opt_in_pytest_timeouts_ini_keys_are_warned_about(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini("[pytest]\ntimeout = 0.3\ntimeout_func_only = true\n")
    pytester.makepyfile(SLOW.format(decorator=""))
    result = run(pytester)
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*PytestConfigWarning: ini timeout, timeout_func_only: pytest-timeout's, which is "
            "not installed: they do nothing unless expire_timeout_compat = true"
        ]
    )


@with_pytest_timeout
def test_where_pytest_timeout_is_installed_the_opt_in_does_nothing(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(OPT_IN)
    pytester.makepyfile(HANGS.format(decorator="@pytest.mark.timeout(0.5)"))
    result = run(pytester, "--timeout-method=signal")
    result.assert_outcomes(failed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "expire: no default deadline, grace 0.5 s, expire_timeout_compat off: "
            "pytest-timeout is installed",
            "*Failed: Timeout (>0.5s) from pytest-timeout.*",
            "*PytestConfigWarning: expire_timeout_compat does nothing: pytest-timeout is "
            "installed*",
        ]
    )
    result.stdout.no_fnmatch_line("*expired after*")


@with_pytest_timeout
def test_pytest_timeout_disabled_with_p_no_timeout_leaves_its_names_to_the_opt_in(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(f"{OPT_IN}timeout = 0.5\n")
    pytester.makepyfile(HANGS.format(decorator=""))
    result = run(pytester, "-p", "no:timeout", "--strict-markers")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "expire: default 0.5 s (ini timeout), *",
            "*test_hangs expired after 0.5 s (in call)*",
        ]
    )
