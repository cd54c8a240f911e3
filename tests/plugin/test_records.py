"""The record file a worker leaves for its supervisor, read after the worker was killed."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from pytest_expire.records import RecordWriter, read_records, report_from_record


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
    pid = os.fork()
    if pid == 0:  # the worker: records two tests, and is killed in the second one's call
        try:
            writer = RecordWriter(path, pytestconfig)
            writer.started(0, 0.5)
            for when in ("setup", "call", "teardown"):
                writer.report(_report(when))
            writer.started(1, None)
            writer.report(_report("setup", sections=[("Captured stdout setup", "hello")]))
            os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL

    first, second = read_records(path)
    assert (first.index, first.seconds, first.finished, len(first.reports)) == (0, 0.5, True, 3)
    assert (second.index, second.seconds, second.finished) == (1, None, False)
    assert second.phase_reached() == "call"
    assert first.reports[0] == ("setup", 0.25, 100.0, 100.25)  # a passed report: its numbers
    assert isinstance(second.reports[0], dict)  # one with output keeps all of it
    assert second.reports[0]["sections"] == [["Captured stdout setup", "hello"]]


def test_a_report_comes_back_as_it_was_recorded(
    tmp_path: Path, pytester: pytest.Pytester, pytestconfig: pytest.Config
) -> None:
    item = pytester.getitem("def test_func(): pass")
    path = tmp_path / "records"
    writer = RecordWriter(path, pytestconfig)
    writer.started(0, 1.0)
    writer.report(_report("call"))
    writer.report(_report("teardown", outcome="failed", longrepr="it broke"))
    writer.close()
    (test,) = read_records(path)
    plain, failed = (report_from_record(line, item, pytestconfig) for line in test.reports)
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
    writer = RecordWriter(path, pytestconfig)
    teardown = _report("teardown")
    for index in range(30_000):
        writer.started(index, 60.0)
        writer.report(teardown)
    writer.close()
    tests = read_records(path)
    assert path.stat().st_size > 1 << 20  # grown past the first chunk
    assert len(tests) == 30_000
    assert tests[-1].index == 29_999 and all(test.finished for test in tests)
