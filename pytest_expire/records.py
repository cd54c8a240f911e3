"""What a worker leaves behind for its supervisor: one record file per worker.

A supervised worker (a fork of the pytest process the user started) adds a
record to its record file for each test it starts, each report and each
warning; a test whose teardown was reported has finished. If the worker is
killed, its supervisor reads the file to learn which tests ended, with which
reports, and which test was running; the next worker replays those reports
so that every reporter sees the whole run. Nobody reads the file otherwise,
so writing it must be nearly free: records are packed straight into a shared
memory map of the file (which survives the worker's death without a system
call per record), and a passed report without output is a few numbers.

A record is a kind byte and a payload; the part of the file not written yet
is NUL bytes, which no kind is::

    S  index (int64), deadline (float64, NaN: none)     test session.items[index] started
    R  when (uint8), duration, start, stop (float64)    a passed report, nothing more in it
    J  length (uint32), JSON                            any other report, as
                                                        pytest_report_to_serializable has it
    W  length (uint32), JSON                            a warning recorded while a test ran
"""

from __future__ import annotations

import builtins
import json
import math
import mmap
import os
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# The record file grows by this much at least (some ten thousand tests' worth).
_CHUNK = 1 << 20

_STARTED = struct.Struct("<cqd")
_PASSED = struct.Struct("<cBddd")
_SIZED = struct.Struct("<cI")
_PHASES = ("setup", "call", "teardown")
_PHASE_CODES = {phase: code for code, phase in enumerate(_PHASES)}

#: A passed report as recorded: (when, duration, start, stop).
PassedReport = tuple[str, float, float, float]


@dataclass
class TestRecord:
    """One test as a worker recorded it, in ``session.items`` order."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    index: int
    seconds: float | None
    #: Passed reports as tuples, the others as pytest_report_to_serializable's dicts.
    reports: list[PassedReport | dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    #: Set by the supervisor when the worker died in this test: the signal,
    killed_by: int | None = None
    #: and the stacks the watchdog took when it killed the worker (if it did).
    stacks: str = ""

    @property
    def finished(self) -> bool:
        """Whether the test ended: its teardown was reported (the last thing it reports)."""
        return "teardown" in self._phases_reported()

    def phase_reached(self) -> str:
        """The phase the test was in when its worker died: the first one not reported."""
        reported = self._phases_reported()
        return next((p for p in _PHASES if p not in reported), "teardown")

    def _phases_reported(self) -> set[str]:
        return {
            report[0] if isinstance(report, tuple) else str(report.get("when"))
            for report in self.reports
        }


class RecordWriter:
    """The worker's side: records packed into a shared memory map of the record file.

    What is packed into a ``MAP_SHARED`` mapping is in the file at once (the
    kernel's page cache holds it, whatever happens to the worker next). The
    file grows in chunks.
    """

    def __init__(self, path: Path, config: pytest.Config) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self._config = config
        self._map = mmap.mmap(-1, 1)  # replaced by _grow
        self._size = 0
        self._end = 0
        self._grow(_CHUNK)

    def started(self, index: int, seconds: float | None) -> None:
        end = self._room(_STARTED.size)
        _STARTED.pack_into(
            self._map, self._end, b"S", index, math.nan if seconds is None else seconds
        )
        self._end = end

    def report(self, report: pytest.TestReport) -> None:
        if (
            report.outcome == "passed"
            and not report.longrepr
            and not report.sections
            and not report.user_properties
            and not hasattr(report, "wasxfail")
        ):
            end = self._room(_PASSED.size)
            _PASSED.pack_into(
                self._map,
                self._end,
                b"R",
                _PHASE_CODES[report.when],
                report.duration,
                report.start,
                report.stop,
            )
            self._end = end
        else:
            data = self._config.hook.pytest_report_to_serializable(
                config=self._config, report=report
            )
            self._add_sized(b"J", data)

    def warning(self, message: warnings.WarningMessage, nodeid: str) -> None:
        data = {
            "message": str(message.message),
            "category": message.category.__name__,
            "filename": message.filename,
            "lineno": message.lineno,
            "nodeid": nodeid,
        }
        self._add_sized(b"W", data)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)

    def _add_sized(self, kind: bytes, data: object) -> None:
        payload = json.dumps(data).encode()
        end = self._room(_SIZED.size + len(payload))
        # The payload first: until its header is there, the record does not exist.
        self._map[self._end + _SIZED.size : end] = payload
        _SIZED.pack_into(self._map, self._end, kind, len(payload))
        self._end = end

    def _room(self, size: int) -> int:
        """Make room for ``size`` more bytes; where they will end."""
        end = self._end + size
        if end > self._size:
            self._grow(end)
        return end

    def _grow(self, at_least: int) -> None:
        size = max(2 * self._size, _CHUNK)
        while size < at_least:
            size *= 2
        os.ftruncate(self._fd, size)
        self._map.close()
        self._map = mmap.mmap(self._fd, size)
        self._size = size


def read_records(path: Path) -> list[TestRecord]:
    """The tests a worker recorded, in order; only the last one may be unfinished."""
    tests: list[TestRecord] = []
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return tests
    offset = 0
    while offset < len(data):
        kind = data[offset : offset + 1]
        if kind == b"S" and offset + _STARTED.size <= len(data):
            _, index, seconds = _STARTED.unpack_from(data, offset)
            tests.append(TestRecord(index, None if math.isnan(seconds) else seconds))
            offset += _STARTED.size
        elif kind == b"R" and tests and offset + _PASSED.size <= len(data):
            _, when, duration, start, stop = _PASSED.unpack_from(data, offset)
            tests[-1].reports.append((_PHASES[when], duration, start, stop))
            offset += _PASSED.size
        elif kind in (b"J", b"W") and tests and offset + _SIZED.size <= len(data):
            _, length = _SIZED.unpack_from(data, offset)
            start = offset + _SIZED.size
            if start + length > len(data):
                break
            decoded = json.loads(data[start : start + length])
            (tests[-1].reports if kind == b"J" else tests[-1].warnings).append(decoded)
            offset = start + length
        else:
            break  # the end of what was written (NUL bytes), or a record cut short
    return tests


def report_from_record(
    recorded: PassedReport | dict[str, Any], item: pytest.Item, config: pytest.Config
) -> pytest.TestReport:
    """The report a worker recorded for ``item``."""
    if isinstance(recorded, dict):
        report = config.hook.pytest_report_from_serializable(config=config, data=recorded)
        assert isinstance(report, pytest.TestReport)
        return report
    when, duration, start, stop = recorded
    return item_report(item, when, "passed", duration=duration, start=start, stop=stop)


def item_report(
    item: pytest.Item, when: str, outcome: str, longrepr: str | None = None, **fields: Any
) -> pytest.TestReport:
    """A report of ``item`` made outside of its run, as pytest would have made it."""
    return pytest.TestReport(
        item.nodeid,
        item.location,
        keywords=dict.fromkeys(item.keywords, 1),
        outcome=outcome,  # type: ignore[arg-type]
        longrepr=longrepr,
        when=when,  # type: ignore[arg-type]
        **fields,
    )


def warning_from_record(data: dict[str, Any]) -> tuple[warnings.WarningMessage, str]:
    """A recorded warning, rebuilt (a built-in category by name, else UserWarning), and its test."""
    category = getattr(builtins, data["category"], None)
    if not (isinstance(category, type) and issubclass(category, Warning)):
        category = UserWarning
    message = warnings.WarningMessage(
        category(data["message"]), category, data["filename"], data["lineno"]
    )
    return message, data["nodeid"]
