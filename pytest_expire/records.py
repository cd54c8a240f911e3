"""What a worker leaves behind for its supervisor: one record file per worker.

A supervised worker (a fork of the pytest process the user started) appends
a line to its record file for each test it starts, each report, each
warning and each test it finishes. If the worker is killed, its supervisor
reads the file to learn which tests ended, with which reports, and which test
was running; the next worker replays those reports so that every reporter
sees the whole run. Nobody reads the file otherwise, so writing it must be
nearly free: a passed report without output is one short line, and lines
are written with one ``os.write`` when it matters (before a test starts, so
a killed test is always known; after its setup and call reports, so the
phase it was killed in is known).

Lines, tab-separated, the first field saying what they are::

    S <index> <seconds or ->   test session.items[index] started, with its deadline
    R <when> <outcome> <duration> <start> <stop>   a report with nothing more in it
    J <json>                   any other report, pytest_report_to_serializable's form
    W <json>                   a warning recorded while a test ran
    F                          the test finished
"""

from __future__ import annotations

import builtins
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest


@dataclass
class TestRecord:
    """One test as a worker recorded it, in ``session.items`` order."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    index: int
    seconds: float | None
    reports: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    finished: bool = False
    # Set by the supervisor when the worker died in this test: the signal.
    killed_by: int | None = None

    def phase_reached(self) -> str:
        """The phase the test was in when its worker died: the first one not reported."""
        reported = {line.split("\t", 2)[1] for line in self.reports if line.startswith("R")}
        reported.update(_when_of_json(line) for line in self.reports if line.startswith("J"))
        return next((p for p in ("setup", "call", "teardown") if p not in reported), "teardown")


class RecordWriter:
    """The worker's side: lines gathered in memory, written when :meth:`flush` is called."""

    def __init__(self, path: Path, config: pytest.Config) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._config = config
        self._pending: list[str] = []

    def started(self, index: int, seconds: float | None) -> None:
        self._pending.append(f"S\t{index}\t{'-' if seconds is None else repr(seconds)}\n")

    def report(self, report: pytest.TestReport) -> None:
        if (
            report.outcome == "passed"
            and not report.longrepr
            and not report.sections
            and not report.user_properties
            and not hasattr(report, "wasxfail")
        ):
            self._pending.append(
                f"R\t{report.when}\t{report.outcome}\t{report.duration!r}"
                f"\t{report.start!r}\t{report.stop!r}\n"
            )
        else:
            data = self._config.hook.pytest_report_to_serializable(
                config=self._config, report=report
            )
            self._pending.append(f"J\t{json.dumps(data)}\n")

    def warning(self, message: warnings.WarningMessage, nodeid: str) -> None:
        data = {
            "message": str(message.message),
            "category": message.category.__name__,
            "filename": message.filename,
            "lineno": message.lineno,
            "nodeid": nodeid,
        }
        self._pending.append(f"W\t{json.dumps(data)}\n")

    def finished(self) -> None:
        self._pending.append("F\n")

    def flush(self) -> None:
        if self._pending:
            os.write(self._fd, "".join(self._pending).encode())
            self._pending.clear()

    def close(self) -> None:
        self.flush()
        os.close(self._fd)


def read_records(path: Path) -> list[TestRecord]:
    """The tests a worker recorded, in order; only the last one may be unfinished."""
    tests: list[TestRecord] = []
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return tests
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break  # cut short by the kill
        kind = line[0]
        if kind == "S":
            _, index, seconds = line.rstrip("\n").split("\t")
            tests.append(TestRecord(int(index), None if seconds == "-" else float(seconds)))
        elif kind in "RJ":
            tests[-1].reports.append(line)
        elif kind == "W":
            tests[-1].warnings.append(line)
        elif kind == "F":
            tests[-1].finished = True
    return tests


def report_from_record(line: str, item: pytest.Item, config: pytest.Config) -> pytest.TestReport:
    """The report a worker recorded for ``item`` as ``line``."""
    if line.startswith("J"):
        report = config.hook.pytest_report_from_serializable(
            config=config, data=json.loads(line[2:])
        )
        assert isinstance(report, pytest.TestReport)
        return report
    _, when, outcome, duration, start, stop = line.rstrip("\n").split("\t")
    return pytest.TestReport(
        item.nodeid,
        item.location,
        keywords=dict.fromkeys(item.keywords, 1),
        outcome=outcome,  # type: ignore[arg-type]
        longrepr=None,
        when=when,  # type: ignore[arg-type]
        duration=float(duration),
        start=float(start),
        stop=float(stop),
    )


def warning_from_record(line: str) -> tuple[warnings.WarningMessage, str]:
    """A recorded warning, rebuilt (a built-in category by name, else UserWarning), and its test."""
    data: dict[str, Any] = json.loads(line[2:])
    category = getattr(builtins, data["category"], None)
    if not (isinstance(category, type) and issubclass(category, Warning)):
        category = UserWarning
    message = warnings.WarningMessage(
        category(data["message"]), category, data["filename"], data["lineno"]
    )
    return message, data["nodeid"]


def _when_of_json(line: str) -> str:
    when = json.loads(line[2:]).get("when", "")
    return when if isinstance(when, str) else ""
