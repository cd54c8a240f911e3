"""The watchdog's side of a deadline, driven directly: real processes, a real watchdog."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from pytest_expire.signals import (
    DUMP_SIGNAL,
    INTERRUPT_SIGNAL,
    handles,
    interrupt_main_thread,
    name,
)
from pytest_expire.verdict import Tokens, VerdictPage
from pytest_expire.watchdog import SessionWatchdog


@pytest.fixture
def watchdog() -> Iterator[SessionWatchdog]:
    session = SessionWatchdog(grace=0.2)
    try:
        session.wait_ready()
        yield session
    finally:
        session.stop()


def test_a_process_that_reset_a_handler_is_not_taken_for_handling_it() -> None:
    probe = (
        "import faulthandler, signal, sys\n"
        f"faulthandler.register({int(DUMP_SIGNAL)})\n"
        f"signal.signal({int(DUMP_SIGNAL)}, signal.SIG_DFL)\n"
        f"signal.signal({int(INTERRUPT_SIGNAL)}, lambda *_: None)\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", probe], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == b"ready\n"
            assert handles(child.pid, INTERRUPT_SIGNAL)
            assert not handles(child.pid, DUMP_SIGNAL)
        finally:
            child.kill()
    assert not handles(child.pid, INTERRUPT_SIGNAL)  # gone: handles nothing


def test_every_signal_has_a_name() -> None:
    assert name(signal.SIGKILL) == "SIGKILL"
    assert name(signal.SIGRTMIN + 6) == "SIGRTMIN+6"
    assert name(200) == "signal 200"


def test_an_interrupt_wakes_the_main_thread_asleep_in_c_beside_other_threads() -> None:
    # The supervisor's SIGINT (forwarded, or at the session's deadline) is for
    # the main thread, where Python raises KeyboardInterrupt; a thread that
    # waits in accept() must not take it.
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import socket, threading, time
                listener = socket.socket()
                listener.bind(("127.0.0.1", 0))
                listener.listen()
                threading.Thread(target=listener.accept, daemon=True).start()
                try:
                    print("ready", flush=True)
                    time.sleep(60)
                except KeyboardInterrupt:
                    print("interrupted", flush=True)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        interrupt_main_thread(child.pid)
        assert child.communicate(timeout=10)[0] == "interrupted\n"
    finally:
        child.kill()
        child.wait()


def test_tokens_never_repeat_the_last_one_or_the_expired_one(tmp_path: Path) -> None:
    page = VerdictPage(tmp_path / "page.bin", create=True)
    tokens = Tokens(page)
    first = tokens.new(0.0)
    page.mark_expired(first + 5)
    # Armed in the same clock tick, or landing on the token the watchdog
    # last found expired: each is a token of its own all the same.
    assert len({first, *(tokens.new(0.0) for _ in range(100))}) == 101
    assert all(tokens.new(5.0) != first + 5 for _ in range(100))
    page.close()


ROGUE = """
import os, subprocess, sys, time
from pathlib import Path
from pytest_expire.client import new_link

link = new_link({address!r}, Path({directory!r}), revive=lambda: None)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
Path({report!r}).write_text(f"{{os.getpid()}} {{child.pid}}")
link.arm("not a test of this session", 0.1)
time.sleep(60)
"""


def test_a_process_outside_the_session_is_never_signalled(
    watchdog: SessionWatchdog, tmp_path: Path
) -> None:
    # A process of the same user that is not a descendant of the session
    # connects on its own and arms a deadline with a verdict page: the
    # watchdog neither dumps, interrupts nor kills it, nor anything it started.
    report = tmp_path / "pids"
    script = ROGUE.format(
        address=watchdog.address, directory=str(watchdog.directory), report=str(report)
    )
    # setsid -f: the rogue's parent exits at once, so it descends from nobody here.
    subprocess.run(["setsid", "-f", sys.executable, "-c", textwrap.dedent(script)], check=True)
    deadline = time.monotonic() + 10
    while not report.exists() or not report.read_text():
        assert time.monotonic() < deadline, "the rogue process never started"
        time.sleep(0.05)
    rogue, child = (psutil.Process(int(pid)) for pid in report.read_text().split())
    try:
        time.sleep(1.0)  # its deadline, the grace and more
        assert rogue.is_running() and rogue.status() != psutil.STATUS_ZOMBIE
        assert child.is_running() and child.status() != psutil.STATUS_ZOMBIE
        assert not list(watchdog.directory.glob(f"interrupted-{rogue.pid}.txt"))
    finally:
        for process in (child, rogue):
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
        psutil.wait_procs([child, rogue], timeout=5)
