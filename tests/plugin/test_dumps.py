"""Dumps as a person reads them: real faulthandler and py-spy output, parsed and rendered.

The dumps here are real: faulthandler writing the threads of the process that
runs this test (under pytest, so the test's thread carries pytest's and
pluggy's frames), and py-spy reading a sleeping child where it is installed.
"""

from __future__ import annotations

import faulthandler
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator

import pytest

from pytest_expire import dumps
from pytest_expire.native_stacks import find_py_spy


def _waits_in_a_named_thread(started: threading.Event, stop: threading.Event) -> None:
    started.set()
    stop.wait()


@pytest.fixture
def named_thread() -> Iterator[threading.Thread]:
    """A thread named "helper-thread" that waits in a function of this module."""
    started, stop = threading.Event(), threading.Event()
    thread = threading.Thread(
        target=_waits_in_a_named_thread, args=(started, stop), name="helper-thread"
    )
    thread.start()
    started.wait()
    yield thread
    stop.set()
    thread.join()


def _dump_of_this_process(header: str) -> str:
    """What the watchdog writes of this process: a header, then faulthandler's dump of
    every thread (the current one last, as the dump signal's handler writes it)."""
    with tempfile.TemporaryFile("w+") as stream:
        faulthandler.dump_traceback(stream, all_threads=True)
        stream.seek(0)
        return f"{header}\n{stream.read()}"


def _a_test_that_waits_here() -> str:
    return _dump_of_this_process(
        f"--- process {os.getpid()} (the test's process, parent {os.getppid()}): "
        f"{sys.executable} -m pytest a very long command line ---"
    )


def test_the_tests_thread_comes_first_named_with_pytests_frames_folded(
    named_thread: threading.Thread,
) -> None:
    processes = dumps.parse(_a_test_that_waits_here())
    (process,) = processes
    assert (process.pid, process.ppid, process.test_process) == (os.getpid(), os.getppid(), True)
    dumps.name_threads(processes, os.getpid(), {named_thread.ident or 0: named_thread.name})
    text = dumps.render(processes)
    lines = text.splitlines()

    # The header does not repeat the command line of the test's process.
    assert lines[0] == f"--- process {os.getpid()}: the test's process ---"
    # The test's thread first, though faulthandler wrote it last.
    assert lines[1].startswith("Thread 0x") and lines[1].endswith(
        ", the test's (most recent call first):"
    )
    test_thread = lines[1 : lines.index("")]
    # Its own frames, innermost first, then one line for pytest's and pluggy's.
    assert "in _a_test_that_waits_here" in test_thread[2]
    assert (
        "in test_the_tests_thread_comes_first_named_with_pytests_frames_folded" in (test_thread[3])
    )
    folded = [line for line in test_thread if line.startswith("  (")]
    assert folded and "pytest" in folded[0] and "pluggy" in folded[0]
    assert not any("/_pytest/" in line or "/pluggy/" in line for line in test_thread)
    # Far fewer lines than the raw dump's frames: nothing of pytest's is listed.
    (thread,) = [t for t in process.threads if t.runs_a_test]
    assert len(test_thread) < len(thread.frames) - 10
    # The helper thread follows, by name.
    assert f'Thread 0x{named_thread.ident:016x} "helper-thread" (most recent call first):' in lines
    assert "in _waits_in_a_named_thread" in text


def test_where_it_hung_is_the_tests_innermost_frame_not_pytests() -> None:
    hung = dumps.where_it_hung(dumps.parse(_a_test_that_waits_here()))
    assert hung is not None
    assert (hung.file, hung.function) == (__file__, "_dump_of_this_process")


def test_the_whole_dump_is_kept_for_programs() -> None:
    (process,) = dumps.parse(_a_test_that_waits_here())
    record = process.as_json()
    (thread,) = [t for t in record["threads"] if t["current"]]  # type: ignore[attr-defined]
    functions = [frame["function"] for frame in thread["frames"]]
    # Unfolded: pytest's frames are all there, each with its file and line.
    assert functions[:2] == ["_dump_of_this_process", "_a_test_that_waits_here"]
    assert "pytest_runtest_call" in functions
    assert all(isinstance(frame["line"], int) for frame in thread["frames"])
    assert record["command"].endswith("a very long command line")  # type: ignore[attr-defined]


def test_lines_that_are_not_frames_are_kept_and_long_commands_shortened() -> None:
    command = "python -c " + "x" * 500
    text = textwrap.dedent(
        f"""\
        --- process 12 (parent 11): {command} ---
        (no stacks: it did not register for dumps, and py-spy did not read it)
        --- process 13 (parent 12): sleep 1000 ---
        (not a Python process)
        """
    )
    rendered = dumps.render(dumps.parse(text))
    assert "(no stacks: it did not register for dumps, and py-spy did not read it)" in rendered
    assert "--- process 13: sleep 1000 ---" in rendered
    (header,) = [line for line in rendered.splitlines() if line.startswith("--- process 12")]
    assert len(header) <= 230 and header.endswith("... ---")


@pytest.mark.skipif(find_py_spy() is None, reason="py-spy is not installed")
def test_what_py_spy_reads_is_kept_in_its_own_words() -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; sys.stdout.write('ready\\n'); sys.stdout.flush(); time.sleep(3600)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        spied = subprocess.run(
            [str(find_py_spy()), "dump", "--pid", str(child.pid)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    if spied.returncode:
        pytest.skip(f"py-spy cannot read a child here: {spied.stderr.strip()}")
    text = f"--- process {child.pid} (parent {os.getpid()}): python -c ... ---\n{spied.stdout}"
    (process,) = dumps.parse(text)
    (thread,) = process.threads
    assert thread.spied and thread.frames[0].function == "<module>"
    rendered = dumps.render([process])
    assert thread.header in rendered and "    <module> (<string>:1)" in rendered
