"""Deadlines from values, markers and options: what is accepted, what is refused."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from pytest_expire.settings import (
    MAX_SECONDS,
    argparse_seconds,
    marker_seconds,
    parse_duration,
    parse_seconds,
)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("60", 60.0),
        ("0.25", 0.25),
        (2, 2.0),
        (1.5, 1.5),
        ("0", None),
        (0, None),
        (None, None),
        ("", None),
        ("  ", None),
        (MAX_SECONDS, float(MAX_SECONDS)),
    ],
)
def test_parse_seconds_accepts(value: Any, seconds: float | None) -> None:
    assert parse_seconds(value) == seconds


@pytest.mark.parametrize(
    "value", ["soon", "-1", -0.5, "nan", "inf", True, [1], "1e400", 10**400, MAX_SECONDS + 1]
)
def test_parse_seconds_refuses(value: Any) -> None:
    with pytest.raises(ValueError, match="seconds"):
        parse_seconds(value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (10**400, "at most 315360000 seconds (10 years: longer than any test run"),
        (1e9, "got 1e+09"),
        ("1e9", "got '1e9'"),
    ],
)
def test_too_long_says_the_limit_and_why(value: Any, message: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_seconds(value)
    assert message in str(error.value)


def test_a_duration_keeps_zero_and_refuses_empty() -> None:
    """A grace of 0 is no grace, not unset; an empty text is a mistake, not a choice."""
    assert parse_duration("0") == 0.0
    assert parse_duration(0) == 0.0
    for empty in ("", "  "):
        with pytest.raises(ValueError, match=r"got an empty value \(0 means none\)"):
            parse_duration(empty)


def test_argparse_type_keeps_an_explicit_zero_and_explains_refusals() -> None:
    assert argparse_seconds("0") == 0.0
    assert argparse_seconds("1.5") == 1.5
    with pytest.raises(argparse.ArgumentTypeError, match=">= 0, got '-3'"):
        argparse_seconds("-3")
    with pytest.raises(argparse.ArgumentTypeError, match="empty value"):
        argparse_seconds("")


@pytest.mark.parametrize(
    ("args", "kwargs", "seconds"),
    [
        ((60,), {}, 60.0),
        ((0.5,), {}, 0.5),
        ((), {"after": 2}, 2.0),
        ((0,), {}, None),
        ((None,), {}, None),
        ((), {"after": None}, None),
    ],
)
def test_marker_forms(args: tuple[Any, ...], kwargs: dict[str, Any], seconds: float | None) -> None:
    assert marker_seconds(pytest.mark.expires(*args, **kwargs).mark, "t.py::test") == seconds


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("60",), {}, "got '60'"),
        ((True,), {}, "got True"),
        ((-1,), {}, ">= 0"),
        ((1, 2), {}, "got 2 values"),
        ((), {}, "got 0 values"),
        ((1,), {"after": 2}, "got 2 values"),
        ((), {"seconds": 2}, "unknown keyword seconds"),
        ((float("nan"),), {}, "finite"),
        ((float("inf"),), {}, "finite"),
        ((10**400,), {}, "at most 315360000 seconds"),
        ((), {"after": 1, "seconds": 2}, "unknown keyword seconds"),
    ],
)
def test_bad_markers_name_the_test(
    args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(pytest.UsageError, match=r"t\.py::test") as error:
        marker_seconds(pytest.mark.expires(*args, **kwargs).mark, "t.py::test")
    assert message in str(error.value)
