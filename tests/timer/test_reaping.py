"""Reap and retry, the same on the three built-in servers, with real workers and signals.

A reap that fails (``_reap_worker`` returns False) is tried again after the
retry interval, not at every round, however busy the clients keep the
server; then the worker is killed.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from processes import join_or_kill

from pytest_expire.timer import (
    FileTimerClient,
    FileTimerServer,
    LocalTimerClient,
    LocalTimerServer,
    TimerRequest,
)
from pytest_expire.timer._reaping import REAP_RETRY_INTERVAL
from pytest_expire.timer.unix_socket_timer import UnixSocketTimerClient, UnixSocketTimerServer

CTX = multiprocessing.get_context("spawn")
# The servers wait up to this long: only a deadline, a request or a retry wakes them.
MAX_INTERVAL = 5.0


class FailsOnce:
    """A ``_reap_worker`` that fails its first call and records when it was called."""

    def __init__(self, reap: Callable[..., bool]) -> None:
        self.reap = reap
        self.calls: list[float] = []

    def __call__(self, *args: Any) -> bool:
        self.calls.append(time.monotonic())
        return len(self.calls) > 1 and self.reap(*args)


def hang_on_a_queue(mp_queue: multiprocessing.Queue[Any]) -> None:
    LocalTimerClient(mp_queue).acquire("hang", time.time() + 0.2)
    time.sleep(30)


FILE_WORKER = """
import sys, time
from pytest_expire.timer import FileTimerClient
FileTimerClient(sys.argv[1]).acquire("hang", time.time() + 0.2)
time.sleep(30)
"""
SOCKET_WORKER = """
import sys, time
from pytest_expire.timer.unix_socket_timer import UnixSocketTimerClient
client = UnixSocketTimerClient(sys.argv[1])
client.acquire("hang", time.time() + 0.2)
time.sleep(30)
"""


@contextlib.contextmanager
def kept_busy(request: Callable[[], None]) -> Iterator[None]:
    """Send the server a request every 20 ms, each waking it for a round, until the block ends."""
    stop = threading.Event()

    def keep_busy() -> None:
        while not stop.wait(0.02):
            request()

    thread = threading.Thread(target=keep_busy)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def assert_retried_once_after_the_interval(reap: FailsOnce, exitcode: int | None) -> None:
    assert exitcode == -signal.SIGKILL
    assert len(reap.calls) == 2
    assert reap.calls[1] - reap.calls[0] >= 0.9 * REAP_RETRY_INTERVAL


def test_the_queue_server() -> None:
    mp_queue: multiprocessing.Queue[Any] = CTX.Queue()
    server = LocalTimerServer(mp_queue, max_interval=MAX_INTERVAL)
    reap = FailsOnce(server._reap_worker)
    server._reap_worker = reap  # type: ignore[method-assign]
    server.start()
    worker = CTX.Process(target=hang_on_a_queue, args=(mp_queue,))
    try:
        worker.start()
        # Requests of a worker that does not exist: no reap of theirs is owed.
        with kept_busy(lambda: mp_queue.put(TimerRequest(2**22 + 1, "busy", time.time() + 60))):
            exitcode = join_or_kill(worker, 10)
    finally:
        server.stop()
    assert_retried_once_after_the_interval(reap, exitcode)


def test_the_fifo_server(fifo: str) -> None:
    server = FileTimerServer(fifo, "reaping", max_interval=MAX_INTERVAL)
    reap = FailsOnce(server._reap_worker)
    server._reap_worker = reap  # type: ignore[method-assign]
    server.start()
    worker = subprocess.Popen([sys.executable, "-c", textwrap.dedent(FILE_WORKER), fifo])
    try:
        client = FileTimerClient(fifo, signal=0)
        with kept_busy(lambda: client.acquire("busy", time.time() + 60)):
            exitcode = worker.wait(10)
    finally:
        worker.kill()
        worker.wait()
        server.stop()
    assert_retried_once_after_the_interval(reap, exitcode)


def test_the_socket_server() -> None:
    server = UnixSocketTimerServer(max_interval=MAX_INTERVAL)
    reap = FailsOnce(server._reap_worker)
    server._reap_worker = reap  # type: ignore[method-assign]
    server.start()
    address = server.address
    worker = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SOCKET_WORKER), address])
    try:
        client = UnixSocketTimerClient(address, signal=0)
        # Timers that expire at once and ask for no signal: each wakes the server.
        with kept_busy(lambda: client.acquire("busy", time.time())):
            exitcode = worker.wait(10)
    finally:
        worker.kill()
        worker.wait()
        server.stop()
    assert_retried_once_after_the_interval(reap, exitcode)
