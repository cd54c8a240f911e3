"""What a worker leaves behind for its supervisor: one record file per worker.

A supervised worker (a fork of the pytest process the user started) writes
to its record file how far its session got: each test it starts, the phase
that test is in, each report and warning, whether the test finished, and
finally that the session itself ended, with its exit status. If the worker
dies, its supervisor reads the file to learn which tests ended, with which
reports, and where the last one was; the next worker replays those reports
so that every reporter sees the whole run. Nobody reads the file otherwise,
so writing it must be nearly free: records are packed straight into a shared
memory map of the file (which survives the worker's death without a system
call per record), a passed report without output is a few numbers, and a
phase or a test's end is one byte written in place.

The file starts with a header, written in place::

    interrupted (uint8)    the worker began handling a KeyboardInterrupt
    debugging (uint8)      a test of the worker is in pytest's debugger
    ended (uint8)          the session ended; its exit status follows
    watchdog (uint8)       the worker asks for a watchdog (a test has a deadline)
    torn down (uint8)      its session's own teardown is over (pytest's
                           pytest_sessionfinish, fixtures of every scope)
    exit status (int32)
    session start (float64 time.time(), float64 time.perf_counter()), 0: not yet

Then records, each a kind byte and a payload; the part of the file not
written yet is NUL bytes, which no kind is::

    S  phase (uint8, 255: none yet), finished (uint8),  a test started
       deadline (float64, NaN: none), start (float64
       verdict.wall_clock()), length (uint32), node id
    R  when (uint8), duration, start, stop (float64)    a passed report, nothing more in it
    J  length (uint32), JSON                            any other report, as
                                                        pytest_report_to_serializable has it
    W  length (uint32), JSON                            a warning recorded while a test ran

A test has finished once ``pytest_runtest_logfinish`` ran for it, not when
its teardown was reported: a plugin that reruns tests (pytest-rerunfailures)
reports several setup, call and teardown triples for one test, and starts
each attempt's phases again after the previous attempt's end.
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

from pytest_expire.verdict import wall_clock

# The record file grows by this much at least (some ten thousand tests' worth).
_CHUNK = 1 << 20

_HEADER = struct.Struct("<BBBBBidd")
_INTERRUPTED, _DEBUGGING, _ENDED, _WATCHDOG, _TORN_DOWN, _STATUS, _START = 0, 1, 2, 3, 4, 5, 9
_STARTED = struct.Struct("<cBBddI")
_PHASE_AT, _FINISHED_AT = 1, 2  # in a test's S record
_NO_PHASE = 255
_PASSED = struct.Struct("<cBddd")
_SIZED = struct.Struct("<cI")
PHASES = ("setup", "call", "teardown")
_PHASE_CODES = {phase: code for code, phase in enumerate(PHASES)}

#: A passed report as recorded: (when, duration, start, stop).
PassedReport = tuple[str, float, float, float]


@dataclass
class TestRecord:
    """One test as a worker recorded it."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    nodeid: str
    seconds: float | None
    #: When it started (``verdict.wall_clock``).
    started: float = 0.0
    #: The phase it was last in (None: it died before its setup began).
    phase: str | None = None
    #: Whether pytest_runtest_logfinish ran for it since its last phase began.
    finished: bool = False
    #: Passed reports as tuples, the others as pytest_report_to_serializable's dicts.
    reports: list[PassedReport | dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    #: Set by the supervisor when the worker died in this test or after it: the
    #: wait status,
    status: int | None = None
    #: when the supervisor found it dead (time.time()),
    died: float | None = None
    #: the stacks the watchdog took when it killed the worker (if it did), and the
    #: token of the deadline it killed it at (the test's own, or the session's),
    stacks: str = ""
    killed_at: float | None = None
    #: and what the dead worker's output capture held (stdout, stderr).
    captured: tuple[str, str] = ("", "")


@dataclass
class WorkerRecords:
    """Everything a worker recorded: its tests in the order it ran them, and its session."""

    #: Empty if its session ended (see ``read_records``).
    tests: list[TestRecord]
    #: It began handling a KeyboardInterrupt.
    interrupted: bool = False
    #: None unless its session ended: then the exit status it ended with.
    exitstatus: int | None = None
    #: When its session started: time.time() and time.perf_counter(); None if not yet.
    session_start: tuple[float, float] | None = None
    #: Its session's own teardown (the fixtures of every scope) is over.
    torn_down: bool = False


class RecordWriter:
    """The worker's side: records packed into a shared memory map of the record file.

    What is packed into a ``MAP_SHARED`` mapping is in the file at once (the
    kernel's page cache holds it, whatever happens to the worker next). The
    file grows in chunks.
    """

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self._map = mmap.mmap(-1, 1)  # replaced by _grow
        self._size = 0
        self._end = _HEADER.size
        # Where the S record of the last test started is, once one is.
        self._test = -1
        self._grow(_CHUNK)

    def session_started(self, wall: float, perf: float) -> None:
        struct.pack_into("<dd", self._map, _START, wall, perf)

    def interrupted(self) -> None:
        self._map[_INTERRUPTED] = 1

    def debugging(self, now: bool) -> None:
        self._map[_DEBUGGING] = int(now)

    def wants_watchdog(self) -> None:
        self._map[_WATCHDOG] = 1

    def torn_down(self) -> None:
        self._map[_TORN_DOWN] = 1

    def session_ended(self, exitstatus: int) -> None:
        struct.pack_into("<i", self._map, _STATUS, exitstatus)
        self._map[_ENDED] = 1

    def started(self, nodeid: str, seconds: float | None) -> None:
        name = nodeid.encode()
        start = self._end
        end = self._room(_STARTED.size + len(name))
        self._map[start + _STARTED.size : end] = name
        _STARTED.pack_into(
            self._map,
            start,
            b"S",
            _NO_PHASE,
            0,
            math.nan if seconds is None else seconds,
            wall_clock(),
            len(name),
        )
        self._end = end
        self._test = start

    def phase(self, when: str) -> None:
        """The last test started begins phase ``when`` (of this attempt, with reruns)."""
        if self._test >= 0:
            self._map[self._test + _FINISHED_AT] = 0
            self._map[self._test + _PHASE_AT] = _PHASE_CODES[when]

    def finished(self) -> None:
        """pytest_runtest_logfinish ran for the last test started."""
        if self._test >= 0:
            self._map[self._test + _FINISHED_AT] = 1

    def report(self, report: pytest.TestReport, config: pytest.Config) -> None:
        """A report of the last test started (none before: a replay's, say)."""
        if self._test < 0:
            return
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
            data = config.hook.pytest_report_to_serializable(config=config, report=report)
            self._add_sized(b"J", data)

    def warning(self, message: warnings.WarningMessage, nodeid: str) -> None:
        """A warning recorded while the last test started ran."""
        if self._test < 0:
            return
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


@dataclass
class Flags:
    """What the supervisor learns of a worker while it runs: four bytes of its header."""

    interrupted: bool = False
    debugging: bool = False
    wants_watchdog: bool = False


def read_flags(path: Path) -> Flags:
    try:
        with open(path, "rb") as file:
            header = file.read(_WATCHDOG + 1)
    except FileNotFoundError:
        return Flags()
    flags = [header[at : at + 1] == b"\x01" for at in (_INTERRUPTED, _DEBUGGING, _WATCHDOG)]
    return Flags(*flags)


def read_records(path: Path) -> WorkerRecords:
    """What a worker recorded, its tests in order; only the last one may be unfinished.

    The tests only of a worker whose session did not end: one that ended it
    reported every test itself, and reading a large suite's records would
    delay the end of every run for nothing.
    """
    try:
        with open(path, "rb") as file:
            data = file.read(_HEADER.size)
            if len(data) < _HEADER.size:
                return WorkerRecords([])
            interrupted, _, ended, _, torn_down, status, wall, perf = _HEADER.unpack_from(data)
            if not ended:
                data += file.read()
    except FileNotFoundError:
        return WorkerRecords([])
    return WorkerRecords(
        [] if ended else _read_tests(data),
        interrupted=bool(interrupted),
        exitstatus=status if ended else None,
        session_start=(wall, perf) if wall else None,
        torn_down=bool(torn_down),
    )


def _read_tests(data: bytes) -> list[TestRecord]:
    tests: list[TestRecord] = []
    offset = _HEADER.size
    while offset < len(data):
        kind = data[offset : offset + 1]
        if kind == b"S" and offset + _STARTED.size <= len(data):
            _, phase, finished, seconds, started, length = _STARTED.unpack_from(data, offset)
            start = offset + _STARTED.size
            if start + length > len(data):
                break
            tests.append(
                TestRecord(
                    data[start : start + length].decode(),
                    None if math.isnan(seconds) else seconds,
                    started,
                    phase=None if phase == _NO_PHASE else PHASES[phase],
                    finished=bool(finished),
                )
            )
            offset = start + length
        elif kind == b"R" and tests and offset + _PASSED.size <= len(data):
            _, when, duration, start_time, stop = _PASSED.unpack_from(data, offset)
            tests[-1].reports.append((PHASES[when], duration, start_time, stop))
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
    recorded: PassedReport | dict[str, Any],
    nodeid: str,
    location: tuple[str, int | None, str],
    keywords: dict[str, Any],
    config: pytest.Config,
) -> pytest.TestReport:
    """The report a worker recorded for the test ``nodeid``."""
    if isinstance(recorded, dict):
        report = config.hook.pytest_report_from_serializable(config=config, data=recorded)
        assert isinstance(report, pytest.TestReport)
        return report
    when, duration, start, stop = recorded
    return pytest.TestReport(
        nodeid,
        location,
        keywords,
        "passed",
        None,
        when,  # type: ignore[arg-type]
        duration=duration,
        start=start,
        stop=stop,
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
