"""torch's public behaviour, and the internals its tests (and code written for torch) use.

Each test follows one of pytorch's ``test/distributed/elastic/timer`` tests,
with real processes and real queues, or one of our deliberate refusals
(docs/timer.md): process groups and negative PIDs are never signalled.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from processes import join_or_kill, wait_until

from pytest_expire import timer
from pytest_expire.timer import api
from pytest_expire.timer.api import TimerRequest
from pytest_expire.timer.local_timer import MultiprocessingRequestQueue

CTX = multiprocessing.get_context("spawn")


@pytest.fixture(autouse=True)
def no_configured_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "_default_client", None)


def enqueue_on_interval(
    mp_queue: multiprocessing.Queue[Any], n: int, interval: float, started: Any
) -> None:
    started.release()
    for i in range(n):
        mp_queue.put(TimerRequest(i, "scope", 0))
        time.sleep(interval)


@pytest.fixture
def producer() -> Iterator[Any]:
    """Starts a process that puts ``n`` requests, one per ``interval``; joined afterwards."""
    started: list[multiprocessing.process.BaseProcess] = []

    def start(mp_queue: multiprocessing.Queue[Any], n: int, interval: float) -> None:
        ready = CTX.Semaphore(0)
        process = CTX.Process(target=enqueue_on_interval, args=(mp_queue, n, interval, ready))
        process.start()
        started.append(process)
        ready.acquire()

    yield start
    for process in started:
        join_or_kill(process, 10)


# ------------------------------------------------ MultiprocessingRequestQueue.get


def test_get_waits_its_timeout_for_nothing_and_returns_what_came() -> None:
    mp_queue: multiprocessing.Queue[Any] = CTX.Queue()
    requests = MultiprocessingRequestQueue(mp_queue)
    start = time.monotonic()
    assert requests.get(1, timeout=0.1) == []
    assert time.monotonic() - start >= 0.09
    mp_queue.put(TimerRequest(1, "scope", 0))
    assert requests.get(2, timeout=0.1) == [TimerRequest(1, "scope", 0)]


def test_get_collects_size_requests_from_a_slow_producer(producer: Any) -> None:
    mp_queue: multiprocessing.Queue[Any] = CTX.Queue()
    n, interval = 6, 0.1
    producer(mp_queue, n, interval)
    timeout = interval * (n + 1)
    start = time.monotonic()
    requests = MultiprocessingRequestQueue(mp_queue).get(n, timeout=timeout)
    assert len(requests) == n  # not only the first: torch's test_get_size
    assert time.monotonic() - start <= timeout + interval


def test_get_returns_what_came_in_its_timeout_in_all(producer: Any) -> None:
    mp_queue: multiprocessing.Queue[Any] = CTX.Queue()
    n, interval = 10, 0.1
    producer(mp_queue, n, interval)
    start = time.monotonic()
    requests = MultiprocessingRequestQueue(mp_queue).get(n, timeout=interval * n / 2)
    elapsed = time.monotonic() - start
    assert 1 < len(requests) < n  # torch's test_get_less_than_size
    assert interval * n / 2 - 0.01 <= elapsed <= interval * n / 2 + interval


def test_the_servers_own_read_returns_at_the_first_request(producer: Any) -> None:
    mp_queue: multiprocessing.Queue[Any] = CTX.Queue()
    producer(mp_queue, 3, 1.0)
    start = time.monotonic()
    requests = MultiprocessingRequestQueue(mp_queue).get_arrived(3, timeout=10)
    assert len(requests) == 1
    assert time.monotonic() - start < 0.9


# ----------------------------------------------------------- LocalTimerServer


def hang_in_nested_timers(n: int, mp_queue: multiprocessing.Queue[Any] | None) -> None:
    if mp_queue is not None:
        timer.configure(timer.LocalTimerClient(mp_queue))
    if n > 0:
        with timer.expires(after=0.1):
            hang_in_nested_timers(n - 1, None)
            time.sleep(0.2)


def test_start_twice_then_nested_default_scopes_share_one_timer() -> None:
    # torch's test_get_timer_recursive: its setUp starts the server, the test again.
    mp_queue: multiprocessing.Queue[Any] = CTX.Queue()
    server = timer.LocalTimerServer(mp_queue, max_interval=0.01)
    server.start()
    server.start()
    try:
        timer.configure(timer.LocalTimerClient(mp_queue))

        def func(n: int) -> None:
            if n > 0:
                with timer.expires(after=0.1):
                    func(n - 1)
                    time.sleep(0.05)

        func(4)  # each level re-arms the one timer of its line: nothing expires
        worker = CTX.Process(target=hang_in_nested_timers, args=(2, mp_queue))
        worker.start()
        assert join_or_kill(worker, 10) == -signal.SIGKILL
    finally:
        server.stop()
    assert [t for t in threading.enumerate() if t.name.startswith("LocalTimerServer")] == []


def test_one_watchdog_round_by_hand_and_the_timers_by_key() -> None:
    # torch's test_valid_timers and test_acquire_release, with live PIDs.
    mp_queue: multiprocessing.Queue[Any] = CTX.Queue()
    server = timer.LocalTimerServer(mp_queue, max_interval=0.01)
    me, parent = os.getpid(), os.getppid()
    later = time.time() + 60
    for request in [
        TimerRequest(me, "test1", later),
        TimerRequest(me, "test2", later),
        TimerRequest(parent, "test1", later),
        TimerRequest(parent, "test2", later),
        TimerRequest(me, "test2", -1),
        TimerRequest(me, "never armed", -1),
    ]:
        mp_queue.put(request)
    server._run_watchdog()
    assert len(server._timers) == 3
    assert (me, "test1") in server._timers
    assert (me, "test2") not in server._timers
    assert (parent, "test1") in server._timers and (parent, "test2") in server._timers


GROUP_LEADER = "import time; print('ready', flush=True); time.sleep(60)"


@pytest.fixture
def group_leader(procs: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    """A process leading a process group of its own, as a negative PID would name it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", GROUP_LEADER], stdout=subprocess.PIPE, start_new_session=True
    )
    procs.append(proc)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


def test_a_negative_worker_id_is_never_signalled(
    group_leader: subprocess.Popen[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    # torch's test_expired_timers signals -3 (a process group) with os.kill.
    mp_queue: multiprocessing.Queue[Any] = CTX.Queue()
    server = timer.LocalTimerServer(mp_queue, max_interval=0.01)
    mp_queue.put(TimerRequest(-group_leader.pid, "test1", time.time() - 60))
    server._run_watchdog()
    assert len(server._timers) == 0  # counted as reaped: retrying would not change it
    time.sleep(0.1)
    assert group_leader.poll() is None
    assert "refusing to signal" in caplog.text


# ------------------------------------------------------------ FileTimerServer

NESTED_CLIENT = """
import sys, time
from pytest_expire import timer
timer.configure(timer.FileTimerClient(sys.argv[1]))
def func(n):
    if n > 0:
        with timer.expires(after=100):
            func(n - 1)
            time.sleep(0.01)
func(int(sys.argv[2]))
"""


def test_run_once_handles_every_request_and_counts_them(fifo: str) -> None:
    # torch's test_multiple_clients_interaction.
    server = timer.FileTimerServer(fifo, "test", max_interval=0.01)
    server.start()
    try:
        clients, levels = 4, 5
        for proc in [
            subprocess.Popen([sys.executable, "-c", NESTED_CLIENT, fifo, str(levels)])
            for _ in range(clients)
        ]:
            assert proc.wait(30) == 0
        server.run_once()
        assert server._request_count == 2 * clients * levels
        assert len(server._timers) == 0
    finally:
        server.stop()


def test_run_watchdog_is_called_once_a_round(fifo: str) -> None:
    # torch's test_watchdog_call_count wraps it to count rounds.
    server = timer.FileTimerServer(fifo, "test", max_interval=0.01)
    rounds = []
    run_watchdog = server._run_watchdog

    def counted(*args: Any, **kwargs: Any) -> None:
        rounds.append(time.monotonic())
        run_watchdog(*args, **kwargs)

    server._run_watchdog = counted  # type: ignore[method-assign]
    server.start()
    try:
        timer.FileTimerClient(fifo).acquire("test0", time.time() + 60)
        time.sleep(0.1)
    finally:
        server.stop()
    # An idle round ends at max_interval: some ten rounds, never a busy loop.
    assert 2 <= len(rounds) <= 15


def test_a_negative_pid_on_the_fifo_is_dropped_unsignalled(
    fifo: str, group_leader: subprocess.Popen[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    server = timer.FileTimerServer(fifo, "test", max_interval=0.01)
    server.start()
    try:
        request = timer.FileTimerRequest(
            -group_leader.pid, "test1", time.time() - 60, signal.SIGKILL
        )
        timer.FileTimerClient(fifo)._send_request(request)
        wait_until(lambda: "dropping malformed timer request" in caplog.text)
        server.run_once()
        assert len(server._timers) == 0
    finally:
        server.stop()
    time.sleep(0.1)
    assert group_leader.poll() is None


def test_expiry_reaches_the_debug_info_hook_and_the_reap_names_torchs_arguments(
    fifo: str, procs: list[subprocess.Popen[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="pytest_expire.timer.debug_info_logging")
    server = timer.FileTimerServer(fifo, "run-7", max_interval=0.01)
    reaps: list[tuple[int, int]] = []
    reap_worker = server._reap_worker

    def recorded(worker_pid: int, signal: int) -> bool:
        reaps.append((worker_pid, signal))
        return reap_worker(worker_pid, signal)

    server._reap_worker = recorded  # type: ignore[method-assign]
    server.start()
    try:
        code = textwrap.dedent(
            """
            import sys, time
            from pytest_expire import timer
            client = timer.FileTimerClient(sys.argv[1])
            client.acquire("hang", time.time() + 0.1)
            time.sleep(30)
            """
        )
        worker = subprocess.Popen([sys.executable, "-c", code, fifo])
        procs.append(worker)
        assert worker.wait(10) == -signal.SIGKILL
    finally:
        server.stop()
    assert reaps == [(worker.pid, signal.SIGKILL)]
    assert "Timers expired for run:[run-7]" in caplog.text
