"""``--expire-report``: every expiry of a session as JSON, checked against its documented schema.

Real sessions, serially and with 2 xdist workers: an interrupted test, one
that ended past its deadline and one killed in C code that holds the GIL
(serially, after the kill a new worker replays the expiry its predecessor
reported, and writes the file from then on); a session without expiries;
one interrupted by SIGINT; the usage errors. The schema is the one shipped
with the package (``pytest_expire/json_report.schema.json``), read here by
a checker of the few JSON Schema keywords it uses (jsonschema is not a
dependency), which refuses any other keyword.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from snippets import ARGS, GIL_HANG_SUITE, pytest_job, run_suite, wait_until_exists

import pytest_expire
from pytest_expire import json_report

SCHEMA: dict[str, Any] = json.loads(json_report.SCHEMA.read_text())
DOCS = Path(__file__).resolve().parents[2] / "docs" / "json-report.md"
_KEYWORDS = {
    "$schema",
    "$defs",
    "$ref",
    "title",
    "description",
    "type",
    "const",
    "enum",
    "minimum",
    "required",
    "properties",
    "additionalProperties",
    "items",
}
_TYPES: dict[str, Any] = {
    "object": lambda value: isinstance(value, dict),
    "array": lambda value: isinstance(value, list),
    "string": lambda value: isinstance(value, str),
    "boolean": lambda value: isinstance(value, bool),
    "null": lambda value: value is None,
    "integer": lambda value: isinstance(value, int) and not isinstance(value, bool),
    "number": lambda value: isinstance(value, (int, float)) and not isinstance(value, bool),
}


def violations(value: Any, schema: dict[str, Any] = SCHEMA, where: str = "$") -> list[str]:
    """Where ``value`` breaks ``schema`` (the report's, by default): one line each."""
    if "$ref" in schema:
        return violations(value, SCHEMA["$defs"][schema["$ref"].removeprefix("#/$defs/")], where)
    unknown = set(schema) - _KEYWORDS
    assert not unknown, f"the schema uses keywords this checker does not know: {unknown}"
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        if not any(_TYPES[name](value) for name in names):
            return [f"{where}: {value!r} is not of type {types}"]
    found = []
    if "const" in schema and value != schema["const"]:
        found.append(f"{where}: {value!r} is not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{where}: {value!r} is none of {schema['enum']}")
    if "minimum" in schema and _TYPES["number"](value) and value < schema["minimum"]:
        found.append(f"{where}: {value!r} is below {schema['minimum']}")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        found += [f"{where}: no {key!r}" for key in schema.get("required", ()) if key not in value]
        if schema.get("additionalProperties", True) is False:
            found += [f"{where}: unknown {key!r}" for key in value if key not in properties]
        for key, item in value.items():
            if key in properties:
                found += violations(item, properties[key], f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            found += violations(item, schema["items"], f"{where}[{index}]")
    return found


WAITS_IN_A_HELPER = """
import time

def wait_for_ever():
    time.sleep(3600)

def test_interrupted():
    wait_for_ever()
"""

#: Ignores the interrupt's signal (the watchdog sends it none) and returns within the
#: grace: it ended past its deadline.
ENDS_LATE = """
import signal
import time

from pytest_expire.signals import INTERRUPT_SIGNAL

def test_ends_late():
    previous = signal.signal(INTERRUPT_SIGNAL, signal.SIG_IGN)
    try:
        time.sleep(0.65)
    finally:
        signal.signal(INTERRUPT_SIGNAL, previous)
"""

#: Waits (under a deadline of its own) until the report lists the three expiries, as the
#: session runs: the file is rewritten after each expiry, not only at the end.
READS_THE_REPORT = """
import json
import time

import pytest

@pytest.mark.expires(60)
def test_reads_the_report():
    seen = []
    for _ in range(600):
        with open("report.json") as file:
            seen = [entry["nodeid"] for entry in json.load(file)["expired"]]
        if len(seen) == 3:
            break
        time.sleep(0.05)
    assert len(seen) == 3, seen
"""


@pytest.fixture(params=["serial", "xdist"])
def workers(request: pytest.FixtureRequest) -> tuple[str, ...]:
    if request.param == "xdist":
        pytest.importorskip("xdist")
        return ("-n", "2")
    return ()


def _report(path: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(path.read_text())
    assert violations(report) == []
    return report


def _test_thread(entry: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The test's process, and its thread that ran the test (the test's frame in it)."""
    (process,) = [p for p in entry["processes"] if p["test_process"]]
    name = entry["nodeid"].rpartition("::")[2]
    for thread in process["threads"]:
        if any(frame["function"] == name for frame in thread["frames"]):
            return process, thread
    raise AssertionError(f"no thread of the test's process runs it: {process}")


def _functions(thread: dict[str, Any]) -> list[str]:
    return [frame["function"] for frame in thread["frames"]]


def test_every_expiry_is_in_the_report_as_the_session_runs(
    pytester: pytest.Pytester, workers: tuple[str, ...], marked: str
) -> None:
    # The hangs first, in this order: serially, the killed test's worker dies after
    # reporting two expiries, and the next one must write all three.
    source = WAITS_IN_A_HELPER + ENDS_LATE + GIL_HANG_SUITE + READS_THE_REPORT
    before = datetime.now(timezone.utc)
    result = run_suite(pytester, source, *ARGS, "--expire-report=report.json", *workers)
    result.assert_outcomes(passed=2, failed=3)
    report = _report(pytester.path / "report.json")

    assert (report["version"], report["pytest_expire"]) == (2, pytest_expire.__version__)
    started = datetime.fromisoformat(report["started"])
    assert before - timedelta(seconds=1) <= started <= datetime.now(timezone.utc)
    assert report["leftovers"] == []
    expired = {entry["nodeid"].rpartition("::")[2]: entry for entry in report["expired"]}
    assert len(report["expired"]) == len(expired) == 3
    assert {name: (e["phase"], e["deadline"], e["action"]) for name, e in expired.items()} == {
        "test_interrupted": ("call", 0.5, "interrupted"),
        "test_ends_late": ("call", 0.5, "ended late"),
        "test_hangs": ("call", 0.5, "killed"),
    }
    # The time its setup, call and teardown took: past the deadline; a killed test's, past
    # the grace too (less what the clocks of two processes may disagree on, under xdist).
    assert all(0.45 <= entry["elapsed"] < 30 for entry in expired.values()), expired
    assert expired["test_hangs"]["elapsed"] >= 0.9

    # The stacks, structured: the frame of the test, under that of the helper it waits in.
    process, thread = _test_thread(expired["test_interrupted"])
    assert process["pid"] > 0 and process["parent"] > 0 and process["command"]
    assert thread["name"] == "MainThread"  # named by the test's own process
    functions = _functions(thread)
    assert functions[functions.index("test_interrupted") - 1] == "wait_for_ever"
    frame = thread["frames"][functions.index("test_interrupted")]
    lines = (pytester.path / "test_suite.py").read_text().splitlines()
    assert frame["file"].endswith("test_suite.py")
    assert frame["line"] == lines.index("    wait_for_ever()") + 1
    functions = _functions(_test_thread(expired["test_hangs"])[1])
    assert functions[functions.index("test_hangs") - 1] == "hold_the_gil_forever"


def test_a_session_without_expiries_writes_an_empty_report(
    pytester: pytest.Pytester, marked: str
) -> None:
    # The ini's path, relative to the ini file.
    pytester.makeini("[pytest]\nexpire_report = reports/expiries.json\n")
    (pytester.path / "reports").mkdir()
    pytester.makepyfile(test_suite="def test_passes():\n    pass\n")
    result = pytester.runpytest_subprocess(*ARGS, timeout=120)
    result.assert_outcomes(passed=1)
    report = _report(pytester.path / "reports" / "expiries.json")
    assert (report["expired"], report["leftovers"]) == ([], [])
    assert os.listdir(pytester.path / "reports") == ["expiries.json"]  # no temporary file

    # A usage error names the ini option.
    shutil.rmtree(pytester.path / "reports")
    result = pytester.runpytest_subprocess(*ARGS, timeout=120)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini expire_report */reports/expiries.json: the directory *"])


def test_an_interrupted_session_leaves_a_whole_report(
    pytester: pytest.Pytester, marked: str
) -> None:
    started = pytester.path / "started"
    pytester.makepyfile(
        test_suite=textwrap.dedent(WAITS_IN_A_HELPER)
        + textwrap.dedent(
            f"""
            import pytest

            @pytest.mark.expires(600)
            def test_waits():
                open({str(started)!r}, "w").close()
                time.sleep(3600)
            """
        )
    )
    with pytest_job(
        pytester.path, *ARGS, "-p", "no:randomly", "--expire-report=report.json", output=True
    ) as session:
        wait_until_exists(started, 60)
        os.killpg(session.pid, signal.SIGINT)  # a terminal's Ctrl-C
        output, _ = session.communicate(timeout=60)
    assert session.returncode == pytest.ExitCode.INTERRUPTED, output
    report = _report(pytester.path / "report.json")
    assert [entry["nodeid"] for entry in report["expired"]] == ["test_suite.py::test_interrupted"]
    assert not list(pytester.path.glob(".report.json.*"))  # no temporary file


def test_a_report_that_cannot_be_written_any_more_is_said_and_the_session_goes_on(
    pytester: pytest.Pytester, marked: str
) -> None:
    pytester.makepyfile(
        test_suite="""
        import shutil
        import time

        def test_removes_the_reports_directory_and_hangs():
            shutil.rmtree("reports")
            time.sleep(3600)

        def test_still_runs():
            pass
        """
    )
    (pytester.path / "reports").mkdir()
    result = pytester.runpytest_subprocess(
        *ARGS, "-p", "no:randomly", "--expire-report=reports/report.json", timeout=120
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["pytest-expire: could not write the report *reports/report.json: No such file*"]
    )


def _unwritable_directory(tmp_path: Path) -> Path:
    """A directory this process cannot create a file in: one it may not write, or, where
    permissions do not hold (root), sysfs."""
    directory = tmp_path / "read-only"
    directory.mkdir(mode=0o500)
    for candidate in (directory, Path("/sys")):
        try:
            (candidate / "probe").touch()
        except OSError:
            return candidate
        (candidate / "probe").unlink()
    pytest.skip("no directory here that this process cannot write")


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("missing/report.json", "the directory */missing does not exist"),
        ("test_suite.py/report.json", "the directory */test_suite.py is not a directory"),
        (".", "is a directory"),
        ("UNWRITABLE/report.json", "cannot write there (*)"),
        ("", "*--expire-report: expected a file path, got an empty value"),
    ],
    ids=["missing directory", "a file as directory", "a directory", "unwritable", "empty"],
)
def test_a_path_that_cannot_be_written_is_a_usage_error(
    pytester: pytest.Pytester, tmp_path: Path, path: str, error: str, marked: str
) -> None:
    pytester.makepyfile(test_suite="def test_passes():\n    pass\n")
    path = path.replace("UNWRITABLE", str(_unwritable_directory(tmp_path)))
    result = pytester.runpytest_subprocess(*ARGS, f"--expire-report={path}", timeout=120)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{error}*"])
    assert "test_passes" not in result.stdout.str()


def test_the_checker_finds_what_breaks_the_schema() -> None:
    # Without this, a checker that finds nothing would pass every report.
    frame = {"file": "test_suite.py", "line": 8, "function": "test_x"}
    thread = {"id": "0x1", "name": None, "current": True, "frames": [frame], "notes": []}
    process = {
        "pid": 12,
        "parent": 11,
        "command": "python -m pytest",
        "test_process": True,
        "threads": [thread],
        "notes": ["(a note)"],
    }
    entry = {
        "nodeid": "test_suite.py::test_x",
        "phase": "call",
        "deadline": 0.5,
        "elapsed": 0.6,
        "action": "killed",
        "processes": [process],
    }
    leftover = {
        "kind": "thread",
        "nodeid": "test_suite.py::test_x",
        "phase": "call",
        "name": "leaked",
        "daemon": False,
        "thread": "0x1",
        "frames": [dict(frame)],
        "pid": None,
        "command": None,
        "threads": [],
        "notes": [],
    }
    exit_entry = {
        "pid": 12,
        "command": "python -m pytest",
        "xdist_worker": None,
        "exit_deadline": 1,
        "exit_status": 0,
        "stage": "joining threads",
        "found": [leftover],
        "threads": [copy.deepcopy(thread)],
    }
    report = {
        "version": 2,
        "pytest_expire": pytest_expire.__version__,
        "started": "2026-01-01T00:00:00+00:00",
        "expired": [entry],
        "leftovers": [exit_entry],
    }
    assert violations(report) == []
    breakages = [
        (("version",), 1),
        (("leftovers", 0, "stage"), "exiting"),
        (("leftovers", 0, "exit_status"), "0"),
        (("leftovers", 0, "found", 0, "kind"), "daemon"),
        (("leftovers", 0, "found", 0, "phase"), "collect"),
        (("leftovers", 0, "found", 0, "frames", 0, "line"), "8"),
        (("expired", 0, "action"), "exploded"),
        (("expired", 0, "phase"), "collect"),
        (("expired", 0, "deadline"), "0.5"),
        (("expired", 0, "elapsed"), -1),
        (("expired", 0, "processes", 0, "pid"), True),
        (("expired", 0, "processes", 0, "threads", 0, "frames", 0, "line"), "8"),
        (("expired", 0, "processes", 0, "notes", 0), 1),
    ]
    for keys, value in breakages:
        broken = copy.deepcopy(report)
        target: Any = broken
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
        assert violations(broken), keys
    for keys in [("started",), ("expired", 0, "processes", 0, "threads", 0, "frames", 0, "file")]:
        broken = copy.deepcopy(report)
        target = broken
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]
        assert violations(broken) == [f"${''.join(_path(keys[:-1]))}: no {keys[-1]!r}"]
    broken = copy.deepcopy(report)
    broken["expired"][0]["stacks"] = "raw"
    assert violations(broken) == ["$.expired[0]: unknown 'stacks'"]


def _path(keys: tuple[Any, ...]) -> list[str]:
    return [f"[{key}]" if isinstance(key, int) else f".{key}" for key in keys]


def test_the_documentation_describes_every_field_of_the_schema() -> None:
    documented = DOCS.read_text()
    fields = set(SCHEMA["properties"])
    for definition in SCHEMA["$defs"].values():
        fields |= set(definition["properties"])
    missing = sorted(name for name in fields if f"`{name}`" not in documented)
    assert not missing, f"{DOCS.name} does not describe {missing}"


#: What keeps a process from exiting after its session, left by passing tests: a thread
#: that is not a daemon and a ``multiprocessing`` child that is not one either (exit
#: waits for the thread first); an exit handler that blocks.
LEAKS_A_THREAD_AND_A_CHILD = """
import multiprocessing, threading, time

def test_leaks_a_thread():
    threading.Thread(target=time.sleep, args=(3600,), name="leaked-thread").start()

def test_leaks_a_child():
    multiprocessing.get_context("fork").Process(target=time.sleep, args=(3600,)).start()
"""
REGISTERS_A_BLOCKING_HANDLER = """
import atexit, time

def test_registers_a_blocking_handler():
    atexit.register(time.sleep, 3600)
"""


@pytest.mark.parametrize("leaks", ["thread and child", "exit handler"])
def test_what_kept_the_process_from_exiting_is_in_the_report(
    pytester: pytest.Pytester, workers: tuple[str, ...], leaks: str, marked: str
) -> None:
    source = (
        LEAKS_A_THREAD_AND_A_CHILD if leaks == "thread and child" else REGISTERS_A_BLOCKING_HANDLER
    )
    pytester.makepyfile(test_suite=textwrap.dedent(source))
    result = pytester.runpytest_subprocess(
        "--expire-exit=1",
        "-p",
        "no:randomly",
        "--expire-report=report.json",
        *workers,
        timeout=60,
    )
    assert result.ret == 0
    result.stderr.fnmatch_lines(["pytest-expire: * did not exit within 1 s of the end *"])
    report = _report(pytester.path / "report.json")
    assert report["expired"] == []
    # Each process that did not exit: serially the worker; under xdist, each worker that
    # ran a leaking test.
    ended = report["leftovers"]
    assert 1 <= len(ended) <= (2 if workers else 1)
    for entry in ended:
        assert entry["pid"] > 0 and entry["command"] and entry["threads"]
        assert entry["exit_deadline"] == 1
        if workers:
            assert entry["xdist_worker"] in ("gw0", "gw1") and entry["exit_status"] is None
        else:
            assert entry["xdist_worker"] is None and entry["exit_status"] == 0
    found = {item["kind"]: (item, entry) for entry in ended for item in entry["found"]}
    if leaks == "exit handler":
        handler, entry = found["exit handler"]
        assert entry["stage"] == "running exit handlers"
        assert (handler["name"], handler["nodeid"], handler["phase"]) == (
            "time.sleep",
            "test_suite.py::test_registers_a_blocking_handler",
            "call",
        )
        return
    # (Under xdist, the worker whose first test started a child also lists
    # multiprocessing's exit handler, registered as that test imported it.)
    assert {"thread", "process"} <= set(found)
    thread, entry = found["thread"]
    assert entry["stage"] == "joining threads"
    assert (thread["name"], thread["daemon"], thread["nodeid"], thread["phase"]) == (
        "leaked-thread",
        False,
        "test_suite.py::test_leaks_a_thread",
        "call",
    )
    assert thread["thread"] in {t["id"] for t in entry["threads"]}
    assert thread["frames"] and thread["frames"][-1]["function"] == "_bootstrap"
    child, entry = found["process"]
    assert (child["nodeid"], child["phase"]) == ("test_suite.py::test_leaks_a_child", "call")
    assert child["pid"] > 0 and child["pid"] != entry["pid"] and child["command"]
    # Its stacks (py-spy's: without a deadline, it did not join the session), or why not.
    functions = [function for t in child["threads"] for function in _functions(t)]
    assert "test_leaks_a_child" in functions or child["notes"], child
