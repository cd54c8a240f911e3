"""The queue pair with real worker processes, in thread and in process mode."""

from __future__ import annotations

import logging
import math
import multiprocessing
import pathlib
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from multiprocessing.context import SpawnContext
from typing import Any

import psutil
import pytest
from processes import join_or_kill, start_with_pid, wait_until

from pytest_expire import timer

CTX: SpawnContext = multiprocessing.get_context("spawn")
FEEDER_TIME = 0.1


def hang_in(queue: Any, after: float, how: str) -> None:
    import hangs

    timer.configure(timer.LocalTimerClient(queue))
    with timer.expires(after=after):
        # A multiprocessing.Queue sends from a feeder thread: a worker that
        # takes the GIL for good at once would never deliver its request.
        time.sleep(FEEDER_TIME)
        getattr(hangs, how)()


def arm_and_exit(queue: Any) -> None:
    timer.LocalTimerClient(queue).acquire("left", time.time() + 60)


def finish_in(queue: Any, after: float, work: float) -> None:
    timer.configure(timer.LocalTimerClient(queue))
    with timer.expires(after=after, scope="outer"), timer.expires(after=after, scope="inner"):
        time.sleep(work)


@pytest.fixture
def queue() -> Any:
    return CTX.Queue()


@pytest.fixture(params=["thread", "process"])
def server(request: pytest.FixtureRequest, queue: Any) -> Iterator[timer.LocalTimerServer]:
    # The default max_interval (60 s): expiry must not wait for it.
    server = timer.LocalTimerServer(queue)
    server.start(process=request.param == "process", mp_context=CTX)
    try:
        yield server
    finally:
        server.stop()


def run(target: Any, *args: Any) -> multiprocessing.process.BaseProcess:
    process = CTX.Process(target=target, args=args)
    process.start()
    return process


@pytest.mark.parametrize("how", ["sleep_forever", "hold_the_gil_forever"])
def test_a_hung_worker_is_killed_at_its_deadline(
    server: timer.LocalTimerServer, queue: Any, how: str
) -> None:
    worker = run(hang_in, queue, 0.3, how)
    assert join_or_kill(worker, timeout=10) == -signal.SIGKILL


def test_a_worker_that_finishes_in_time_survives(
    server: timer.LocalTimerServer, queue: Any
) -> None:
    worker = run(finish_in, queue, 0.5, 0.05)
    assert join_or_kill(worker, timeout=10) == 0
    # Its released timers never fire later.
    time.sleep(0.7)
    assert server.is_running


def test_malformed_requests_are_dropped_and_the_good_one_is_honoured(
    queue: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = timer.LocalTimerServer(queue)
    server.start()
    try:
        for junk in [
            "garbage",
            timer.TimerRequest([1], "s", 1.0),
            timer.TimerRequest(2, None, 1.0),  # type: ignore[arg-type]
            timer.TimerRequest(2, "s", float("nan")),
            timer.TimerRequest(2, "s", True),
            timer.TimerRequest(2, "s", "soon"),  # type: ignore[arg-type]
            timer.TimerRequest(2, "s", 10**400),
        ]:
            queue.put(junk)
        worker = run(hang_in, queue, 0.2, "sleep_forever")
        assert join_or_kill(worker, timeout=10) == -signal.SIGKILL
    finally:
        server.stop()
    assert caplog.text.count("dropping malformed timer request") == 7


def test_stop_is_prompt_and_the_server_restarts(queue: Any) -> None:
    server = timer.LocalTimerServer(queue, max_interval=60)
    for mode in (False, True, False):
        server.start(process=mode, mp_context=CTX)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 5
        assert not server.is_running
    server.start()
    try:
        worker = run(hang_in, queue, 0.2, "sleep_forever")
        assert join_or_kill(worker, timeout=10) == -signal.SIGKILL
    finally:
        server.stop()


def test_a_failed_process_start_is_reported(queue: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    server = timer.LocalTimerServer(queue)

    def broken_prepare() -> None:
        raise OSError("cannot listen")

    monkeypatch.setattr(server, "_prepare", broken_prepare)
    with pytest.raises(RuntimeError, match="failed to start: OSError: cannot listen"):
        server.start(process=True, mp_context="fork")
    assert not server.is_running


WEDGED_HOST = textwrap.dedent(
    """
    import multiprocessing, sys, time
    sys.path.insert(0, sys.argv[1])
    import hangs
    from pytest_expire import timer

    if __name__ == "__main__":
        queue = multiprocessing.get_context("spawn").Queue()
        server = timer.LocalTimerServer(queue)
        server.start(process=True, mp_context="spawn")
        print(server.watchdog_pid, flush=True)
        timer.configure(timer.LocalTimerClient(queue))
        with timer.expires(after=float(sys.argv[2])):
            time.sleep(float(sys.argv[3]))  # let the queue's feeder thread send
            hangs.hold_the_gil_forever()
    """
)


def start_host(deadline: float) -> tuple[subprocess.Popen[str], int]:
    """A process that starts a watchdog process and then wedges holding the GIL."""
    here = str(pathlib.Path(__file__).parent)
    host = subprocess.Popen(
        [sys.executable, "-c", WEDGED_HOST, here, str(deadline), str(FEEDER_TIME)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert host.stdout is not None
    with host.stdout:
        return host, int(host.stdout.readline())


def test_a_watchdog_process_kills_its_own_host_wedged_in_c_code() -> None:
    host, watchdog_pid = start_host(0.5)
    # Taken now: once its host is gone, the watchdog may be gone before a look-up.
    watchdog = psutil.Process(watchdog_pid)
    try:
        assert host.wait(timeout=15) == -signal.SIGKILL
        # With its host gone, the watchdog process ends too.
        watchdog.wait(timeout=10)
    finally:
        host.kill()
        host.wait()


def test_a_watchdog_process_dies_with_its_host() -> None:
    host, watchdog_pid = start_host(3600)
    watchdog = psutil.Process(watchdog_pid)
    try:
        host.kill()
        host.wait()
        watchdog.wait(timeout=10)
    finally:
        if watchdog.is_running():
            watchdog.kill()


def test_reaping_is_logged(queue: Any, caplog: pytest.LogCaptureFixture) -> None:
    server = timer.LocalTimerServer(queue)
    server.start()
    try:
        with caplog.at_level(logging.INFO):
            worker = run(hang_in, queue, 0.2, "sleep_forever")
            assert join_or_kill(worker, timeout=10) == -signal.SIGKILL
    finally:
        server.stop()
    assert "reaping worker" in caplog.text
    assert f"sent signal 9 to worker {worker.pid}" in caplog.text


def test_a_really_reused_pid_does_not_inherit_the_old_processes_timers(queue: Any) -> None:
    server = timer.LocalTimerServer(queue)
    server.start()

    def scopes(pid: int | None) -> set[str]:
        return {t.scope_id for t in server.get_expired_timers(math.inf).get(pid, [])}

    def discard(process: multiprocessing.process.BaseProcess) -> None:
        process.kill()
        process.join()

    try:
        old = run(arm_and_exit, queue)
        wait_until(lambda: scopes(old.pid) == {"left"})
        assert join_or_kill(old, timeout=10) == 0
        new = start_with_pid(old.pid, lambda: run(finish_in, queue, 0.5, 60), discard)
        wait_until(lambda: scopes(new.pid) == {"outer", "inner"})
        assert join_or_kill(new, timeout=10) == -signal.SIGKILL  # its own timer, signalled to it
    finally:
        server.stop()
