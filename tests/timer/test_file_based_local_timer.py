"""The named-pipe pair: FileTimerRequest, FileTimerClient, FileTimerServer.

Workers are real processes (``python -c``) that arm timers through the real
client; the server signals them for real. Deadlines are fractions of a second
and every test waits on an event (a line from the worker, its exit, a log
record) rather than sleeping for a fixed time, except where the point is that
nothing happens within a deadline.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import multiprocessing
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from processes import read_line, start_with_pid, wait_until

from pytest_expire.timer import api
from pytest_expire.timer import file_based_local_timer as fbt
from pytest_expire.timer.file_based_local_timer import (
    FileTimerClient,
    FileTimerRequest,
    FileTimerServer,
    parse_request,
)

# A worker: arms the timer "work" for AFTER seconds through the client, says
# "armed", works WORK seconds, says "done".
WORKER = r"""
import sys, time
from pytest_expire.timer import api
from pytest_expire.timer.file_based_local_timer import FileTimerClient
path, after, work, signum = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
client = FileTimerClient(path, signal=signum)
with api.expires(after=after, scope="work", client=client):
    print("armed", flush=True)
    time.sleep(work)
print("done", flush=True)
"""

# Arms a timer and exits without releasing it.
EXIT_ARMED = r"""
import os, sys, time
from pytest_expire.timer.file_based_local_timer import FileTimerClient
FileTimerClient(sys.argv[1]).acquire("left", time.time() + float(sys.argv[2]))
print("armed", flush=True)
"""

# Starts WORKER as a grandchild of the test process, prints its PID and exits:
# the grandchild is orphaned (reparented to init) and no longer descends from
# the test process.
ORPHANER = r"""
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-c", sys.argv[1], *sys.argv[2:]])
print(pid, flush=True)
os._exit(0)
"""

# A client used before, in and after a fork: the child's timers are its own.
FORKER = r"""
import os, sys, time
from pytest_expire.timer.file_based_local_timer import FileTimerClient
client = FileTimerClient(sys.argv[1], signal=0)
client.acquire("before-fork", time.time() + 60)
pid = os.fork()
if pid == 0:
    client.acquire("in-child", time.time() + 60)
    os._exit(0)
_, status = os.waitpid(pid, 0)
client.acquire("after-fork", time.time() + 60)
print(pid, os.waitstatus_to_exitcode(status), flush=True)
"""


class Events:
    """A ``log_event`` that records the events of a server in this process."""

    def __init__(self) -> None:
        self.events: list[tuple[str, FileTimerRequest | None]] = []
        self._cond = threading.Condition()

    def __call__(self, name: str, request: FileTimerRequest | None) -> None:
        with self._cond:
            self.events.append((name, request))
            self._cond.notify_all()

    def names(self) -> list[str]:
        with self._cond:
            return [name for name, _ in self.events]

    def wait_for(self, name: str, timeout: float = 5.0) -> FileTimerRequest | None:
        with self._cond:
            found = self._cond.wait_for(
                lambda: any(n == name for n, _ in self.events), timeout=timeout
            )
            assert found, f"no {name!r} event within {timeout} s: {self.names()}"
            return next(request for n, request in self.events if n == name)


class QueueEvents:
    """A ``log_event`` that works from a watchdog process: events go to a queue."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def __call__(self, name: str, request: FileTimerRequest | None) -> None:
        self.queue.put((name, None if request is None else request.to_json()))


@pytest.fixture
def make_server(fifo: str) -> Iterator[Callable[..., FileTimerServer]]:
    """Creates servers on ``fifo``; each is stopped afterwards."""
    servers: list[FileTimerServer] = []

    def make(**kwargs: Any) -> FileTimerServer:
        kwargs.setdefault("run_id", "test-run")
        server = FileTimerServer(kwargs.pop("file_path", fifo), **kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def spawn(
    procs: list[subprocess.Popen[bytes]], script: str, *args: object
) -> subprocess.Popen[bytes]:
    # An int as its digits: Python 3.10 writes a signal as "Signals.SIGKILL".
    words = [str(int(arg)) if isinstance(arg, int) else str(arg) for arg in args]
    proc = subprocess.Popen([sys.executable, "-c", script, *words], stdout=subprocess.PIPE)
    procs.append(proc)
    return proc


def start_worker(
    procs: list[subprocess.Popen[bytes]], fifo: str, after: float, work: float, signum: int
) -> tuple[subprocess.Popen[bytes], float]:
    """A worker that has armed its timer, and the time it said so."""
    proc = spawn(procs, WORKER, fifo, after, work, signum)
    assert read_line(proc) == "armed"
    return proc, time.monotonic()


def line(pid: int, scope: str, expiration_time: float, signum: int = 0) -> bytes:
    return FileTimerRequest(pid, scope, expiration_time, signum).to_json().encode() + b"\n"


def write_raw(fifo: str, data: bytes) -> None:
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        assert os.write(fd, data) == len(data)
    finally:
        os.close(fd)


def is_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie has: init reaps orphans when it gets to it)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill_and_wait_gone(pid: int) -> None:
    """Kill a process that is not our child and wait until it has exited."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: is_gone(pid))


def scopes(server: FileTimerServer, pid: int | None = None) -> set[str]:
    pid = os.getpid() if pid is None else pid
    return {timer.scope_id for timer in server.get_expired_timers(math.inf).get(pid, [])}


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# ---------------------------------------------------------------- the request


def test_request_to_json_is_torchs_wire_format() -> None:
    request = FileTimerRequest(worker_pid=1234, scope_id="s", expiration_time=12.5, signal=9)
    assert isinstance(request, api.TimerRequest)
    assert request.version == 1
    assert request.worker_pid == request.worker_id == 1234
    decoded = json.loads(request.to_json())
    assert list(decoded) == ["version", "pid", "scope_id", "expiration_time", "signal"]
    assert decoded == {
        "version": 1,
        "pid": 1234,
        "scope_id": "s",
        "expiration_time": 12.5,
        "signal": 9,
    }
    assert "\n" not in request.to_json()
    assert FileTimerRequest(5, "x", 1.0).signal == 0


def test_request_equality_includes_version_and_signal() -> None:
    request = FileTimerRequest(10, "s", 1.0, 9)
    assert request == FileTimerRequest(10, "s", 1.0, 9)
    assert request != FileTimerRequest(10, "s", 1.0, 15)
    assert request != FileTimerRequest(11, "s", 1.0, 9)
    assert request != FileTimerRequest(10, "t", 1.0, 9)
    assert request != FileTimerRequest(10, "s", 2.0, 9)
    assert request != api.TimerRequest(10, "s", 1.0)
    other_version = FileTimerRequest(10, "s", 1.0, 9)
    other_version.version = 2
    assert request != other_version
    assert pickle.loads(pickle.dumps(request)) == request
    with pytest.raises(TypeError):
        hash(request)


def test_a_request_survives_the_wire() -> None:
    request = FileTimerRequest(4321, 'scope with ünïcode and "quotes"', 1700000000.25, 15)
    assert parse_request(request.to_json().encode()) == request


# ----------------------------------------------------------------- the client


def test_client_without_fifo_raises_broken_pipe_at_once(fifo: str) -> None:
    client = FileTimerClient(fifo)
    started = time.monotonic()
    with pytest.raises(BrokenPipeError, match="does not exist") as info:
        client.acquire("s", time.time() + 10)
    assert fifo in str(info.value)
    assert time.monotonic() - started < 0.2


def test_client_with_fifo_but_no_reader_raises_broken_pipe_promptly(fifo: str) -> None:
    os.mkfifo(fifo)
    client = FileTimerClient(fifo)
    started = time.monotonic()
    with pytest.raises(BrokenPipeError, match="no FileTimerServer is reading") as info:
        client.acquire("s", time.time() + 10)
    assert fifo in str(info.value)
    assert time.monotonic() - started < 1.0
    with pytest.raises(BrokenPipeError):
        client.release("s")


def test_client_does_not_write_into_a_regular_file(fifo: str) -> None:
    Path(fifo).write_text("precious")
    with pytest.raises(BrokenPipeError, match="not a FIFO"):
        FileTimerClient(fifo).acquire("s", time.time() + 10)
    assert Path(fifo).read_text() == "precious"


def test_expires_without_server_raises_broken_pipe_and_skips_the_body(fifo: str) -> None:
    ran = []
    with pytest.raises(BrokenPipeError), api.expires(after=1, client=FileTimerClient(fifo)):
        ran.append(True)
    assert ran == []


def _request_of_size(size: int) -> FileTimerRequest:
    """A request whose JSON (without newline) is ``size`` bytes long."""
    request = FileTimerRequest(os.getpid(), "", time.time() + 60, 0)
    request.scope_id = "x" * (size - len(request.to_json()))
    assert len(request.to_json()) == size
    return request


def test_client_refuses_a_request_beyond_pipe_buf_counting_the_newline(
    make_server: Callable[..., FileTimerServer], fifo: str
) -> None:
    server = make_server()
    server.run_once()  # opens the FIFO for reading
    client = FileTimerClient(fifo)
    # torch checks the JSON alone: a request of exactly PIPE_BUF bytes would
    # pass its check and then be written as PIPE_BUF + 1 bytes, not atomically.
    with pytest.raises(RuntimeError, match=str(select.PIPE_BUF)):
        client._send_request(_request_of_size(select.PIPE_BUF))
    with pytest.raises(RuntimeError):
        client.acquire("x" * select.PIPE_BUF, time.time() + 60)
    largest = _request_of_size(select.PIPE_BUF - 1)
    client._send_request(largest)
    server.run_once()
    assert scopes(server) == {largest.scope_id}


def test_client_refuses_a_time_that_is_not_a_time(fifo: str) -> None:
    client = FileTimerClient(fifo)
    bad_times: list[tuple[object, type[Exception]]] = [
        (math.nan, ValueError),
        (math.inf, ValueError),
        (True, TypeError),
        ("soon", TypeError),
    ]
    for bad, error in bad_times:
        with pytest.raises(error):
            client.acquire("s", bad)  # type: ignore[arg-type]


def test_client_waits_out_a_full_pipe(
    make_server: Callable[..., FileTimerServer], fifo: str
) -> None:
    server = make_server()
    server.run_once()  # the FIFO is open, but nobody reads it until we say so
    client = FileTimerClient(fifo, signal=0)
    count = 2000  # ~200 KB: several times what a pipe holds
    errors: list[BaseException] = []

    def flood() -> None:
        try:
            for i in range(count):
                client.acquire(f"scope-{i}", time.time() + 60)
        except BaseException as exc:
            errors.append(exc)

    writer = threading.Thread(target=flood)
    writer.start()
    try:
        time.sleep(0.2)
        assert writer.is_alive(), "the pipe never filled up"
        while writer.is_alive():
            server.run_once()
            time.sleep(0.01)
    finally:
        writer.join()
    server.run_once()
    assert errors == []
    assert len(server._timers) == count


def test_client_gives_up_clearly_when_the_pipe_stays_full(
    make_server: Callable[..., FileTimerServer], fifo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fbt, "_FULL_PIPE_WAIT", 0.2)
    server = make_server()
    server.run_once()
    client = FileTimerClient(fifo, signal=0)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="pipe is full"):
        for i in range(100_000):
            client.acquire(f"scope-{i}", time.time() + 60)
    assert time.monotonic() - started < 2.0


def test_client_works_with_a_restarted_server(
    make_server: Callable[..., FileTimerServer], fifo: str
) -> None:
    client = FileTimerClient(fifo, signal=0)
    first = make_server()
    first.run_once()
    client.acquire("one", time.time() + 60)
    first.run_once()
    assert scopes(first) == {"one"}
    first.stop()
    with pytest.raises(BrokenPipeError):
        client.acquire("lost", time.time() + 60)
    second = make_server()
    second.run_once()
    client.acquire("two", time.time() + 60)
    second.run_once()
    assert scopes(second) == {"two"}


def test_client_survives_pickling(make_server: Callable[..., FileTimerServer], fifo: str) -> None:
    server = make_server()
    server.run_once()
    client = FileTimerClient(fifo, signal=15)
    client.acquire("a", time.time() + 60)
    copy = pickle.loads(pickle.dumps(client))
    assert copy.signal == 15
    copy.acquire("b", time.time() + 60)
    server.run_once()
    assert scopes(server) == {"a", "b"}


def test_a_fork_child_arms_timers_under_its_own_pid(
    make_server: Callable[..., FileTimerServer], fifo: str, procs: list[subprocess.Popen[bytes]]
) -> None:
    server = make_server()
    server.run_once()
    proc = spawn(procs, FORKER, fifo)
    child_pid, child_exit = map(int, read_line(proc).split())
    assert proc.wait(10) == 0
    assert child_exit == 0
    server.run_once()
    # The processes are gone, but their timers are not due: they are all there.
    assert scopes(server, proc.pid) == {"before-fork", "after-fork"}
    assert scopes(server, child_pid) == {"in-child"}


# ----------------------------------------------------------------- the server


@pytest.mark.parametrize("process", [False, True], ids=["thread", "process"])
def test_a_hung_worker_is_killed_at_its_deadline(
    make_server: Callable[..., FileTimerServer],
    fifo: str,
    procs: list[subprocess.Popen[bytes]],
    process: bool,
) -> None:
    server = make_server(max_interval=10)  # only an upper bound, not the latency
    server.start(process=process)
    worker, armed_at = start_worker(procs, fifo, after=0.2, work=60, signum=signal.SIGKILL)
    assert worker.wait(5) == -signal.SIGKILL
    assert time.monotonic() - armed_at < 1.0


def test_a_worker_that_finishes_in_time_survives(
    make_server: Callable[..., FileTimerServer], fifo: str, procs: list[subprocess.Popen[bytes]]
) -> None:
    events = Events()
    server = make_server(log_event=events)
    server.start()
    worker, _ = start_worker(procs, fifo, after=0.3, work=0.01, signum=signal.SIGKILL)
    assert read_line(worker) == "done"
    assert worker.wait(5) == 0
    time.sleep(0.4)  # past the deadline the timer had before it was released
    assert "timer expired" not in events.names()


def test_release_disarms(make_server: Callable[..., FileTimerServer], fifo: str) -> None:
    events = Events()
    server = make_server(log_event=events)
    server.run_once()
    pid = os.getpid()
    write_raw(fifo, line(pid, "a", time.time() - 1) + line(pid, "a", -1))
    write_raw(fifo, line(pid, "b", time.time() + 60) + line(pid, "never-armed", -1))
    server.run_once()
    assert scopes(server) == {"b"}
    assert events.names() == []


@pytest.mark.parametrize("signum", [0, -1])
def test_a_timer_without_signal_expires_without_a_kill(
    make_server: Callable[..., FileTimerServer],
    fifo: str,
    procs: list[subprocess.Popen[bytes]],
    signum: int,
) -> None:
    events = Events()
    server = make_server(log_event=events)
    server.start()
    worker, _ = start_worker(procs, fifo, after=0.1, work=60, signum=signum)
    expired = events.wait_for("timer expired")
    assert expired is not None
    assert (expired.worker_pid, expired.scope_id, expired.signal) == (worker.pid, "work", signum)
    wait_until(lambda: len(server._timers) == 0)
    assert "kill worker process" not in events.names()
    assert worker.poll() is None


def test_the_earliest_expired_timer_with_a_signal_decides(
    make_server: Callable[..., FileTimerServer], fifo: str, procs: list[subprocess.Popen[bytes]]
) -> None:
    events = Events()
    server = make_server(log_event=events)
    server.run_once()
    worker = spawn(procs, "import time; print('up', flush=True); time.sleep(60)")
    assert read_line(worker) == "up"
    past = time.time() - 10
    write_raw(
        fifo,
        line(worker.pid, "no-signal", past, 0)
        + line(worker.pid, "sigkill-later", past + 2, signal.SIGKILL)
        + line(worker.pid, "sigterm", past + 1, signal.SIGTERM)
        + line(worker.pid, "not-due", time.time() + 60, signal.SIGKILL),
    )
    server.run_once()
    assert worker.wait(5) == -signal.SIGTERM
    expired = [(n, r.scope_id) for n, r in events.events if r is not None]
    assert expired == [
        ("timer expired", "no-signal"),
        ("timer expired", "sigterm"),
        ("timer expired", "sigkill-later"),
        ("kill worker process", "sigterm"),
    ]
    assert scopes(server, worker.pid) == set()  # the worker's timers are cleared


def test_expired_timers_are_reported_through_debug_info_logging(
    make_server: Callable[..., FileTimerServer],
    fifo: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger="pytest_expire.timer.debug_info_logging")
    calls: list[tuple[str, dict[int, list[str]]]] = []
    real = fbt.log_debug_info_for_expired_timers

    def record(run_id: str, expired_timers: dict[int, list[str]]) -> None:
        calls.append((run_id, expired_timers))
        real(run_id, expired_timers)

    monkeypatch.setattr(fbt, "log_debug_info_for_expired_timers", record)
    server = make_server(run_id="run-42")
    server.run_once()
    first = FileTimerRequest(os.getpid(), "first", time.time() - 2, 0)
    second = FileTimerRequest(os.getpid(), "second", time.time() - 1, 0)
    write_raw(fifo, (second.to_json() + "\n" + first.to_json() + "\n").encode())
    server.run_once()
    assert calls == [("run-42", {os.getpid(): [first.to_json(), second.to_json()]})]
    [record_] = [r for r in caplog.records if r.name == "pytest_expire.timer.debug_info_logging"]
    assert "run-42" in record_.getMessage()
    assert first.to_json() in record_.getMessage()
    server.run_once()
    assert len(calls) == 1  # nothing expired since: nothing reported


def test_timers_of_a_worker_that_exited_are_dropped(
    make_server: Callable[..., FileTimerServer],
    fifo: str,
    procs: list[subprocess.Popen[bytes]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[object] = []
    monkeypatch.setattr(fbt, "log_debug_info_for_expired_timers", lambda *a: calls.append(a))
    events = Events()
    server = make_server(log_event=events)
    server.start()
    worker = spawn(procs, EXIT_ARMED, fifo, 0.3)
    assert read_line(worker) == "armed"
    wait_until(lambda: len(server._timers) == 1)
    # Not reaped yet: a zombie has exited too.
    wait_until(lambda: psutil.Process(worker.pid).status() == psutil.STATUS_ZOMBIE)
    wait_until(lambda: len(server._timers) == 0)
    assert events.names() == ["watchdog started"]
    assert calls == []


def test_stop_is_prompt_and_removes_the_fifo(
    make_server: Callable[..., FileTimerServer], fifo: str
) -> None:
    events = Events()
    server = make_server(max_interval=30, log_event=events)
    assert Path(fifo).is_fifo()
    assert os.stat(fifo).st_mode & 0o777 == 0o600
    server.start()
    time.sleep(0.05)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 0.5
    assert not os.path.lexists(fifo)
    assert not server.is_running
    assert events.names() == ["watchdog started", "watchdog stopped"]


def test_stop_of_a_server_process_is_prompt_and_removes_the_fifo(
    make_server: Callable[..., FileTimerServer], fifo: str
) -> None:
    server = make_server(max_interval=30)
    server.start(process=True)
    watchdog_pid = server.watchdog_pid
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 1.0
    assert not os.path.lexists(fifo)
    assert watchdog_pid is not None and not psutil.pid_exists(watchdog_pid)


def test_stop_of_a_server_never_started_removes_the_fifo(
    make_server: Callable[..., FileTimerServer], fifo: str
) -> None:
    server = make_server()
    assert Path(fifo).is_fifo()
    server.stop()
    assert not os.path.lexists(fifo)


@pytest.mark.parametrize("process", [False, True], ids=["thread", "process"])
def test_a_server_restarts_after_stop(
    make_server: Callable[..., FileTimerServer],
    fifo: str,
    procs: list[subprocess.Popen[bytes]],
    process: bool,
) -> None:
    server = make_server()
    server.start(process=process)
    server.stop()
    assert not os.path.lexists(fifo)
    server.start(process=process)
    assert Path(fifo).is_fifo()
    runner = server._watchdog_process if process else server._watchdog_thread
    server.start(process=process)  # accepted, as torch's is: the same watchdog goes on
    assert (server._watchdog_process if process else server._watchdog_thread) is runner
    with pytest.raises(RuntimeError, match="already running in"):
        server.start(process=not process)
    worker, _ = start_worker(procs, fifo, after=0.1, work=60, signum=signal.SIGKILL)
    assert worker.wait(5) == -signal.SIGKILL


def test_an_existing_fifo_is_reused(make_server: Callable[..., FileTimerServer], fifo: str) -> None:
    os.mkfifo(fifo, 0o600)
    inode = os.stat(fifo).st_ino
    server = make_server()
    server.start()
    assert os.stat(fifo).st_ino == inode
    FileTimerClient(fifo).release("s")


@pytest.mark.parametrize("kind", ["file", "directory", "symlink"])
def test_anything_but_a_fifo_at_the_path_is_refused_and_left_alone(
    fifo: str, tmp_path: Path, kind: str
) -> None:
    if kind == "file":
        Path(fifo).write_text("precious")
    elif kind == "directory":
        os.mkdir(fifo)
    else:
        os.mkfifo(tmp_path / "target")
        os.symlink(tmp_path / "target", fifo)
    before = os.lstat(fifo)
    with pytest.raises(FileExistsError, match="not a FIFO") as info:
        FileTimerServer(fifo, "run")
    assert info.value.errno == errno.EEXIST
    after = os.lstat(fifo)
    assert (after.st_ino, after.st_mode, after.st_mtime_ns) == (
        before.st_ino,
        before.st_mode,
        before.st_mtime_ns,
    )
    if kind == "file":
        assert Path(fifo).read_text() == "precious"


def test_a_writer_holding_the_fifo_open_does_not_delay_expiry(
    make_server: Callable[..., FileTimerServer], fifo: str, procs: list[subprocess.Popen[bytes]]
) -> None:
    server = make_server(max_interval=10)
    server.start()
    holder = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(holder, b'{"version": 1, "pid": ')  # and never finishes the line
        worker, armed_at = start_worker(procs, fifo, after=0.2, work=60, signum=signal.SIGKILL)
        assert worker.wait(5) == -signal.SIGKILL
        assert time.monotonic() - armed_at < 1.0
    finally:
        os.close(holder)


BAD_LINES = [
    b"garbage",
    b"{",
    b"[1, 2, 3]",
    b'"a string"',
    b'{"version": 1, "pid": 1234, "scope_id": "no-time", "signal": 0}',
    b'{"version": 2, "pid": 1234, "scope_id": "v2", "expiration_time": 1, "signal": 0}',
    b'{"version": true, "pid": 1234, "scope_id": "vbool", "expiration_time": 1, "signal": 0}',
    b'{"version": 1, "pid": "1234", "scope_id": "strpid", "expiration_time": 1, "signal": 0}',
    b'{"version": 1, "pid": 1234.0, "scope_id": "fpid", "expiration_time": 1, "signal": 0}',
    b'{"version": 1, "pid": 1234, "scope_id": 7, "expiration_time": 1, "signal": 0}',
    b'{"version": 1, "pid": 1234, "scope_id": "b", "expiration_time": true, "signal": 0}',
    b'{"version": 1, "pid": 1234, "scope_id": "n", "expiration_time": NaN, "signal": 0}',
    b'{"version": 1, "pid": 1234, "scope_id": "i", "expiration_time": Infinity, "signal": 0}',
    b'{"version": 1, "pid": 1234, "scope_id": "i", "expiration_time": -Infinity, "signal": 0}',
    b'{"version": 1, "pid": 1234, "scope_id": "h", "expiration_time": 1e400, "signal": 0}',
    b'{"version": 1, "pid": 1234, "scope_id": "h", "expiration_time": '
    + b"9" * 400
    + b', "signal": 0}',
    b'{"version": 1, "pid": 1234, "scope_id": "s", "expiration_time": 1, "signal": "KILL"}',
    b'{"version": 1, "pid": 1234, "scope_id": "s", "expiration_time": 1, "signal": 9999}',
    b'{"version": 1, "pid": 1234, "scope_id": "s", "expiration_time": 1, "signal": true}',
    b'{"version": 1, "pid": 1234, "scope_id": "\xff\xfe", "expiration_time": 1, "signal": 0}',
    b"[" * 3000 + b"]" * 1000,
    b"x" * (select.PIPE_BUF + 10),
]


def test_malformed_lines_are_dropped_alone(
    make_server: Callable[..., FileTimerServer], fifo: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server()
    server.run_once()
    pid = os.getpid()
    future = time.time() + 60
    for i, bad in enumerate(BAD_LINES):
        write_raw(
            fifo, line(pid, f"before-{i}", future) + bad + b"\n" + line(pid, f"after-{i}", future)
        )
    server.run_once()
    expected = {f"{where}-{i}" for i in range(len(BAD_LINES)) for where in ("before", "after")}
    assert scopes(server) == expected
    assert len(server._timers) == len(expected)  # nothing for PID 1234
    assert len(messages(caplog, "dropping malformed timer request")) == len(BAD_LINES)


@pytest.mark.parametrize("pid", [0, 1, -1, -1234, 2**31, True])
def test_a_line_naming_init_zero_or_a_process_group_is_dropped(
    make_server: Callable[..., FileTimerServer],
    fifo: str,
    caplog: pytest.LogCaptureFixture,
    pid: int,
) -> None:
    events = Events()
    server = make_server(log_event=events)
    server.run_once()
    bad = {"version": 1, "pid": pid, "scope_id": "s", "expiration_time": 0, "signal": 9}
    write_raw(fifo, json.dumps(bad).encode() + b"\n")
    server.run_once()
    assert len(server._timers) == 0
    assert events.names() == []
    assert messages(caplog, "is not a worker process")


def test_a_line_naming_the_server_itself_is_refused(
    make_server: Callable[..., FileTimerServer], fifo: str, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
    try:
        events = Events()
        server = make_server(log_event=events)
        server.run_once()
        write_raw(fifo, line(os.getpid(), "me", time.time() - 1, signal.SIGUSR1))
        server.run_once()
        time.sleep(0.05)  # a signal, had one been sent, would have arrived
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert events.names() == ["timer expired", "kill worker process"]
    assert received == []
    assert messages(caplog, "refusing to signal")
    assert len(server._timers) == 0


def test_a_line_naming_the_server_process_is_refused(
    make_server: Callable[..., FileTimerServer], fifo: str, procs: list[subprocess.Popen[bytes]]
) -> None:
    queue = multiprocessing.get_context("spawn").Queue()
    try:
        server = make_server(log_event=QueueEvents(queue))
        server.start(process=True)
        assert queue.get(timeout=5) == ("watchdog started", None)
        watchdog_pid = server.watchdog_pid
        assert watchdog_pid is not None
        write_raw(fifo, line(watchdog_pid, "you", time.time() - 1, signal.SIGKILL))
        assert queue.get(timeout=5)[0] == "timer expired"
        assert queue.get(timeout=5)[0] == "kill worker process"
        # Still alive, still working.
        worker, _ = start_worker(procs, fifo, after=0.1, work=60, signum=signal.SIGKILL)
        assert worker.wait(5) == -signal.SIGKILL
        assert server.is_running
        assert psutil.Process(watchdog_pid).status() != psutil.STATUS_ZOMBIE
        server.stop()
    finally:
        queue.close()
        queue.join_thread()


@pytest.mark.parametrize("admitted", [False, True], ids=["refused", "admitted"])
def test_a_process_that_does_not_descend_from_the_host_is_not_signalled_unless_admitted(
    make_server: Callable[..., FileTimerServer],
    fifo: str,
    procs: list[subprocess.Popen[bytes]],
    caplog: pytest.LogCaptureFixture,
    admitted: bool,
) -> None:
    events = Events()
    server = make_server(log_event=events)
    server.start()
    orphaner = spawn(procs, ORPHANER, WORKER, fifo, 0.5, 60, signal.SIGKILL)
    orphan_pid = int(read_line(orphaner))
    try:
        assert orphaner.wait(5) == 0
        orphan = psutil.Process(orphan_pid)
        if orphan.ppid() == os.getpid() or os.getpid() in {p.pid for p in orphan.parents()}:
            pytest.skip("this process is a subreaper: orphans are reparented to it")
        if admitted:
            server.admit(orphan_pid)
        assert read_line(orphaner) == "armed"  # the orphan inherited the pipe
        events.wait_for("kill worker process")
        if admitted:
            wait_until(lambda: is_gone(orphan_pid))  # not our child: no exit code to see
            assert not messages(caplog, "not a descendant")
        else:
            wait_until(lambda: bool(messages(caplog, "not a descendant")))
            assert not is_gone(orphan_pid)
    finally:
        kill_and_wait_gone(orphan_pid)


def test_a_reused_pid_is_not_signalled(
    make_server: Callable[..., FileTimerServer],
    fifo: str,
    procs: list[subprocess.Popen[bytes]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    events = Events()
    server = make_server(log_event=events)
    server.run_once()
    worker = spawn(procs, "import time; print('up', flush=True); time.sleep(60)")
    assert read_line(worker) == "up"
    write_raw(fifo, line(worker.pid, "s", time.time() + 0.2, signal.SIGKILL))
    server.run_once()  # registers the timer and records the worker's identity
    # A real PID reuse cannot be forced in a test: it needs the PID space to
    # wrap around between the acquire and the kill. What the guard sees then is
    # that the process that armed the timer has exited while its PID names a
    # live process; we make it see exactly that by swapping its pidfd for the
    # pidfd of a process that has exited.
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended_pidfd = os.pidfd_open(ended.pid)
    ended.wait()
    os.close(server._guard._pidfds[worker.pid])
    server._guard._pidfds[worker.pid] = ended_pidfd
    time.sleep(0.25)
    server.run_once()
    assert events.names() == ["timer expired", "kill worker process"]
    assert messages(caplog, "now names another process")
    assert worker.poll() is None
    assert len(server._timers) == 0


def test_a_really_reused_pid_does_not_inherit_the_old_processes_timers(
    make_server: Callable[..., FileTimerServer],
    fifo: str,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    server = make_server()
    server.start()
    old = spawn(procs, EXIT_ARMED, fifo, 60)  # arms "left" and exits without releasing it
    assert read_line(old) == "armed"
    wait_until(lambda: scopes(server, old.pid) == {"left"})
    old.wait()

    def discard(proc: subprocess.Popen[bytes]) -> None:
        proc.kill()
        proc.wait()

    new = start_with_pid(
        old.pid, lambda: spawn(procs, WORKER, fifo, 0.5, 60, signal.SIGKILL), discard
    )
    assert read_line(new) == "armed"
    wait_until(lambda: scopes(server, new.pid) == {"work"})
    assert new.wait(timeout=5) == -signal.SIGKILL  # its own timer, signalled to it


def test_a_request_split_across_two_writes(
    make_server: Callable[..., FileTimerServer], fifo: str
) -> None:
    server = make_server()
    server.run_once()
    data = line(os.getpid(), "split", time.time() + 60)
    holder = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(holder, data[:17])
        server.run_once()
        assert len(server._timers) == 0
        os.write(holder, data[17:])
        server.run_once()
    finally:
        os.close(holder)
    assert scopes(server) == {"split"}


def test_many_requests_in_one_write(make_server: Callable[..., FileTimerServer], fifo: str) -> None:
    server = make_server()
    server.run_once()
    pid = os.getpid()
    future = time.time() + 60
    write_raw(fifo, b"".join(line(pid, f"s{i}", future) for i in range(300)))
    server.run_once()
    assert scopes(server) == {f"s{i}" for i in range(300)}


def test_an_endless_line_is_dropped_and_the_stream_resyncs(
    make_server: Callable[..., FileTimerServer], fifo: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server()
    server.run_once()
    holder = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        for _ in range(10):
            os.write(holder, b"y" * 3000)
            server.run_once()
        assert server._decoder.pending < select.PIPE_BUF
        os.write(holder, b"tail\n" + line(os.getpid(), "good", time.time() + 60))
        server.run_once()
    finally:
        os.close(holder)
    assert scopes(server) == {"good"}
    assert len(messages(caplog, "dropping malformed timer request")) == 1


def test_run_once_on_a_running_server_handles_what_is_pending_and_ends_it(
    make_server: Callable[..., FileTimerServer], fifo: str
) -> None:
    server = make_server(max_interval=30)
    server.start()
    client = FileTimerClient(fifo, signal=0)
    for i in range(50):
        client.acquire(f"s{i}", time.time() + 60)
    server.run_once()
    assert len(server._timers) == 50
    assert not server.is_running
    assert not os.path.lexists(fifo)


def test_progress_time(make_server: Callable[..., FileTimerServer]) -> None:
    server = make_server(max_interval=0.05)
    assert abs(server.get_last_progress_time() - time.time()) < 1  # not started: now
    server.start(process=True)
    first = server.get_last_progress_time()
    wait_until(lambda: server.get_last_progress_time() > first + 0.05)
    assert server.get_last_progress_time() <= time.time()


def test_is_process_running(procs: list[subprocess.Popen[bytes]]) -> None:
    assert FileTimerServer.is_process_running(os.getpid())
    assert not FileTimerServer.is_process_running(0)
    assert not FileTimerServer.is_process_running(-1)
    proc = spawn(procs, "pass")
    wait_until(lambda: psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE)
    assert not FileTimerServer.is_process_running(proc.pid)
    proc.wait()
    assert not FileTimerServer.is_process_running(proc.pid)


def test_a_failing_log_event_does_not_stop_the_server(
    make_server: Callable[..., FileTimerServer], fifo: str, procs: list[subprocess.Popen[bytes]]
) -> None:
    def explode(name: str, request: FileTimerRequest | None) -> None:
        raise RuntimeError("log_event broke")

    server = make_server(log_event=explode)
    server.start()
    worker, _ = start_worker(procs, fifo, after=0.1, work=60, signum=signal.SIGKILL)
    assert worker.wait(5) == -signal.SIGKILL


def test_max_interval_must_be_positive(fifo: str) -> None:
    with pytest.raises(ValueError, match="max_interval"):
        FileTimerServer(fifo, "run", max_interval=0)
    assert not os.path.lexists(fifo)


def test_an_endless_max_interval_is_only_an_upper_bound(
    make_server: Callable[..., FileTimerServer], fifo: str, procs: list[subprocess.Popen[bytes]]
) -> None:
    server = make_server(max_interval=float("inf"))
    server.start()
    worker, _ = start_worker(procs, fifo, after=0.1, work=60, signum=signal.SIGKILL)
    assert worker.wait(5) == -signal.SIGKILL
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 0.5
