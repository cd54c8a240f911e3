"""pytest-timeout's names, honoured where pytest-timeout is not installed (an opt-in).

A suite that moves from pytest-timeout keeps its ``@pytest.mark.timeout(...)``
markers, the ``--timeout`` of its CI scripts and its ``timeout`` ini key:
with ``expire_timeout_compat = true`` (or ``--expire-timeout-compat``) they
set pytest-expire's deadlines, so that the switch needs no edit of the
tests (docs/migrating-from-pytest-timeout.md). This module knows
pytest-timeout's names and the forms of its marker; ``settings`` decides
what they mean next to pytest-expire's own.

pytest refuses a second plugin's option of a name taken already (a
ValueError as the plugin loads), and options are added before any ini value
can be read. So pytest-timeout's options are added whenever pytest-timeout
will not load, opt-in or not; given without the opt-in they are refused (on
the command line) or warned about (in the ini), as pytest would do without
them, since they would otherwise do nothing, silently. Where pytest-timeout
loads, its names stay its own, and the opt-in only says that it does nothing.
"""

from __future__ import annotations

import importlib.util

import pytest

#: The opt-in, as an ini key and as the destination of its command-line flag.
SWITCH = "expire_timeout_compat"
MARKER = "timeout"
ENV = "PYTEST_TIMEOUT"
#: pytest-timeout's ini keys (and, for TIMEOUT and METHOD, its options' destinations).
TIMEOUT = "timeout"
METHOD = "timeout_method"
FUNC_ONLY_INI = "timeout_func_only"
NO_DEBUGGER_DETECTION = "timeout_disable_debugger_detection"
SESSION_TIMEOUT = "session_timeout"
_METHODS = ("signal", "thread")
# pytest-timeout's plugin: its entry-point name (``-p no:timeout``) and its module.
_PLUGIN_NAMES = ("timeout", "pytest_timeout")
_MARKER_KEYWORDS = ("timeout", "method", "func_only")
# Why ``method`` changes nothing: said in the help and the marker's description.
_METHOD_IGNORED = (
    "accepted and ignored: pytest-expire has one way, the watchdog's interrupt, then its kill"
)


def pytest_timeout_loads(pluginmanager: pytest.PytestPluginManager) -> bool:
    """Whether pytest-timeout is, or will be, a plugin of this session: registered,
    or importable and not disabled (``-p no:timeout``).

    Asked as options are added, before every plugin has loaded (entry points
    load in no set order, a conftest's ``pytest_plugins`` later still): so an
    installed pytest-timeout counts, loaded yet or not.
    """
    if any(pluginmanager.has_plugin(name) for name in _PLUGIN_NAMES):
        return True
    if any(pluginmanager.is_blocked(name) for name in _PLUGIN_NAMES):
        return False
    return importlib.util.find_spec("pytest_timeout") is not None


class _TimeoutHooks:
    """pytest-timeout's hooks, declared where it does not load so that a conftest.py
    that implements them still loads (pytest refuses an unknown ``pytest_`` hook).
    Never called: they replace pytest-timeout's timer, and the session's watchdog
    is none of it."""

    @pytest.hookspec(firstresult=True)
    def pytest_timeout_set_timer(self, item: pytest.Item, settings: object) -> object:
        """pytest-timeout's: arm the timer of ``item``."""

    @pytest.hookspec(firstresult=True)
    def pytest_timeout_cancel_timer(self, item: pytest.Item) -> object:
        """pytest-timeout's: cancel the timer of ``item``."""


def addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    if not pytest_timeout_loads(pluginmanager):
        pluginmanager.add_hookspecs(_TimeoutHooks)


def addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    """The opt-in; and pytest-timeout's options and ini keys, where it will not load."""
    parser.getgroup("expire").addoption(
        "--expire-timeout-compat",
        action="store_true",
        dest=SWITCH,
        help=(
            "honour pytest-timeout's timeout marker, --timeout, its ini keys and "
            f"${ENV} where pytest-timeout is not installed; pytest-expire's own settings "
            "come first where both are given."
        ),
    )
    parser.addini(
        SWITCH,
        "true: honour pytest-timeout's marker, options, ini keys and environment variable "
        "where pytest-timeout is not installed",
        type="bool",
        default=False,
    )
    if pytest_timeout_loads(pluginmanager):
        return
    group = parser.getgroup(
        "timeout",
        "pytest-timeout's options (pytest-timeout is not installed): honoured by "
        "pytest-expire with --expire-timeout-compat",
    )
    group.addoption(
        "--timeout",
        dest=TIMEOUT,
        metavar="SECONDS",
        help="as --expire-default, which comes first; 0 disables.",
    )
    group.addoption(
        "--timeout-method",
        "--timeout_method",
        dest=METHOD,
        choices=_METHODS,
        help=f"{_METHOD_IGNORED}.",
    )
    group.addoption(
        "--timeout-disable-debugger-detection",
        dest=NO_DEBUGGER_DETECTION,
        action="store_true",
        help="as --expire-disable-debugger-detection.",
    )
    group.addoption(
        "--session-timeout",
        dest=SESSION_TIMEOUT,
        metavar="SECONDS",
        help="as --expire-session, which comes first; 0 disables.",
    )
    parser.addini(TIMEOUT, "pytest-timeout's: as expire_default, which comes first", default="")
    parser.addini(
        SESSION_TIMEOUT, "pytest-timeout's: as expire_session, which comes first", default=""
    )
    parser.addini(METHOD, f"pytest-timeout's: {_METHOD_IGNORED}", default="")
    parser.addini(
        FUNC_ONLY_INI, "pytest-timeout's: as expire_func_only", type="bool", default=False
    )
    parser.addini(
        NO_DEBUGGER_DETECTION,
        "pytest-timeout's: as expire_disable_debugger_detection",
        type="bool",
        default=False,
    )


def honoured(config: pytest.Config) -> bool:
    """Whether pytest-timeout's names set deadlines in this session: asked for, and
    pytest-timeout does not load.

    Without the opt-in, an option of pytest-timeout's given on the command
    line is a usage error: it would do nothing, where the user meant a deadline.
    """
    loads = pytest_timeout_loads(config.pluginmanager)
    if _requested(config):
        if not loads:
            method = config.getini(METHOD).strip()
            if method and method not in _METHODS:
                raise pytest.UsageError(
                    f"ini {METHOD}: {method!r} is not one of {', '.join(_METHODS)}"
                )
        return not loads
    if not loads:
        given = [
            option
            for option, dest in (
                ("--timeout", TIMEOUT),
                ("--timeout-method", METHOD),
                ("--timeout-disable-debugger-detection", NO_DEBUGGER_DETECTION),
                ("--session-timeout", SESSION_TIMEOUT),
            )
            if config.getoption(dest)
        ]
        if given:
            raise pytest.UsageError(
                f"{', '.join(given)}: pytest-timeout's, which is not installed; "
                "pytest-expire honours it with --expire-timeout-compat (or the ini "
                f"{SWITCH} = true), or use pytest-expire's own (see "
                "docs/migrating-from-pytest-timeout.md)"
            )
    return False


def _requested(config: pytest.Config) -> bool:
    return bool(config.getoption(SWITCH) or config.getini(SWITCH))


def header_note(config: pytest.Config) -> str:
    """What the report header says of pytest-timeout's names ("": nothing)."""
    if not _requested(config):
        return ""
    if pytest_timeout_loads(config.pluginmanager):
        return f"{SWITCH} off: pytest-timeout is installed"
    return "pytest-timeout's marker and settings honoured"


def configure(config: pytest.Config, active: bool) -> None:
    """Register the ``timeout`` marker under the opt-in (``--strict-markers`` then
    accepts it); warn about what does nothing, as pytest warns of unknown ini keys."""
    if active:
        config.addinivalue_line(
            "markers",
            f"{MARKER}(timeout, method=None, func_only=None): pytest-timeout's marker, "
            "honoured by pytest-expire as expires(timeout, func_only=...); method is "
            f"{_METHOD_IGNORED}.",
        )
        return
    if _requested(config):
        config.issue_config_time_warning(
            pytest.PytestConfigWarning(
                f"{SWITCH} does nothing: pytest-timeout is installed, and its timeout "
                "marker, options and ini keys are its own (uninstall it, or disable it "
                "with -p no:timeout, for pytest-expire to honour them)"
            ),
            stacklevel=2,
        )
        return
    if pytest_timeout_loads(config.pluginmanager):
        return
    unhonoured = [
        key
        for key in (TIMEOUT, METHOD, FUNC_ONLY_INI, NO_DEBUGGER_DETECTION, SESSION_TIMEOUT)
        if _is_set(config.getini(key))
    ]
    if unhonoured:
        config.issue_config_time_warning(
            pytest.PytestConfigWarning(
                f"ini {', '.join(unhonoured)}: pytest-timeout's, which is not installed: "
                f"they do nothing unless {SWITCH} = true"
            ),
            stacklevel=2,
        )


def _is_set(value: object) -> bool:
    return value.strip() != "" if isinstance(value, str) else bool(value)


def marker_arguments(marker: pytest.Mark, nodeid: str) -> tuple[list[object], object]:
    """The seconds (none, or the one value given) and the func_only (None: not said) of a
    ``timeout`` marker, read as pytest-timeout reads them, their values unchecked.

    ``timeout(seconds, method)``, each also as a keyword, and ``func_only=``; a
    seconds of None means the default, as in pytest-timeout; ``method`` must be
    one of pytest-timeout's and is then ignored.
    """
    usage = (
        f"{nodeid}: @pytest.mark.{MARKER} takes (timeout, method=None, func_only=None), "
        "as pytest-timeout's does"
    )
    if not marker.args and not marker.kwargs:
        raise pytest.UsageError(f"{usage}; got no argument")
    unknown = set(marker.kwargs) - set(_MARKER_KEYWORDS)
    if unknown:
        raise pytest.UsageError(f"{usage}; unknown keyword {', '.join(sorted(unknown))}")
    if len(marker.args) > 2:
        raise pytest.UsageError(f"{usage}; got {len(marker.args)} positional arguments")
    given = dict(zip(_MARKER_KEYWORDS[:2], marker.args, strict=False))  # timeout, method
    twice = set(given) & set(marker.kwargs)
    if twice:
        raise pytest.UsageError(f"{usage}; {', '.join(sorted(twice))} given twice")
    given.update(marker.kwargs)
    method = given.get("method")
    if method is not None and method not in _METHODS:
        raise pytest.UsageError(f"{usage}; method {method!r} is not one of {', '.join(_METHODS)}")
    seconds = given.get("timeout")
    return ([] if seconds is None else [seconds]), given.get("func_only")
