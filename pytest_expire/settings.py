"""Deadlines from markers, options, the environment and ini files, validated.

Every bad value becomes a ``pytest.UsageError`` (or an argparse error) that
names where it came from: a typo in a marker must not surface as a traceback
from inside the plugin.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeVar

import pytest

from pytest_expire import timeout_compat
from pytest_expire.report import format_seconds

MARKER = "expires"
#: The keyword of a marker that times each phase of its test on its own (``func_only=True``).
FUNC_ONLY_KEYWORD = "func_only"
ENV_DEFAULT = "PYTEST_EXPIRE_DEFAULT"
ENV_SESSION = "PYTEST_EXPIRE_SESSION"
DEFAULT_GRACE = 5.0
#: How long the process that ran a session's tests has to exit once the session is over:
#: as long as pytest-xdist gives its workers.
DEFAULT_EXIT = 10.0
#: The longest deadline or grace accepted: 10 years. No test run lasts that
#: long, so a larger value is a mistake, and far larger ones break the
#: arithmetic (``time.time() + 1e308`` is inf, and thread waits end at
#: ``threading.TIMEOUT_MAX``, some 292 years).
MAX_SECONDS = 10 * 365 * 24 * 60 * 60
#: What becomes of the processes the tests started that run when the session
#: ends: ended (the default), or only listed (a suite whose daemons must outlive it).
LEFTOVERS = ("end", "list")

_T = TypeVar("_T")
_V = TypeVar("_V")


@dataclass(frozen=True)
class Settings:
    """The session's effective settings, with where the default came from."""

    default: float | None
    default_source: str
    grace: float
    #: Whether the processes left running when the session ends are ended.
    end_leftovers: bool = True
    #: Whether a test's setup, call and teardown each have its deadline on their own
    #: (a marker's ``func_only=`` says otherwise for its test).
    func_only: bool = False
    #: Whether a test found in a debugger keeps its deadline off while there.
    debugger_detection: bool = True
    #: The markers that time a test: ``expires``, and ``timeout`` under the pytest-timeout
    #: compat; at one level (function, class, module) the first named wins.
    markers: tuple[str, ...] = (MARKER,)
    #: What the header says of pytest-timeout's names ("": nothing).
    timeout_compat: str = ""
    #: How long the process that ran the tests has to exit once the session is over
    #: (None: for ever).
    exit: float | None = DEFAULT_EXIT
    #: The file the watchdog logs to (``--expire-log``), if any.
    log: Path | None = None
    #: The deadline of the whole run, in seconds from its start (None: none), and
    #: where it came from, as the reports name it (``--expire-session=600``).
    session: float | None = None
    session_source: str = ""

    def describe(self) -> str:
        deadline = (
            f"default {format_seconds(self.default)} ({self.default_source})"
            if self.default
            else "no default deadline"
        )
        notes = [
            f"session deadline {format_seconds(self.session)} ({self.session_source})"
            if self.session
            else "",
            "func-only (setup, call and teardown each timed on its own)" if self.func_only else "",
            "" if self.debugger_detection else "debugger detection off",
            self.timeout_compat,
        ]
        return f"expire: {deadline}, grace {format_seconds(self.grace)}" + "".join(
            f", {note}" for note in notes if note
        )


def parse_seconds(text: str | float | None) -> float | None:
    """A deadline from a number or its text; 0, None or an empty text mean none.

    Raises ValueError with a message fit to show the user.
    """
    if text is None or (isinstance(text, str) and text.strip() == ""):
        return None
    return parse_duration(text) or None


def parse_duration(value: str | float) -> float:
    """Seconds from a number or its text, 0 included: a grace of 0 is no grace.

    Nothing here means "unset": an empty text is refused, since it is what an
    unset shell variable expands to, and must not pass for a choice.
    Raises ValueError with a message fit to show the user.
    """
    if isinstance(value, str) and value.strip() == "":
        raise ValueError("expected a number of seconds, got an empty value (0 means none)")
    if isinstance(value, bool):
        raise ValueError(f"expected a number of seconds, got {value!r}")
    try:
        seconds = float(value)
    except OverflowError:  # an int beyond the largest float
        raise ValueError(_too_long("an integer of over 300 digits")) from None
    except (TypeError, ValueError):
        raise ValueError(f"expected a number of seconds, got {value!r}") from None
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"expected a finite number of seconds, got {value!r}")
    if seconds < 0:
        raise ValueError(f"expected a number of seconds >= 0, got {value!r}")
    if seconds > MAX_SECONDS:
        # A number, not its repr: an int of 300 digits stays one line.
        raise ValueError(_too_long(repr(value) if isinstance(value, str) else f"{seconds:g}"))
    return seconds


def _too_long(shown: str) -> str:
    return (
        f"expected at most {MAX_SECONDS} seconds (10 years: longer than any test run, "
        f"so surely a mistake; 0 means none), got {shown}"
    )


def argparse_seconds(text: str) -> float:
    """``type=`` for the command-line options: 0 stays 0 (set, not unset); empty is refused."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def from_config(config: pytest.Config) -> Settings:
    """The session's settings: CLI, then environment, then ini.

    An empty ini value (the ini's own default) and an empty environment
    variable count as unset, so that the next source down applies. The
    switches (func-only, no debugger detection) are off unless a source
    turns them on. Under the pytest-timeout compat, its names come after
    pytest-expire's at each level (``_default``).
    """
    compat = timeout_compat.honoured(config)
    default, source = _default(config, compat)
    session, session_source = _session(config, compat)
    grace_option = config.getoption("expire_grace")
    if grace_option is not None:
        grace = grace_option
    else:
        ini_grace = config.getini("expire_grace")
        grace = (
            _checked(parse_duration, ini_grace, "ini expire_grace")
            if ini_grace.strip()
            else DEFAULT_GRACE
        )
    leftovers = config.getoption("expire_leftovers") or config.getini("expire_leftovers").strip()
    if leftovers not in LEFTOVERS:
        raise pytest.UsageError(
            f"ini expire_leftovers: {leftovers!r} is not one of {', '.join(LEFTOVERS)}"
        )
    func_only = config.getoption("expire_func_only") or config.getini("expire_func_only")
    no_debugger_detection = config.getoption("expire_disable_debugger_detection") or config.getini(
        "expire_disable_debugger_detection"
    )
    if compat:
        func_only = func_only or config.getini(timeout_compat.FUNC_ONLY_INI)
        no_debugger_detection = (
            no_debugger_detection
            or config.getoption(timeout_compat.NO_DEBUGGER_DETECTION)
            or config.getini(timeout_compat.NO_DEBUGGER_DETECTION)
        )
    return Settings(
        default=default,
        default_source=source,
        grace=grace,
        end_leftovers=leftovers == "end",
        func_only=bool(func_only),
        debugger_detection=not no_debugger_detection,
        markers=(MARKER, timeout_compat.MARKER) if compat else (MARKER,),
        timeout_compat=timeout_compat.header_note(config),
        exit=_exit(config),
        log=_log(config),
        session=session,
        session_source=session_source,
    )


def _log(config: pytest.Config) -> Path | None:
    """``--expire-log``, else the ini's ``expire_log``: a file in a directory that exists,
    relative to where pytest was started; None: no log."""
    option = config.getoption("expire_log")
    if option is not None:
        where, value = "--expire-log", option
        if not value.strip():
            raise pytest.UsageError("--expire-log: expected a file path, got ''")
    else:
        where, value = "ini expire_log", config.getini("expire_log").strip()
        if not value:
            return None
    path: Path = config.invocation_params.dir / str(value)
    if path.is_dir():
        raise pytest.UsageError(f"{where}: {value!r} is a directory, not a file")
    if not path.parent.is_dir():
        raise pytest.UsageError(f"{where}: the directory of {value!r} does not exist")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise pytest.UsageError(f"{where}: {value!r} cannot be written")
    return path


def _exit(config: pytest.Config) -> float | None:
    """``--expire-exit``, else the ini's ``expire_exit`` (empty: the default); 0: for ever."""
    option = config.getoption("expire_exit")
    if option is not None:
        return option or None
    ini = config.getini("expire_exit")
    return _checked(parse_seconds, ini, "ini expire_exit") if ini.strip() else DEFAULT_EXIT


class _Sources(NamedTuple):
    """Where a deadline may be set, pytest-expire's names and pytest-timeout's."""

    #: The option's ``dest``, and the flag a report names.
    option: str
    flag: str
    variable: str
    ini: str
    #: How the report's header names the ini's value.
    ini_label: str
    #: pytest-timeout's option (its ``dest`` is its flag's name), variable
    #: (None: it has none) and ini key, read under the compat.
    compat_option: str
    compat_variable: str | None
    compat_ini: str


_DEFAULT_SOURCES = _Sources(
    "expire_default",
    "--expire-default",
    ENV_DEFAULT,
    "expire_default",
    "ini",
    timeout_compat.TIMEOUT,
    timeout_compat.ENV,
    timeout_compat.TIMEOUT,
)
_SESSION_SOURCES = _Sources(
    "expire_session",
    "--expire-session",
    ENV_SESSION,
    "expire_session",
    "ini expire_session",
    timeout_compat.SESSION_TIMEOUT,
    None,
    timeout_compat.SESSION_TIMEOUT,
)


def _default(config: pytest.Config, compat: bool) -> tuple[float | None, str]:
    """The default deadline, and where it came from (``_layered``)."""
    return _layered(config, compat, _DEFAULT_SOURCES)


def _session(config: pytest.Config, compat: bool) -> tuple[float | None, str]:
    """The session's deadline, and where it came from (``_layered``)."""
    return _layered(config, compat, _SESSION_SOURCES)


def _layered(config: pytest.Config, compat: bool, sources: _Sources) -> tuple[float | None, str]:
    """A deadline, and where it came from: the command line, then the environment,
    then the ini; at each, pytest-expire's name before pytest-timeout's (under the
    compat), so that a suite half-way through its switch gets expire's."""
    option = config.getoption(sources.option)
    if option is not None:
        return option or None, sources.flag
    if compat:
        option = config.getoption(sources.compat_option)
        if option is not None:
            # Refused empty, as expire's option is: an unset shell variable is no choice.
            flag = "--" + sources.compat_option.replace("_", "-")
            return _checked(parse_duration, option, flag) or None, flag
    variables = [sources.variable]
    if compat and sources.compat_variable is not None:
        variables.append(sources.compat_variable)
    for variable in variables:
        if os.environ.get(variable, "").strip():
            return _checked(
                parse_seconds, os.environ[variable], f"environment {variable}"
            ), variable
    ini = config.getini(sources.ini)
    if compat and not ini.strip():
        where = f"ini {sources.compat_ini}"
        return _checked(parse_seconds, config.getini(sources.compat_ini), where), where
    return _checked(parse_seconds, ini, f"ini {sources.ini}"), sources.ini_label


def _checked(parse: Callable[[_V], _T], value: _V, where: str) -> _T:
    try:
        return parse(value)
    except ValueError as exc:
        raise pytest.UsageError(f"{where}: {exc}") from None


#: A test's deadline in seconds (None: none), stored on it once, at collection;
#: and with it, whether its phases each have that deadline on their own.
DEADLINE = pytest.StashKey[float | None]()
FUNC_ONLY = pytest.StashKey[bool]()


class Timing(NamedTuple):
    """How a test is timed: its deadline (None: none), and whether its setup, call and
    teardown each have it on their own (func-only) or share it."""

    seconds: float | None
    func_only: bool


def timing_for(item: pytest.Item, settings: Settings) -> Timing:
    """The timing of a test: from its closest marker, else the session's.

    A marker that gives no seconds (``expires(func_only=True)``, pytest-timeout's
    ``timeout(None)``) keeps the default deadline; one that does not say
    ``func_only`` keeps the session's.
    """
    marker = _closest_marker(item, settings.markers)
    if marker is None:
        return Timing(settings.default, settings.func_only)
    where = f"{item.nodeid}: @pytest.mark.{marker.name}"
    if marker.name == MARKER:
        func_only = marker.kwargs.get(FUNC_ONLY_KEYWORD)
        only_func_only = (
            func_only is not None and not marker.args and set(marker.kwargs) == {FUNC_ONLY_KEYWORD}
        )
        seconds = settings.default if only_func_only else marker_seconds(marker, item.nodeid)
    else:
        values, func_only = timeout_compat.marker_arguments(marker, item.nodeid)
        seconds = _timeout_seconds(values[0], where) if values else settings.default
    if func_only is None:
        return Timing(seconds, settings.func_only)
    if not isinstance(func_only, bool):
        raise pytest.UsageError(
            f"{where}: {FUNC_ONLY_KEYWORD} takes True or False, got {func_only!r}"
        )
    return Timing(seconds, func_only)


def _timeout_seconds(value: object, where: str) -> float | None:
    """Seconds from pytest-timeout's marker, which also takes them as text (``timeout("5")``)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise pytest.UsageError(f"{where}: expected a number of seconds, got {value!r}")
    return _checked(parse_seconds, value, where)


def _closest_marker(item: pytest.Item, names: tuple[str, ...]) -> pytest.Mark | None:
    """The marker among ``names`` closest to ``item``; at one level, the first name's."""
    if len(names) == 1:
        return item.get_closest_marker(names[0])
    found: tuple[pytest.Mark, object] | None = None
    for node, mark in item.iter_markers_with_node():
        if found is not None and node is not found[1]:
            break
        if mark.name == names[0]:
            return mark
        if found is None and mark.name in names:
            found = mark, node
    return None if found is None else found[0]


def marker_seconds(marker: pytest.Mark, nodeid: str) -> float | None:
    """Seconds from ``expires(seconds)`` or ``expires(after=seconds)``; None: disabled.

    ``func_only=`` may come with them (``timing_for`` reads it).
    """
    usage = f"{nodeid}: @pytest.mark.{MARKER} takes one number of seconds, as (60) or (after=60)"
    unknown = set(marker.kwargs) - {"after", FUNC_ONLY_KEYWORD}
    if unknown:
        raise pytest.UsageError(f"{usage}; unknown keyword {', '.join(sorted(unknown))}")
    values = [*marker.args, *(value for key, value in marker.kwargs.items() if key == "after")]
    if len(values) != 1:
        raise pytest.UsageError(f"{usage}; got {len(values)} values")
    (value,) = values
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise pytest.UsageError(f"{usage}; got {value!r}")
    try:
        return parse_seconds(value)
    except ValueError as exc:
        raise pytest.UsageError(f"{nodeid}: @pytest.mark.{MARKER}: {exc}") from None
