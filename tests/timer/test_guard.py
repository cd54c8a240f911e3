"""Who a server may signal: real processes, real signals."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest
from processes import start_with_pid

from pytest_expire.timer._guard import ReapGuard

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def start_sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(SLEEPER)


def discard(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait()


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    process = start_sleeper()
    try:
        yield process
    finally:
        discard(process)


@pytest.fixture
def orphan() -> Iterator[int]:
    """A process that is not our descendant: its parent exited, so it was reparented."""
    spawner = (
        "import subprocess, sys; "
        f"p = subprocess.Popen({SLEEPER!r}, "
        "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); print(p.pid)"
    )
    output = subprocess.run([sys.executable, "-c", spawner], capture_output=True, check=True)
    pid = int(output.stdout)
    try:
        assert os.getpid() not in [parent.pid for parent in psutil.Process(pid).parents()]
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def is_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_signals_a_descendant_that_armed_a_timer(child: subprocess.Popen[bytes]) -> None:
    guard = ReapGuard()
    guard.remember(child.pid)
    assert guard.send_signal(child.pid, signal.SIGTERM)
    assert child.wait(timeout=5) == -signal.SIGTERM


@pytest.mark.parametrize("pid", [0, 1, -1, -os.getpgid(0), True, "123", None, 2.0])
def test_never_signals_init_groups_or_non_pids(
    pid: object, caplog: pytest.LogCaptureFixture
) -> None:
    guard = ReapGuard()
    guard.remember(pid)
    assert guard.send_signal(pid, signal.SIGKILL)
    assert "refusing to signal" in caplog.text


def test_never_signals_itself(caplog: pytest.LogCaptureFixture) -> None:
    guard = ReapGuard()
    guard.remember(os.getpid())
    assert guard.send_signal(os.getpid(), signal.SIGKILL)
    assert "refusing to signal" in caplog.text


def test_refuses_a_process_that_is_not_a_descendant(
    orphan: int, caplog: pytest.LogCaptureFixture
) -> None:
    guard = ReapGuard()
    guard.remember(orphan)
    assert guard.send_signal(orphan, signal.SIGKILL)
    assert is_alive(orphan)
    assert f"refusing to signal {orphan}: not a descendant" in caplog.text


def test_signals_an_admitted_process(orphan: int) -> None:
    guard = ReapGuard()
    guard.admit(orphan)
    guard.remember(orphan)
    assert guard.send_signal(orphan, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while is_alive(orphan) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not is_alive(orphan)


def pretend_the_pid_was_reused(guard: ReapGuard, pid: int) -> None:
    """Make ``pid`` look reused to the guard: its worker exited, the PID names a live process.

    Forcing the kernel to hand a PID out again takes cycling through all of
    pid_max. Instead, the guard's pidfd of the worker is swapped for the pidfd
    of a process that has exited, while ``pid`` names a live process: exactly
    what a reused PID looks like to the guard.
    """
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended_pidfd = os.pidfd_open(ended.pid)
    ended.wait()
    guard.forget(pid)
    guard._watch(pid, ended_pidfd)


def test_refuses_a_pid_that_now_names_another_process(
    child: subprocess.Popen[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    guard = ReapGuard()
    guard.remember(child.pid)
    pretend_the_pid_was_reused(guard, child.pid)
    assert guard.send_signal(child.pid, signal.SIGKILL)
    assert child.poll() is None
    assert "now names another process" in caplog.text
    assert child.pid not in guard._pidfds


def test_a_reused_pid_is_identified_afresh_at_its_next_timer(
    child: subprocess.Popen[bytes],
) -> None:
    guard = ReapGuard()
    guard.remember(child.pid)
    pretend_the_pid_was_reused(guard, child.pid)
    guard.remember(child.pid)  # the new process arms a timer
    assert guard.send_signal(child.pid, signal.SIGTERM)
    assert child.wait(timeout=5) == -signal.SIGTERM


def test_a_worker_that_is_gone_counts_as_reaped(
    child: subprocess.Popen[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    guard = ReapGuard()
    guard.remember(child.pid)
    child.kill()
    child.wait()
    with caplog.at_level(logging.INFO):
        assert guard.send_signal(child.pid, signal.SIGKILL)
    assert "is gone" in caplog.text


def test_a_pid_that_never_existed_is_not_signalled(caplog: pytest.LogCaptureFixture) -> None:
    guard = ReapGuard()
    unused = max(psutil.pids()) + 1
    guard.remember(unused)
    with caplog.at_level(logging.INFO):
        assert guard.send_signal(unused, signal.SIGKILL)
    assert "was gone when its timer was registered" in caplog.text


def test_pidfds_of_ended_workers_are_closed(child: subprocess.Popen[bytes]) -> None:
    guard = ReapGuard()
    ended = [subprocess.Popen([sys.executable, "-c", "pass"]) for _ in range(2)]
    for process in ended:
        guard.remember(process.pid)
        process.wait()
    guard.remember(child.pid)
    assert set(guard._pidfds) == {child.pid}
    guard.close()
    assert not guard._pidfds


def test_exits_are_noticed_once_and_the_living_stay_known(
    child: subprocess.Popen[bytes],
) -> None:
    guard = ReapGuard()
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    guard.remember(ended.pid)
    guard.remember(child.pid)
    ended.wait()
    assert guard.notice_exits() == [ended.pid]
    assert guard.notice_exits() == []
    assert guard.send_signal(child.pid, signal.SIGTERM)
    assert child.wait(timeout=5) == -signal.SIGTERM


def test_a_really_reused_pid_is_signalled_only_once_the_new_process_armed_a_timer(
    child: subprocess.Popen[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    guard = ReapGuard()
    guard.remember(child.pid)
    discard(child)
    reuser = start_with_pid(child.pid, start_sleeper, discard)
    try:
        # The old process's timer expires: the new process is not it.
        assert guard.send_signal(reuser.pid, signal.SIGTERM)
        assert reuser.poll() is None
        assert "now names another process" in caplog.text
        guard.remember(reuser.pid)  # the new process arms a timer
        assert guard.send_signal(reuser.pid, signal.SIGTERM)
        assert reuser.wait(timeout=5) == -signal.SIGTERM
    finally:
        discard(reuser)


def test_a_batch_identifies_a_really_reused_pid_afresh(child: subprocess.Popen[bytes]) -> None:
    guard = ReapGuard()
    guard.remember(child.pid)
    discard(child)
    reuser = start_with_pid(child.pid, start_sleeper, discard)
    try:
        # A server read a request of the new process: exits first, then identities.
        assert guard.notice_exits() == [reuser.pid]
        guard.identify(reuser.pid)
        assert guard.send_signal(reuser.pid, signal.SIGTERM)
        assert reuser.wait(timeout=5) == -signal.SIGTERM
    finally:
        discard(reuser)


def test_a_forked_copy_of_the_guard_leaves_the_parents_alone(
    child: subprocess.Popen[bytes],
) -> None:
    guard = ReapGuard()
    guard.remember(child.pid)
    forked = os.fork()
    if forked == 0:  # pragma: no cover - the child
        try:
            guard.notice_exits()
            guard.forget(child.pid)
            guard.remember(os.getppid())
            guard.close()
        finally:
            os._exit(0)
    assert os.waitstatus_to_exitcode(os.waitpid(forked, 0)[1]) == 0
    discard(child)
    assert guard.notice_exits() == [child.pid]
