"""Deadlines from markers, options, the environment and ini files, validated.

Every bad value becomes a ``pytest.UsageError`` (or an argparse error) that
names where it came from: a typo in a marker must not surface as a traceback
from inside the plugin.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass

import pytest

MARKER = "expires"
ENV_DEFAULT = "PYTEST_EXPIRE_DEFAULT"
DEFAULT_GRACE = 5.0


@dataclass(frozen=True)
class Settings:
    """The session's effective settings, with where the default came from."""

    default: float | None
    default_source: str
    grace: float

    def describe(self) -> str:
        deadline = (
            f"default {format_seconds(self.default)} ({self.default_source})"
            if self.default
            else "no default deadline"
        )
        return f"expire: {deadline}, grace {format_seconds(self.grace)}"


def format_seconds(seconds: float) -> str:
    return f"{seconds:g} s"


def parse_seconds(text: str | float | None, *, allow_off: bool = True) -> float | None:
    """Seconds from a number or its text; 0 (or None, if allowed) means no deadline.

    Raises ValueError with a message fit to show the user.
    """
    if text is None or (isinstance(text, str) and text.strip() == ""):
        if allow_off:
            return None
        raise ValueError("expected a number of seconds")
    if isinstance(text, bool):
        raise ValueError(f"expected a number of seconds, got {text!r}")
    try:
        seconds = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number of seconds, got {text!r}") from None
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"expected a finite number of seconds, got {text!r}")
    if seconds < 0:
        raise ValueError(f"expected a number of seconds >= 0, got {text!r}")
    if seconds == 0 and not allow_off:
        raise ValueError(f"expected a number of seconds > 0, got {text!r}")
    return seconds or None


def argparse_seconds(text: str) -> float:
    """``type=`` for the command-line options: 0 stays 0 (an explicit off)."""
    try:
        return parse_seconds(text) or 0.0
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def from_config(config: pytest.Config) -> Settings:
    """The session's settings: CLI, then environment, then ini."""
    default: float | None
    cli_default = config.getoption("expire_default")
    if cli_default is not None:
        default, source = cli_default or None, "--expire-default"
    elif os.environ.get(ENV_DEFAULT, "").strip():
        default = _checked(os.environ[ENV_DEFAULT], f"environment {ENV_DEFAULT}")
        source = ENV_DEFAULT
    else:
        default, source = _checked(config.getini("expire_default"), "ini expire_default"), "ini"
    grace_option = config.getoption("expire_grace")
    if grace_option is not None:
        grace = grace_option
    else:
        ini_grace = _checked(config.getini("expire_grace"), "ini expire_grace")
        grace = DEFAULT_GRACE if ini_grace is None else ini_grace
    return Settings(default=default, default_source=source, grace=grace)


def _checked(value: str, where: str) -> float | None:
    try:
        return parse_seconds(value)
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
