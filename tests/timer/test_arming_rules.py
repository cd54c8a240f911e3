"""One set of rules for arming a timer, checked on every path that arms one.

The Unix-socket client arms through ``acquire`` (the client's signal),
``acquire_many`` (a signal per timer) and ``prepare(...).acquire`` (fixed
scopes and signals); the FIFO and queue clients through ``acquire``. The
rules (``pytest_expire.timer._validation``): a negative time releases the
timer, as in torch; NaN or a value that is not a real number is refused; a
signal of 0 or less expires without a kill; a signal that is not an int, or
not below ``NSIG``, is refused; a scope is a str that fits one request.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from processes import wait_until

from pytest_expire.timer import (
    FileTimerClient,
    FileTimerRequest,
    FileTimerServer,
    LocalTimerClient,
    LocalTimerServer,
)
from pytest_expire.timer.unix_socket_timer import (
    MAX_SCOPE_BYTES,
    UnixSocketTimerClient,
    UnixSocketTimerServer,
)

PATHS = ["acquire", "acquire_many", "prepare"]
Arm = Callable[[str, object, object], None]


def arming(path: str, address: str) -> Arm:
    """``arm(scope, expiration_time, signal)`` through one of the socket client's paths.

    The clients live as long as ``arm``: the server drops a process's timers
    when its last connection closes.
    """
    clients: dict[object, UnixSocketTimerClient] = {}

    def client_for(signum: object) -> UnixSocketTimerClient:
        if signum not in clients:
            clients[signum] = UnixSocketTimerClient(address, signal=signum)  # type: ignore[arg-type]
        return clients[signum]

    def arm(scope: str, expiration_time: object, signum: object) -> None:
        if path == "acquire":
            client_for(signum).acquire(scope, expiration_time)  # type: ignore[arg-type]
        elif path == "acquire_many":
            client_for(0).acquire_many([(scope, expiration_time, signum)])  # type: ignore[list-item]
        else:
            prepared = client_for(0).prepare([(scope, signum)])  # type: ignore[list-item]
            prepared.acquire(expiration_time)  # type: ignore[arg-type]

    return arm


class Expiries:
    """The server's ``on_expired``: records ``(pid, scope, signal)`` of each expired timer."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, str, int]] = []

    def __call__(self, pid: int, timers: list[FileTimerRequest]) -> None:
        self.seen += [(pid, timer.scope_id, timer.signal) for timer in timers]

    def scopes(self) -> set[str]:
        return {scope for _, scope, _ in self.seen}


@pytest.fixture(scope="module")
def expiries() -> Expiries:
    return Expiries()


@pytest.fixture(scope="module")
def server(expiries: Expiries) -> Iterator[UnixSocketTimerServer]:
    """One thread server for the module (each test arms scopes of its own)."""
    server = UnixSocketTimerServer(max_interval=0.05, on_expired=expiries)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=PATHS)
def arm(request: pytest.FixtureRequest, server: UnixSocketTimerServer) -> Arm:
    return arming(request.param, server.address)


def scope_of(request: pytest.FixtureRequest) -> str:
    return request.node.name


# ------------------------------------------------------------ the socket pair


def test_a_negative_time_releases_the_timer(
    arm: Arm, expiries: Expiries, request: pytest.FixtureRequest
) -> None:
    scope = scope_of(request)
    arm(scope, time.time() + 0.3, 0)
    arm(scope, -1, 0)
    arm(scope + "-witness", time.time() + 0.3, 0)
    wait_until(lambda: scope + "-witness" in expiries.scopes())
    time.sleep(0.1)
    assert scope not in expiries.scopes()


def test_a_time_beyond_any_float_never_expires(
    arm: Arm, server: UnixSocketTimerServer, request: pytest.FixtureRequest
) -> None:
    scope = scope_of(request)
    arm(scope, 10**400, 0)
    wait_until(lambda: (os.getpid(), scope) in server._timers)
    arm(scope, -1, 0)
    wait_until(lambda: (os.getpid(), scope) not in server._timers)


@pytest.mark.parametrize(
    ("expiration_time", "error"),
    [(math.nan, ValueError), (True, TypeError), ("1", TypeError), (None, TypeError)],
)
def test_a_time_that_is_not_a_real_number_is_refused(
    arm: Arm,
    server: UnixSocketTimerServer,
    request: pytest.FixtureRequest,
    expiration_time: object,
    error: type[Exception],
) -> None:
    scope = scope_of(request)
    arm(scope, time.time() + 60, 0)
    wait_until(lambda: (os.getpid(), scope) in server._timers)
    with pytest.raises(error, match="expiration_time"):
        arm(scope, expiration_time, 0)
    arm(scope, -1, 0)
    wait_until(lambda: (os.getpid(), scope) not in server._timers)


@pytest.mark.parametrize(
    ("signum", "error"),
    [(signal.NSIG, ValueError), (-(2**31) - 1, ValueError), (True, TypeError), ("9", TypeError)],
)
def test_a_signal_that_is_not_a_signal_number_is_refused(
    arm: Arm, request: pytest.FixtureRequest, signum: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match="signal"):
        arm(scope_of(request), time.time() + 60, signum)


@pytest.mark.parametrize(
    ("scope", "error"), [("x" * (MAX_SCOPE_BYTES + 1), ValueError), (7, TypeError)]
)
def test_a_scope_that_is_not_a_str_of_one_request_is_refused(
    arm: Arm, scope: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match="scope_id"):
        arm(scope, time.time() + 60, 0)  # type: ignore[arg-type]


CHILD = """
import os, sys, time
from pytest_expire.timer.unix_socket_timer import UnixSocketTimerClient
address, path, signum, scope = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
deadline = time.time() + 0.2
# Kept: the server drops the timers of a process whose last client closed.
client = UnixSocketTimerClient(address, signal=signum if path == "acquire" else 0)
if path == "acquire":
    client.acquire(scope, deadline)
elif path == "acquire_many":
    client.acquire_many([(scope, deadline, signum)])
else:
    client.prepare([(scope, signum)]).acquire(deadline)
time.sleep(0.8)
print("alive", flush=True)
"""


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("signum", [0, -1, -(2**31)])
def test_a_signal_of_zero_or_less_expires_without_a_kill(
    path: str,
    signum: int,
    server: UnixSocketTimerServer,
    expiries: Expiries,
    request: pytest.FixtureRequest,
) -> None:
    scope = scope_of(request)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD), server.address, path, str(signum), scope],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (result.returncode, result.stdout) == (0, "alive\n"), result.stderr
    assert (scope, signum) in {(expired, seen) for _, expired, seen in expiries.seen}


def test_the_same_signal_kills_on_every_path(server: UnixSocketTimerServer) -> None:
    for path in PATHS:
        result = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(CHILD), server.address, path, "9", path],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert (result.returncode, result.stdout) == (-signal.SIGKILL, ""), path


def test_acquire_many_checks_every_timer_before_sending_any(
    server: UnixSocketTimerServer, request: pytest.FixtureRequest
) -> None:
    scope = scope_of(request)
    client = UnixSocketTimerClient(server.address, signal=0)
    with pytest.raises(ValueError, match="NaN"):
        client.acquire_many([(scope, time.time() + 60, 0), (scope + "-bad", math.nan, 0)])
    client.acquire(scope + "-after", time.time() + 60)
    wait_until(lambda: (os.getpid(), scope + "-after") in server._timers)
    assert (os.getpid(), scope) not in server._timers
    client.release(scope + "-after")


# ------------------------------------------------------- the FIFO and the queue


def test_the_fifo_client_follows_the_same_rules(fifo: str) -> None:
    server = FileTimerServer(fifo, "rules", max_interval=0.05)
    server.start()
    try:
        client = FileTimerClient(fifo, signal=0)
        client.acquire("a", time.time() + 60)
        client.acquire("a", -5)  # released
        client.acquire("b", time.time() + 60)
        for bad, error in [(math.nan, ValueError), (True, TypeError), ("1", TypeError)]:
            with pytest.raises(error, match="expiration_time"):
                client.acquire("a", bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="finite"):
            client.acquire("a", 10**400)  # JSON has no infinity
        for signum, error in [(signal.NSIG, ValueError), (True, TypeError)]:
            with pytest.raises(error, match="signal"):
                FileTimerClient(fifo, signal=signum)
        server.run_once()
        assert (os.getpid(), "b") in server._timers
        assert (os.getpid(), "a") not in server._timers
    finally:
        server.stop()


def queued_worker(mp_queue: multiprocessing.Queue[object], done: Path) -> None:
    client = LocalTimerClient(mp_queue)
    client.acquire("a", time.time() + 0.3)
    client.acquire("a", -5)  # released: the worker lives on
    done.write_text("released")
    time.sleep(0.8)


def test_the_queue_client_follows_the_same_rules(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    mp_queue: multiprocessing.Queue[object] = ctx.Queue()
    client = LocalTimerClient(mp_queue)
    for bad, error in [(math.nan, ValueError), (True, TypeError), ("1", TypeError)]:
        with pytest.raises(error, match="expiration_time"):
            client.acquire("a", bad)  # type: ignore[arg-type]
    assert mp_queue.empty()
    server = LocalTimerServer(mp_queue, max_interval=0.05)
    server.start()
    try:
        done = tmp_path / "done"
        worker = ctx.Process(target=queued_worker, args=(mp_queue, done))
        worker.start()
        worker.join(20)
        assert (worker.exitcode, done.read_text()) == (0, "released")
    finally:
        server.stop()
