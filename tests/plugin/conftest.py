"""Fixtures the plugin's tests share."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from snippets import MARK, marked_processes


@pytest.fixture
def marked(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A mark in the environment of the session under test and of every process it starts,
    and a temp directory of its own (short: the watchdog's socket lives in it).

    The test fails if a marked process outlives it (each is killed, by PID) or if a
    session directory is left in the temp directory.
    """
    mark = uuid.uuid4().hex
    temp_dir = Path(tempfile.mkdtemp(prefix="marked-"))
    monkeypatch.setenv(MARK, mark)
    monkeypatch.setenv("TMPDIR", str(temp_dir))
    yield mark
    left = marked_processes(mark)
    # A process killed just now may still be on its way out.
    _, alive = psutil.wait_procs(left, timeout=3)
    for process in alive:
        process.kill()
    psutil.wait_procs(alive, timeout=5)
    session_directories = list(temp_dir.glob("pytest-expire-*"))
    shutil.rmtree(temp_dir, ignore_errors=True)
    assert not alive, f"processes outlived the session: {[p.info for p in alive]}"
    assert not session_directories, f"left in the temp directory: {session_directories}"


@pytest.fixture(params=["serial", "xdist"])
def workers(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """The session under test runs serially (supervised), then with 2 xdist workers:
    the arguments that say which."""
    if request.param == "xdist":
        pytest.importorskip("xdist")
        return ("-n", "2")
    return ()
