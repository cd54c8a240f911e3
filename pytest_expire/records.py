"""What a worker leaves behind for its supervisor: one record file per worker.

A supervised worker (a fork of the pytest process the user started) appends
a line to its record file for each test it starts, each report and each
warning; a test whose teardown was reported has finished. If the worker is killed, its supervisor
reads the file to learn which tests ended, with which reports, and which test
was running; the next worker replays those reports so that every reporter
sees the whole run. Nobody reads the file otherwise, so writing it must be
nearly free: a passed report without output is one short line, copied into
a shared memory map of the file, which survives the worker's death without
a system call per line.

Lines, tab-separated, the first field saying what they are::

    S <index> <seconds or ->   test session.items[index] started, with its deadline
    R <when> <outcome> <duration> <start> <stop>   a report with nothing more in it
    J <json>                   any other report, pytest_report_to_serializable's form
    W <json>                   a warning recorded while a test ran
"""

from __future__ import annotations

import builtins
import json
import mmap
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# The record file grows by this much at least (a few thousand tests' worth).
_CHUNK = 1 << 20


@dataclass
class TestRecord:
    """One test as a worker recorded it, in ``session.items`` order."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    index: int
    seconds: float | None
    reports: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Set by the supervisor when the worker died in this test: the signal.
    killed_by: int | None = None

    @property
    def finished(self) -> bool:
        """Whether the test ended: its teardown was reported (the last thing it reports)."""
        return "teardown" in self._phases_reported()

    def phase_reached(self) -> str:
        """The phase the test was in when its worker died: the first one not reported."""
        reported = self._phases_reported()
        return next((p for p in ("setup", "call", "teardown") if p not in reported), "teardown")

    def _phases_reported(self) -> set[str]:
        reported = {line.split("\t", 2)[1] for line in self.reports if line.startswith("R")}
        reported.update(_when_of_json(line) for line in self.reports if line.startswith("J"))
        return reported


class RecordWriter:
    """The worker's side: lines copied into a shared memory map of the record file.

    A copy into a ``MAP_SHARED`` mapping is in the file as soon as it is
    made (the kernel's page cache holds it, whatever happens to the worker
    next), so a record costs no system call. The file grows in chunks; the
    part not written yet reads as NUL bytes.
    """

    def __init__(self, path: Path, config: pytest.Config) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self._config = config
        self._map: mmap.mmap | None = None
        self._size = 0
        self._end = 0
        self._grow(_CHUNK)

    def started(self, index: int, seconds: float | None) -> None:
        self._append(f"S\t{index}\t{'-' if seconds is None else repr(seconds)}\n")

    def report(self, report: pytest.TestReport) -> None:
        if (
            report.outcome == "passed"
            and not report.longrepr
            and not report.sections
            and not report.user_properties
            and not hasattr(report, "wasxfail")
        ):
            self._append(
                f"R\t{report.when}\t{report.outcome}\t{report.duration!r}"
                f"\t{report.start!r}\t{report.stop!r}\n"
            )
        else:
            data = self._config.hook.pytest_report_to_serializable(
                config=self._config, report=report
            )
            self._append(f"J\t{json.dumps(data)}\n")

    def warning(self, message: warnings.WarningMessage, nodeid: str) -> None:
        data = {
            "message": str(message.message),
            "category": message.category.__name__,
            "filename": message.filename,
            "lineno": message.lineno,
            "nodeid": nodeid,
        }
        self._append(f"W\t{json.dumps(data)}\n")

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        os.close(self._fd)

    def _append(self, line: str) -> None:
        data = line.encode()
        end = self._end + len(data)
        if end > self._size:
            self._grow(end)
        assert self._map is not None
        self._map[self._end : end] = data
        self._end = end

    def _grow(self, at_least: int) -> None:
        size = max(2 * self._size, _CHUNK)
        while size < at_least:
            size *= 2
        os.ftruncate(self._fd, size)
        if self._map is not None:
            self._map.close()
        self._map = mmap.mmap(self._fd, size)
        self._size = size


def read_records(path: Path) -> list[TestRecord]:
    """The tests a worker recorded, in order; only the last one may be unfinished."""
    tests: list[TestRecord] = []
    try:
        text = path.read_bytes().rstrip(b"\0").decode("utf-8", errors="replace")
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
