"""The record file a worker leaves for its supervisor, read after the worker was killed."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from pytest_expire.records import RecordWriter, read_flags, read_records, report_from_record


def _report(when: str, outcome: str = "passed", **extra: object) -> pytest.TestReport:
    return pytest.TestReport(
        "test_x.py::test_a",
        ("test_x.py", 1, "test_a"),
        keywords={},
        outcome=outcome,  # type: ignore[arg-type]
        longrepr=extra.pop("longrepr", None),  # type: ignore[arg-type]
        when=when,  # type: ignore[arg-type]
        duration=0.25,
        start=100.0,
        stop=100.25,
        **extra,
    )


def test_what_a_killed_worker_wrote_is_there(tmp_path: Path, pytestconfig: pytest.Config) -> None:
    path = tmp_path / "records"
    before = time.time()
    pid = os.fork()
    if pid == 0:  # the worker: records two tests, and is killed in the second one's call
        try:
            writer = RecordWriter(path)
            writer.session_started(1000.0, 5.0)
            writer.started("test_x.py::test_a", 0.5)
            for when in ("setup", "call", "teardown"):
                writer.phase(when)
                writer.report(_report(when), pytestconfig)
            writer.finished()
            writer.started("test_x.py::test_b[ü]", None)
            writer.phase("setup")
            writer.report(
                _report("setup", sections=[("Captured stdout setup", "hello")]), pytestconfig
            )
            writer.phase("call")
            os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL

    recorded = read_records(path)
    assert (recorded.exitstatus, recorded.session_start) == (None, (1000.0, 5.0))
    first, second = recorded.tests
    assert (first.nodeid, first.seconds, first.finished, len(first.reports)) == (
        "test_x.py::test_a",
        0.5,
        True,
        3,
    )
    assert (second.nodeid, second.seconds, second.finished) == ("test_x.py::test_b[ü]", None, False)
    assert second.phase == "call"
    assert before <= first.started <= second.started <= time.time()
    assert first.reports[0] == ("setup", 0.25, 100.0, 100.25)  # a passed report: its numbers
    assert isinstance(second.reports[0], dict)  # one with output keeps all of it
    assert second.reports[0]["sections"] == [["Captured stdout setup", "hello"]]


def test_a_rerun_attempt_makes_a_finished_test_unfinished_again(tmp_path: Path) -> None:
    # pytest-rerunfailures runs pytest_runtest_logfinish after each attempt.
    writer = RecordWriter(tmp_path / "records")
    writer.started("test_x.py::test_a", 0.5)
    for when in ("setup", "call", "teardown"):
        writer.phase(when)
    writer.finished()
    writer.phase("setup")
    writer.phase("call")
    writer.close()
    (test,) = read_records(tmp_path / "records").tests
    assert (test.phase, test.finished) == ("call", False)


def test_the_end_of_the_session_and_the_flags_are_read(tmp_path: Path) -> None:
    path = tmp_path / "records"
    writer = RecordWriter(path)
    assert read_flags(path).interrupted is False
    writer.interrupted()
    writer.debugging(True)
    writer.wants_watchdog()
    flags = read_flags(path)
    assert (flags.interrupted, flags.debugging, flags.wants_watchdog) == (True, True, True)
    writer.debugging(False)
    assert read_flags(path).debugging is False
    writer.started("test_x.py::test_a", None)
    assert read_records(path).exitstatus is None
    assert [test.nodeid for test in read_records(path).tests] == ["test_x.py::test_a"]
    writer.session_ended(2)
    writer.close()
    ended = read_records(path)
    # A worker that ended its session reported its tests itself: they are not read.
    assert (ended.exitstatus, ended.tests) == (2, [])


def test_a_report_comes_back_as_it_was_recorded(
    tmp_path: Path, pytester: pytest.Pytester, pytestconfig: pytest.Config
) -> None:
    item = pytester.getitem("def test_func(): pass")
    path = tmp_path / "records"
    writer = RecordWriter(path)
    writer.report(_report("setup"), pytestconfig)  # before any test (a replay's): not recorded
    writer.started(item.nodeid, 1.0)
    writer.report(_report("call"), pytestconfig)
    writer.report(_report("teardown", outcome="failed", longrepr="it broke"), pytestconfig)
    writer.close()
    (test,) = read_records(path).tests
    plain, failed = (
        report_from_record(line, item.nodeid, item.location, {}, pytestconfig)
        for line in test.reports
    )
    assert (plain.nodeid, plain.when, plain.outcome, plain.duration) == (
        item.nodeid,
        "call",
        "passed",
        0.25,
    )
    assert (plain.start, plain.stop) == (100.0, 100.25)
    assert (failed.when, failed.outcome, str(failed.longrepr)) == ("teardown", "failed", "it broke")


def test_a_record_file_grows_past_its_first_chunk(
    tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    path = tmp_path / "records"
    writer = RecordWriter(path)
    teardown = _report("teardown")
    for index in range(30_000):
        writer.started(f"test_x.py::test_{index}", 60.0)
        writer.report(teardown, pytestconfig)
        writer.finished()
    writer.close()
    tests = read_records(path).tests
    assert path.stat().st_size > 1 << 20  # grown past the first chunk
    assert len(tests) == 30_000
    assert tests[-1].nodeid == "test_x.py::test_29999" and all(test.finished for test in tests)
