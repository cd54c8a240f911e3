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
from typing import TypeVar

import pytest

MARKER = "expires"
ENV_DEFAULT = "PYTEST_EXPIRE_DEFAULT"
DEFAULT_GRACE = 5.0
#: The longest deadline or grace accepted: 10 years. No test run lasts that
#: long, so a larger value is a mistake, and far larger ones break the
#: arithmetic (``time.time() + 1e308`` is inf, and thread waits end at
#: ``threading.TIMEOUT_MAX``, some 292 years).
MAX_SECONDS = 10 * 365 * 24 * 60 * 60
#: What becomes of the processes the tests started that run when the session
#: ends: ended (the default), or only listed (a suite whose daemons must outlive it).
LEFTOVERS = ("end", "list")

_T = TypeVar("_T")


@dataclass(frozen=True)
class Settings:
    """The session's effective settings, with where the default came from."""

    default: float | None
    default_source: str
    grace: float
    #: Whether the processes left running when the session ends are ended.
    end_leftovers: bool = True

    def describe(self) -> str:
        deadline = (
            f"default {format_seconds(self.default)} ({self.default_source})"
            if self.default
            else "no default deadline"
        )
        return f"expire: {deadline}, grace {format_seconds(self.grace)}"


def format_seconds(seconds: float) -> str:
    return f"{seconds:g} s"


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
    variable count as unset, so that the next source down applies.
    """
    default: float | None
    cli_default = config.getoption("expire_default")
    if cli_default is not None:
        default, source = cli_default or None, "--expire-default"
    elif os.environ.get(ENV_DEFAULT, "").strip():
        default = _checked(parse_seconds, os.environ[ENV_DEFAULT], f"environment {ENV_DEFAULT}")
        source = ENV_DEFAULT
    else:
        ini_default = config.getini("expire_default")
        default, source = _checked(parse_seconds, ini_default, "ini expire_default"), "ini"
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
    return Settings(
        default=default, default_source=source, grace=grace, end_leftovers=leftovers == "end"
    )


def _checked(parse: Callable[[str], _T], value: str, where: str) -> _T:
    try:
        return parse(value)
    except ValueError as exc:
        raise pytest.UsageError(f"{where}: {exc}") from None


#: A test's deadline in seconds (None: none), stored on it once, at collection.
DEADLINE = pytest.StashKey[float | None]()


def deadline_for(item: pytest.Item, settings: Settings) -> float | None:
    """The deadline of a test: its closest ``expires`` marker, else the default."""
    marker = item.get_closest_marker(MARKER)
    if marker is None:
        return settings.default
    return marker_seconds(marker, item.nodeid)


def marker_seconds(marker: pytest.Mark, nodeid: str) -> float | None:
    """Seconds from ``expires(seconds)`` or ``expires(after=seconds)``; None: disabled."""
    usage = f"{nodeid}: @pytest.mark.{MARKER} takes one number of seconds, as (60) or (after=60)"
    unknown = set(marker.kwargs) - {"after"}
    if unknown:
        raise pytest.UsageError(f"{usage}; unknown keyword {', '.join(sorted(unknown))}")
    values = [*marker.args, *marker.kwargs.values()]
    if len(values) != 1:
        raise pytest.UsageError(f"{usage}; got {len(values)} values")
    (value,) = values
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise pytest.UsageError(f"{usage}; got {value!r}")
    try:
        return parse_seconds(value)
    except ValueError as exc:
        raise pytest.UsageError(f"{nodeid}: @pytest.mark.{MARKER}: {exc}") from None
