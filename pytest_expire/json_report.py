"""The ``--expire-report`` file: every expiry of the session, as JSON, for programs.

A CI job that wants to know which tests hung, and where, should not have to
scrape the terminal or JUnit's ``<failure>`` text. Every report of an
expired test carries a record (``report.RECORD``, made by
``report.fail_as_expired`` whoever made the report); this plugin collects
them from ``pytest_runtest_logreport`` in the process that reports to the
user, and writes them to one file, whose schema is
``json_report.schema.json`` (described in ``docs/json-report.md``).

Which process that is: serially, the worker that runs the session (a
worker forked after another was killed replays the earlier workers'
reports, expiries included, into its own hooks, so it writes the whole
session's); under pytest-xdist, the controller (xdist workers register
nothing: their reports reach the controller, and a killed worker's test
is reported there).

The report's ``leftovers`` are the processes that did not exit in time
once their session was over (``exit_deadline``), with what kept them: they
are found by whoever watches that process exit, after it wrote the report.
Serially, the supervisor adds them to the file the worker left
(:func:`add_leftovers`); under pytest-xdist, the controller's watcher hands
them to the controller's writer (:meth:`JsonReport.add_leftovers`); in an
unsupervised session, the process's own watcher thread does.

The file is rewritten whole at the session's start, after each expiry (and
as the expired test's later phases add to its time) and at the session's
end, each time into a temporary file of the same directory that then
replaces it: a reader sees the previous version or the next one, never
half of one, whether the session ends normally, goes on after a kill, or
is interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from pytest_expire import __version__, worker
from pytest_expire.report import RECORD
from pytest_expire.xdist_support import _worker_id

#: The schema's version: raised when a reader of the previous one would misread the file.
VERSION = 2
#: The JSON Schema of the file, shipped with the package.
SCHEMA = Path(__file__).with_name("json_report.schema.json")
OPTION = "--expire-report"
INI = "expire_report"
PLUGIN_NAME = "expire-json-report"


def _path_argument(text: str) -> str:
    """``type=`` for the option: an empty path is refused, being what an unset shell
    variable expands to (``--expire-report=$REPORT``), not a wish for no report."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a file path, got an empty value")
    return text


def addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("expire")
    group.addoption(
        OPTION,
        type=_path_argument,
        default=None,
        metavar="PATH",
        help="write every expiry of the session (test, phase, times, what was done, every "
        "process's stacks) to PATH as JSON; rewritten after each one. Overrides the ini "
        f"{INI}.",
    )
    parser.addini(
        INI,
        "file to write every expiry of the session to, as JSON (relative to the ini file; "
        "empty: none)",
        default="",
    )


def register(config: pytest.Config) -> None:
    """Register the writer in the process that reports to the user, if a report is asked
    for; a path that cannot be written is a usage error, before any test runs."""
    if hasattr(config, "workerinput"):
        return  # an xdist worker: its controller reports its tests
    found = _path(config)
    if found is not None:
        path, source = found
        _check(path, f"{source} {path}")
        config.pluginmanager.register(JsonReport(path), PLUGIN_NAME)


def path_of(config: pytest.Config) -> Path | None:
    """Where the report of ``config``'s session goes; None if none is asked for."""
    found = _path(config)
    return found[0] if found is not None else None


def add_leftovers(path: Path, leftovers: list[dict[str, Any]]) -> str | None:
    """Add ``leftovers`` to the report at ``path`` that another process wrote (a
    supervised worker whose session is over), in one step; why it could not, if not."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return f"could not read it: {getattr(error, 'strerror', None) or error}"
    if not isinstance(report, dict) or not isinstance(report.get("leftovers"), list):
        return "it is not a report of this version"
    report["leftovers"] += leftovers
    try:
        _replace(path, report)
    except OSError as error:
        return error.strerror or str(error)
    return None


def _replace(path: Path, report: dict[str, Any]) -> None:
    """Replace the file at ``path`` with ``report``, in one step (through a temporary
    file beside it, removed if the write fails)."""
    temporary = _temporary(path)
    try:
        with open(_open(temporary), "w", encoding="utf-8") as file:
            json.dump(report, file, indent=2)
            file.write("\n")
        os.replace(temporary, path)
    except BaseException:  # a full disk, a Ctrl-C: no temporary file left behind
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def _path(config: pytest.Config) -> tuple[Path, str] | None:
    """The report's path and where it was set: the option's, relative to where pytest
    was started; else the ini's, relative to the ini file, where empty counts as unset."""
    option = config.getoption("expire_report")
    if option is not None:
        return config.invocation_params.dir / Path(option).expanduser(), OPTION
    value = str(config.getini(INI)).strip()
    if not value:
        return None
    base = config.inipath.parent if config.inipath is not None else config.rootpath
    return base / Path(value).expanduser(), f"ini {INI}"


def _check(path: Path, where: str) -> None:
    """Fail now, not at the first expiry, if the report cannot be written to ``path``."""
    if not path.parent.is_dir():
        problem = "is not a directory" if path.parent.exists() else "does not exist"
        raise pytest.UsageError(f"{where}: the directory {path.parent} {problem}")
    if path.is_dir():
        raise pytest.UsageError(f"{where}: is a directory")
    probe = _temporary(path)
    try:
        os.close(_open(probe))
    except OSError as error:
        raise pytest.UsageError(f"{where}: cannot write there ({error.strerror})") from None
    probe.unlink()


def _temporary(path: Path) -> Path:
    """Where this process writes the next version of ``path``: beside it (``os.replace``
    is atomic only within a file system), hidden, and its own."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _open(path: Path) -> int:
    return os.open(
        path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666
    )


class _Attempt:
    """A test's attempt (from its setup on) as its reports come: the time they took, and
    the entries of its expiries, whose elapsed time grows with its later phases."""

    def __init__(self) -> None:
        self.elapsed = 0.0
        self.expiries: list[dict[str, Any]] = []


class JsonReport:
    """Collects the session's expiries and keeps the report file up to date."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._started = ""
        self._expired: list[dict[str, Any]] = []
        # The attempts reported and not torn down yet, by node id and xdist worker
        # (``--dist each`` runs a test on every worker at once).
        self._attempts: dict[tuple[str, str | None], _Attempt] = {}
        self._leftovers: list[dict[str, Any]] = []
        # An xdist controller's exit watcher adds leftovers from a thread of its own.
        self._lock = threading.Lock()
        #: Why the last write failed, if it did (said in the terminal summary).
        self.error: str | None = None

    @pytest.hookimpl(trylast=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        # After the supervised worker's own (tryfirst), which knows the session's start.
        current = worker.current
        start = None
        replaying = False
        if current is not None and current[2] is session.config:
            replaying = bool(current[0].history)
            start = current[0].session_start
        wall = start[0] if start is not None else time.time()
        self._started = datetime.fromtimestamp(wall, timezone.utc).isoformat()
        if not replaying:
            # A worker that will replay the expiries of the workers before it leaves the
            # file as they wrote it: written now, it would lose them until the replay.
            self._write()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        key = (report.nodeid, _worker_id(report))
        if report.when == "setup":
            self._attempts[key] = _Attempt()
        attempt = self._attempts.setdefault(key, _Attempt())
        attempt.elapsed += report.duration
        record = getattr(report, RECORD, None)
        if isinstance(record, dict):
            entry = _entry(report.nodeid, record, attempt.elapsed)
            attempt.expiries.append(entry)
            self._expired.append(entry)
        for entry in attempt.expiries:
            entry["elapsed"] = attempt.elapsed
        if report.when == "teardown":
            del self._attempts[key]
        if attempt.expiries:
            self._write()

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self) -> None:
        self._write()

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.error is not None:
            terminalreporter.write_line(
                f"pytest-expire: could not write the report {self.path}: {self.error}",
                red=True,
            )

    def add_leftovers(self, leftovers: list[dict[str, Any]]) -> None:
        """Add the processes that did not exit in time (``exit_deadline``), and write."""
        with self._lock:
            self._leftovers += leftovers
        self._write()

    def _write(self) -> None:
        """Replace the file with the report as it stands, in one step."""
        with self._lock:
            report = {
                "version": VERSION,
                "pytest_expire": __version__,
                "started": self._started,
                "expired": self._expired,
                "leftovers": self._leftovers,
            }
            try:
                _replace(self.path, report)
            except OSError as error:
                # The session goes on (its directory was removed, the disk is full): the
                # summary says the report is missing or stale.
                self.error = error.strerror or str(error)
            else:
                self.error = None


def _entry(nodeid: str, record: dict[str, Any], elapsed: float) -> dict[str, Any]:
    """The report's entry for an expiry, from the record on its test's report."""
    return {
        "nodeid": nodeid,
        "phase": record["phase"],
        "deadline": record["deadline"],
        "elapsed": elapsed,
        "action": record["action"],
        "processes": record["processes"],
    }
