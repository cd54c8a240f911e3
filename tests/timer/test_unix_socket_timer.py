"""The Unix-socket pair with real processes, real signals and short deadlines."""

from __future__ import annotations

import array
import contextlib
import errno
import logging
import math
import multiprocessing
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from multiprocessing.context import SpawnContext

import psutil
import pytest
from processes import join_or_kill, wait_until

from pytest_expire import timer
from pytest_expire.timer import unix_socket_timer as ust
from pytest_expire.timer.file_based_local_timer import FileTimerRequest
from pytest_expire.timer.unix_socket_timer import (
    Logged,
    TimerServerError,
    UnixSocketTimerClient,
    UnixSocketTimerServer,
    format_address,
    parse_address,
)

CTX: SpawnContext = multiprocessing.get_context("spawn")
MODULE_LOGGER = "pytest_expire.timer.unix_socket_timer"
# Where these tests put a server's address for the processes they start.
ADDRESS_ENV = "TIMER_TEST_ADDRESS"

# Every child script starts with this. A child that forks makes its own child
# die with it, so that killing the script leaves nothing behind.
PRELUDE = """\
import ctypes, os, signal, sys, time
from pytest_expire import timer
from pytest_expire.timer import unix_socket_timer as ust
from pytest_expire.timer.unix_socket_timer import UnixSocketTimerClient

def die_with_parent():
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)

"""
PRELUDE += f"ADDRESS_ENV = {ADDRESS_ENV!r}\n"


# ------------------------------------------------------------------ helpers


@pytest.fixture
def short_dir() -> Iterator[str]:
    """A directory whose paths fit a Unix socket address (tmp_path may be too long)."""
    path = tempfile.mkdtemp(prefix="ust-", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["thread", "process"])
def server(request: pytest.FixtureRequest) -> Iterator[UnixSocketTimerServer]:
    server = UnixSocketTimerServer()
    server.start(process=request.param == "process")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def thread_server() -> Iterator[UnixSocketTimerServer]:
    """A server in a thread of this process: its logs reach caplog, its state is readable."""
    server = UnixSocketTimerServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sleepy_server() -> Iterator[UnixSocketTimerServer]:
    """A thread server that sleeps up to 60 s: only a deadline before that wakes it."""
    server = UnixSocketTimerServer(max_interval=60)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def caplog_info(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger=MODULE_LOGGER)
    return caplog


def env_of(server: UnixSocketTimerServer) -> dict[str, str]:
    return {**os.environ, ADDRESS_ENV: server.address}


def run_python(
    code: str, env: dict[str, str], *args: str, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    """Run a child script to its end (killed by subprocess.run on timeout)."""
    return subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_interrupted_then_killed(arming: str, server: UnixSocketTimerServer) -> None:
    """Run ``arming`` in a child that prints "usr1" on SIGUSR1: it must get SIGUSR1, then SIGKILL.

    ``arming`` arms timers (``time`` and ``signal`` imported) for a SIGUSR1
    within 0.4 s and a kill between 0.4 s and a few seconds.
    """
    result = run_python(
        'signal.signal(signal.SIGUSR1, lambda *_: print("usr1", flush=True))\n'
        + textwrap.dedent(arming)
        + 'time.sleep(0.4)\nprint("alive", flush=True)\ntime.sleep(30)\n',
        env_of(server),
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert result.stdout == "usr1\nalive\n"


def hang_with_client_from_env(after: float, how: str) -> None:
    import hangs

    client = UnixSocketTimerClient.from_env(ADDRESS_ENV)
    with timer.expires(after=after, client=client):
        getattr(hangs, how)()


def hang_with(client: UnixSocketTimerClient, after: float) -> None:
    import hangs

    with timer.expires(after=after, client=client):
        hangs.sleep_forever()


HANG = """
    client = UnixSocketTimerClient.from_env(ADDRESS_ENV)
    client.acquire("hang", time.time() + 0.3)
    time.sleep(30)
"""


# ------------------------------------------------------------------ addresses


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("", "does not start with 'unix:'"),
        ("tcp:127.0.0.1:80", "does not start with 'unix:'"),
        ("relative/sock", "does not start with 'unix:'"),
        ("unix:", "names no socket path"),
        ("unix:relative/sock", "has a relative path"),
        ("unix:/tmp/a\0b", "contains a NUL"),
        ("unix:/tmp/" + "x" * 120, "too long"),
    ],
)
def test_a_malformed_address_is_refused_clearly(address: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_address(address)
    with pytest.raises(ValueError, match=message):
        UnixSocketTimerClient(address)
    with pytest.raises(ValueError, match=message):
        UnixSocketTimerServer(address)


def test_addresses_are_parsed_and_formatted() -> None:
    assert parse_address("unix:/tmp/s.sock") == "/tmp/s.sock"
    assert parse_address("/tmp/s.sock") == "/tmp/s.sock"
    assert format_address("/tmp/s.sock") == "unix:/tmp/s.sock"
    assert UnixSocketTimerServer("/tmp/s.sock").address == "unix:/tmp/s.sock"
    with pytest.raises(TypeError):
        parse_address(b"unix:/tmp/s.sock")  # type: ignore[arg-type]


def test_from_env_without_the_variable_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    with pytest.raises(RuntimeError, match=ADDRESS_ENV):
        UnixSocketTimerClient.from_env(ADDRESS_ENV)
    with pytest.raises(RuntimeError, match=ADDRESS_ENV):
        UnixSocketTimerClient.from_env(ADDRESS_ENV, environ={ADDRESS_ENV: ""})


def test_bad_client_arguments_are_refused(thread_server: UnixSocketTimerServer) -> None:
    with pytest.raises(TypeError):
        UnixSocketTimerClient(thread_server.address, signal=True)
    with pytest.raises(ValueError, match="not a signal number"):
        UnixSocketTimerClient(thread_server.address, signal=signal.NSIG)
    with pytest.raises(ValueError, match="timeout"):
        UnixSocketTimerClient(thread_server.address, timeout=0)


def test_acquire_takes_any_real_time_and_refuses_the_rest(
    sleepy_server: UnixSocketTimerServer,
) -> None:
    client = UnixSocketTimerClient(sleepy_server.address)
    with pytest.raises(ValueError, match="NaN"):
        client.acquire("s", math.nan)
    with pytest.raises(TypeError):
        client.acquire("s", True)
    with pytest.raises(TypeError):
        client.acquire("s", "soon")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at most"):
        client.acquire("é" * ust.MAX_SCOPE_BYTES, time.time() + 60)
    with pytest.raises(ValueError, match="at most"):
        client.release("x" * (ust.MAX_SCOPE_BYTES + 1))
    client.acquire("x" * ust.MAX_SCOPE_BYTES, time.time() + 600)
    client.acquire("int", int(time.time()) + 600)
    client.acquire("never", math.inf)
    client.acquire("int", -1)  # torch's convention: a negative time releases
    client.acquire("wake", time.time() + 30)  # before the server's next wake-up: wakes it
    wait_until(lambda: len(sleepy_server._timers) == 3)


# ------------------------------------------------------------------ no server, lost server


def test_a_client_without_a_server_fails_at_once(short_dir: str) -> None:
    address = format_address(os.path.join(short_dir, "none.sock"))
    started = time.monotonic()
    with pytest.raises(TimerServerError, match=re.escape(f"no timer server at {address}")):
        UnixSocketTimerClient(address)
    # A socket file nobody listens on (a server that died).
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(parse_address(address))
    stale.close()
    with pytest.raises(TimerServerError, match="Connection refused"):
        UnixSocketTimerClient(address)
    assert time.monotonic() - started < 1


def test_a_server_that_does_not_answer_fails_the_client_in_time(short_dir: str) -> None:
    path = os.path.join(short_dir, "mute.sock")
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        mute.bind(path)
        mute.listen()
        started = time.monotonic()
        with pytest.raises(TimerServerError, match=r"did not answer within 0\.2 s"):
            UnixSocketTimerClient(path, timeout=0.2)
        assert time.monotonic() - started < 1
    finally:
        mute.close()


@pytest.mark.parametrize("process", [False, True], ids=["thread", "process"])
def test_a_server_stopped_mid_run_fails_the_client_at_once(process: bool) -> None:
    server = UnixSocketTimerServer()
    server.start(process=process)
    try:
        client = UnixSocketTimerClient(server.address)
        client.acquire("before", time.time() + 60)
    finally:
        server.stop()
    started = time.monotonic()
    with pytest.raises(TimerServerError, match="lost the timer server"):
        client.acquire("after", time.time() + 60)
    with pytest.raises(TimerServerError, match="no timer server"):
        client.release("after")
    assert time.monotonic() - started < 1


def test_a_stalled_server_makes_requests_fail_instead_of_hanging() -> None:
    server = UnixSocketTimerServer()
    server.start(process=True)
    watchdog_pid = server.watchdog_pid
    assert watchdog_pid is not None
    try:
        client = UnixSocketTimerClient(server.address, timeout=0.3)
        os.kill(watchdog_pid, signal.SIGSTOP)
        started = time.monotonic()
        far = time.time() + 600
        with pytest.raises(TimerServerError, match=r"took no request for 0\.3 s"):
            for i in range(100_000):  # fills the pipe, then waits for room
                client.acquire(f"scope-{i}", far)
        assert time.monotonic() - started < 3
    finally:
        os.kill(watchdog_pid, signal.SIGCONT)
        server.stop()


# ------------------------------------------------------------------ expiry


def test_a_hung_subprocess_is_killed(server: UnixSocketTimerServer) -> None:
    result = run_python(HANG, env_of(server))
    assert result.returncode == -signal.SIGKILL, result.stderr


@pytest.mark.parametrize("how", ["sleep_forever", "hold_the_gil_forever"])
def test_a_hung_spawned_child_finds_the_server_through_the_environment(
    server: UnixSocketTimerServer, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ADDRESS_ENV, server.address)
    worker = CTX.Process(target=hang_with_client_from_env, args=(0.3, how))
    worker.start()
    assert join_or_kill(worker, timeout=10) == -signal.SIGKILL


def test_a_client_passed_to_a_spawned_child_connects_there(
    server: UnixSocketTimerServer,
) -> None:
    client = UnixSocketTimerClient(server.address)
    client.acquire("parent", time.time() + 60)  # this process's connection stays its own
    worker = CTX.Process(target=hang_with, args=(client, 0.3))
    worker.start()
    assert join_or_kill(worker, timeout=10) == -signal.SIGKILL
    client.release("parent")


def test_a_worker_that_finishes_in_time_survives(server: UnixSocketTimerServer) -> None:
    result = run_python(
        """
        client = UnixSocketTimerClient.from_env(ADDRESS_ENV)
        with timer.expires(after=0.3, client=client):
            time.sleep(0.05)
        with timer.expires(after=0.3, client=client):
            pass
        time.sleep(0.6)  # past both deadlines: released timers never fire
        print("survived")
        """,
        env_of(server),
    )
    assert (result.returncode, result.stdout) == (0, "survived\n"), result.stderr


def test_release_disarms_and_the_server_never_signals_its_own_process(
    thread_server: UnixSocketTimerServer, caplog_info: pytest.LogCaptureFixture
) -> None:
    client = UnixSocketTimerClient(thread_server.address)
    soon = time.time() + 0.2
    client.acquire("released", soon)
    client.release("released")
    client.acquire("kept", soon)
    wait_until(lambda: "Timers expired" in caplog_info.text)
    expired = [r.getMessage() for r in caplog_info.records if "Timers expired" in r.getMessage()]
    assert len(expired) == 1
    assert '"kept"' in expired[0]
    assert '"released"' not in expired[0]
    wait_until(lambda: f"refusing to signal {os.getpid()}" in caplog_info.text)
    assert len(thread_server._timers) == 0


def test_signals_and_escalation(server: UnixSocketTimerServer) -> None:
    """Each client's own signal; an expired timer goes, the later one still fires."""
    assert_interrupted_then_killed(
        """
        soft = UnixSocketTimerClient.from_env(ADDRESS_ENV, signal=signal.SIGUSR1)
        quiet = UnixSocketTimerClient.from_env(ADDRESS_ENV, signal=0)
        hard = UnixSocketTimerClient.from_env(ADDRESS_ENV)
        started = time.time()
        soft.acquire("test", started + 0.2)
        quiet.acquire("note", started + 0.2)
        hard.acquire("test-kill", started + 0.6)
        """,
        server,
    )


def test_timers_with_signals_of_their_own_in_one_write(server: UnixSocketTimerServer) -> None:
    """acquire_many: an interrupt then a kill, armed together; release_many disarms both."""
    assert_interrupted_then_killed(
        """
        client = UnixSocketTimerClient.from_env(ADDRESS_ENV)
        started = time.time()
        client.acquire_many([("released", started + 0.2, signal.SIGKILL),
                             ("released [kill]", started + 0.2, signal.SIGKILL)])
        client.release_many(["released", "released [kill]"])
        client.acquire_many([("test", started + 0.2, signal.SIGUSR1),
                             ("test [kill]", started + 0.6, signal.SIGKILL)])
        """,
        server,
    )


def test_a_batch_too_big_for_one_write_still_arrives(server: UnixSocketTimerServer) -> None:
    result = run_python(
        """
        client = UnixSocketTimerClient.from_env(ADDRESS_ENV)
        far = time.time() + 60
        scopes = [str(i) * ust.MAX_SCOPE_BYTES for i in range(3)]
        client.acquire_many([(scope, far, signal.SIGKILL) for scope in scopes])
        client.acquire_many([("last", time.time() + 0.2, signal.SIGKILL)])
        client.release_many(scopes)
        time.sleep(30)
        """,
        env_of(server),
    )
    assert result.returncode == -signal.SIGKILL, result.stderr


def test_prepared_timers_escalate_and_a_near_one_wakes_the_server(
    sleepy_server: UnixSocketTimerServer,
) -> None:
    """prepare(): fixed scopes and signals, armed with new times in one write.

    The server sleeps up to 60 s, so the kill comes in time only if the
    write woke it.
    """
    assert_interrupted_then_killed(
        """
        client = UnixSocketTimerClient.from_env(ADDRESS_ENV)
        timers = client.prepare([("test", signal.SIGUSR1), ("test [kill]", signal.SIGKILL)])
        started = time.time()
        timers.acquire(started + 0.2, started + 0.6)
        """,
        sleepy_server,
    )


def test_prepared_timers_armed_again_replace_the_earlier_ones(
    thread_server: UnixSocketTimerServer,
) -> None:
    """No release between two arms: the second replaces the first; release() ends both."""
    result = run_python(
        """
        signal.signal(signal.SIGUSR1, lambda *_: print("usr1", flush=True))
        client = UnixSocketTimerClient.from_env(ADDRESS_ENV)
        timers = client.prepare([("test", signal.SIGUSR1), ("test [kill]", signal.SIGKILL)])
        started = time.time()
        timers.acquire(started + 0.3, started + 0.5)
        timers.acquire(started + 60, started + 60)
        time.sleep(0.8)
        print("not yet", flush=True)
        timers.acquire(started + 1.0, started + 1.2)
        timers.release()
        time.sleep(1.0)
        print("released", flush=True)
        """,
        env_of(thread_server),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "not yet\nreleased\n"


@pytest.mark.parametrize(
    ("timers", "error", "message"),
    [
        ([("scope", "9")], TypeError, "signal must be an int"),
        ([("scope", signal.NSIG)], ValueError, "is not a signal number"),
        ([("x" * (ust.MAX_SCOPE_BYTES + 1), signal.SIGKILL)], ValueError, "at most"),
        ([("x" * 3000, 9), ("y" * 3000, 9)], ValueError, "must fit one write"),
        ([], ValueError, "at least one timer"),
    ],
)
def test_prepare_checks_its_timers(
    thread_server: UnixSocketTimerServer,
    timers: list[tuple[str, int]],
    error: type,
    message: str,
) -> None:
    client = UnixSocketTimerClient(thread_server.address)
    with pytest.raises(error, match=message):
        client.prepare(timers)


@pytest.mark.parametrize(
    ("times", "error", "message"),
    [
        ((1.0,), TypeError, "one expiration time per prepared timer"),
        ((1.0, "soon"), TypeError, "expiration_time must be a number"),
        ((1.0, math.nan), ValueError, "got NaN"),
    ],
)
def test_prepared_acquire_checks_its_times(
    thread_server: UnixSocketTimerServer, times: tuple[float, ...], error: type, message: str
) -> None:
    client = UnixSocketTimerClient(thread_server.address)
    timers = client.prepare([("a", signal.SIGKILL), ("b", signal.SIGKILL)])
    with pytest.raises(error, match=message):
        timers.acquire(*times)


@pytest.mark.parametrize(
    ("timers", "error"),
    [
        ([("scope", 1.0, "9")], TypeError),
        ([("scope", 1.0, signal.NSIG)], ValueError),
        ([("scope", "soon", signal.SIGKILL)], TypeError),
        ([("x" * (ust.MAX_SCOPE_BYTES + 1), 1.0, signal.SIGKILL)], ValueError),
    ],
)
def test_acquire_many_checks_every_timer(
    thread_server: UnixSocketTimerServer, timers: list[tuple[str, float, int]], error: type
) -> None:
    client = UnixSocketTimerClient(thread_server.address)
    with pytest.raises(error):
        client.acquire_many(timers)


def _kill_a_hung_child(server: UnixSocketTimerServer) -> int:
    """Start ``server``, have it kill a child that hangs past its timer, stop it; the
    child's PID."""
    server.start()
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", PRELUDE + textwrap.dedent(HANG)], env=env_of(server)
        )
        try:
            assert child.wait(timeout=10) == -signal.SIGKILL
        finally:
            child.kill()
            child.wait()
    finally:
        server.stop()
    return child.pid


def test_on_expired_is_told_first_and_its_text_is_logged(
    caplog_info: pytest.LogCaptureFixture,
) -> None:
    calls: list[tuple[int, list[FileTimerRequest]]] = []

    def on_expired(pid: int, timers: list[FileTimerRequest]) -> str:
        calls.append((pid, timers))
        assert psutil.pid_exists(pid)  # not killed yet
        return f"stacks of {pid}"

    server = UnixSocketTimerServer(run_id="my-run", on_expired=on_expired)
    child_pid = _kill_a_hung_child(server)
    assert [(pid, [t.scope_id for t in timers]) for pid, timers in calls] == [(child_pid, ["hang"])]
    assert calls[0][1][0].signal == signal.SIGKILL
    assert "Timers expired for run:[my-run]" in caplog_info.text
    assert f"stacks of {child_pid}" in caplog_info.text


def test_an_expiry_on_expired_logs_itself_is_left_out_of_the_servers_record(
    caplog_info: pytest.LogCaptureFixture,
) -> None:
    # A callback that diagnoses off the server's loop logs the expiry later, with
    # its stacks: the server's own record would be a second one, without them.
    server = UnixSocketTimerServer(
        run_id="my-run", on_expired=lambda pid, timers: Logged.BY_CALLBACK
    )
    _kill_a_hung_child(server)
    assert "Timers expired" not in caplog_info.text


# ------------------------------------------------------------------ identity


def test_a_forked_childs_timer_is_the_childs_not_the_parents(
    server: UnixSocketTimerServer,
) -> None:
    result = run_python(
        """
        client = UnixSocketTimerClient.from_env(ADDRESS_ENV)
        client.acquire("parent", time.time() + 30)
        pid = os.fork()
        if pid == 0:
            die_with_parent()
            client.acquire("child", time.time() + 0.3)  # same object, the child's connection
            time.sleep(30)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
        client.release("parent")
        """,
        env_of(server),
    )
    # Attributed to the parent, the timer would have killed the parent.
    assert (result.returncode, result.stdout) == (0, f"{-signal.SIGKILL}\n"), result.stderr


def test_an_orphaned_grandchild_is_not_signalled(
    thread_server: UnixSocketTimerServer,
    caplog_info: pytest.LogCaptureFixture,
    short_dir: str,
) -> None:
    armed = os.path.join(short_dir, "armed")
    result = run_python(
        """
        pid = os.fork()
        if pid == 0:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            parent = os.getppid()
            while os.getppid() == parent:
                time.sleep(0.01)
            client = UnixSocketTimerClient.from_env(ADDRESS_ENV)
            client.acquire("orphan", time.time() + 0.2)
            open(sys.argv[1], "w").close()
            time.sleep(10)
            os._exit(0)
        print(pid)
        """,
        env_of(thread_server),
        armed,
    )
    orphan = psutil.Process(int(result.stdout))
    try:
        wait_until(lambda: os.path.exists(armed))
        wait_until(lambda: f"refusing to signal {orphan.pid}: not a descendant" in caplog_info.text)
        assert orphan.status() != psutil.STATUS_ZOMBIE
    finally:
        orphan.kill()  # psutil checks it is still the same process


def test_only_descendants_of_the_host_are_signalled(
    caplog_info: pytest.LogCaptureFixture,
) -> None:
    # A server created inside a watchdog process names the process it
    # watches as its host: a process outside that tree is never signalled,
    # though it descends from the process that runs the server.
    other_host = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    server = UnixSocketTimerServer(host_pid=other_host.pid)
    server.start()
    try:
        result = run_python(
            """
            client = UnixSocketTimerClient.from_env(ADDRESS_ENV)
            client.acquire("outside the host's tree", time.time() + 0.2)
            time.sleep(1.5)
            """,
            env_of(server),
        )
        assert result.returncode == 0, result.stderr
        assert "refusing to signal" in caplog_info.text
        assert f"not a descendant of host process {other_host.pid}" in caplog_info.text
    finally:
        server.stop()
        other_host.kill()
        other_host.wait()


# ------------------------------------------------------------------ client death


def test_a_dead_clients_timers_are_dropped(
    thread_server: UnixSocketTimerServer, caplog_info: pytest.LogCaptureFixture
) -> None:
    result = run_python(
        """
        client = UnixSocketTimerClient.from_env(ADDRESS_ENV)
        deadline = time.time() + 0.3
        client.acquire("left-behind", deadline)
        print(os.getpid(), deadline)
        """,
        env_of(thread_server),
    )
    pid, deadline = result.stdout.split()
    wait_until(lambda: f"timer client {pid} closed its" in caplog_info.text)
    assert "dropping its 1 timer(s): ['left-behind']" in caplog_info.text
    assert len(thread_server._timers) == 0
    time.sleep(max(0.0, float(deadline) + 0.1 - time.time()))
    assert "Timers expired" not in caplog_info.text


def test_timers_stay_while_another_connection_of_the_process_lives(
    sleepy_server: UnixSocketTimerServer, caplog_info: pytest.LogCaptureFixture
) -> None:
    first = UnixSocketTimerClient(sleepy_server.address)
    second = UnixSocketTimerClient(sleepy_server.address)
    # Each deadline before the server's next wake-up, so that it reads them now.
    first.acquire("armed-by-first", time.time() + 30)
    second.acquire("armed-by-second", time.time() + 20)
    wait_until(lambda: len(sleepy_server._timers) == 2)
    second.close()
    wait_until(lambda: "1 remain" in caplog_info.text)
    assert len(sleepy_server._timers) == 2
    first.close()
    wait_until(lambda: len(sleepy_server._timers) == 0)
    assert "dropping its 2 timer(s)" in caplog_info.text


# ------------------------------------------------------------------ files and peers


@pytest.mark.parametrize("process", [False, True], ids=["thread", "process"])
def test_the_socket_and_its_directory_are_private(process: bool, short_dir: str) -> None:
    servers = [
        UnixSocketTimerServer(),
        UnixSocketTimerServer(format_address(os.path.join(short_dir, "s.sock"))),
    ]
    old_umask = os.umask(0)
    try:
        for server in servers:
            server.start(process=process)
    finally:
        os.umask(old_umask)
    try:
        default, explicit = (parse_address(server.address) for server in servers)
        assert stat.S_IMODE(os.stat(default).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(default)).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(explicit).st_mode) == 0o600
    finally:
        for server in servers:
            server.stop()
    assert not os.path.exists(os.path.dirname(default))
    assert not os.path.exists(explicit)
    assert os.path.isdir(short_dir)  # not ours to remove


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
def test_a_client_of_another_user_is_refused(
    short_dir: str, caplog_info: pytest.LogCaptureFixture
) -> None:
    path = os.path.join(short_dir, "s.sock")
    server = UnixSocketTimerServer(path)
    server.start()
    try:
        os.chmod(short_dir, 0o711)
        os.chmod(path, 0o777)  # let the other user reach it: the server must still refuse
        result = run_python(
            """
            os.setgid(65534)
            os.setuid(65534)
            try:
                UnixSocketTimerClient(sys.argv[1])
            except ust.TimerServerError as exc:
                print(exc)
            """,
            os.environ.copy(),
            path,
        )
    finally:
        server.stop()
    assert "refused this process" in result.stdout, result.stderr
    assert "runs as uid 65534" in caplog_info.text


def test_what_sits_at_the_address_is_respected(short_dir: str) -> None:
    path = os.path.join(short_dir, "s.sock")
    with open(path, "w") as file:
        file.write("not a socket")
    with pytest.raises(FileExistsError, match="not a socket"):
        UnixSocketTimerServer(path).start()
    with open(path) as file:
        assert file.read() == "not a socket"
    os.unlink(path)

    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(path)
    stale.close()
    first = UnixSocketTimerServer(path)
    first.start()  # replaces the stale socket
    try:
        with pytest.raises(OSError, match="already listening") as info:
            UnixSocketTimerServer(path).start()
        assert info.value.errno == errno.EADDRINUSE
        client = UnixSocketTimerClient(path)  # the first server still serves
        client.acquire("s", time.time() + 60)
    finally:
        first.stop()
    assert not os.path.exists(path)


def test_stop_is_prompt_removes_the_socket_and_the_server_restarts() -> None:
    server = UnixSocketTimerServer(max_interval=60)
    path = parse_address(server.address)
    for process in (False, True, False):
        server.start(process=process)
        client = UnixSocketTimerClient(server.address)
        client.acquire("far", time.time() + 600)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 0.5
        assert not server.is_running
        assert not os.path.exists(path)
        assert not os.path.exists(os.path.dirname(path))
        with pytest.raises(TimerServerError):
            client.acquire("far", time.time() + 600)


def test_a_forked_child_does_not_keep_a_stopped_thread_servers_files_open() -> None:
    """A child forked while the server runs closes its copies of the server's descriptors.

    Otherwise the child would keep the clients' pipes open for reading, and a
    client would not learn that the server stopped.
    """
    result = run_python(
        """
        import warnings
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with a thread running
        server = ust.UnixSocketTimerServer()
        server.start()
        client = UnixSocketTimerClient(server.address)
        client.acquire("a", time.time() + 60)
        hold_read, hold_write = os.pipe()
        ready_read, ready_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            die_with_parent()
            os.close(hold_write)
            os.write(ready_write, b"x")  # the fork handlers have run
            os.read(hold_read, 1)  # lives until the parent is done
            os._exit(0)
        os.read(ready_read, 1)
        server.stop()
        try:
            client.acquire("b", time.time() + 60)
            print("no error")
        except ust.TimerServerError:
            print("lost")
        os.close(hold_write)
        os.waitpid(pid, 0)
        """,
        os.environ.copy(),
    )
    assert (result.returncode, result.stdout) == (0, "lost\n"), result.stderr


def test_admit_must_come_before_a_watchdog_process_starts() -> None:
    server = UnixSocketTimerServer()
    server.admit(12345)
    server.start(process=True)
    try:
        with pytest.raises(RuntimeError, match="before start"):
            server.admit(23456)
    finally:
        server.stop()


# ------------------------------------------------------------------ hostile peers


def frame(op: int, expiration_time: float, signum: int, scope: bytes) -> bytes:
    """A request on a client's pipe with any op, time and signal (a child script has one too)."""
    return ust._HEADER.pack(ust._HEADER_SIZE + len(scope), op, expiration_time, signum) + scope


FRAME_SOURCE = """
def frame(op, expiration_time, signum, scope):
    return ust._HEADER.pack(ust._HEADER_SIZE + len(scope), op, expiration_time, signum) + scope
"""


def test_garbage_is_dropped_alone_and_the_good_request_after_it_is_honoured(
    thread_server: UnixSocketTimerServer, caplog_info: pytest.LogCaptureFixture
) -> None:
    result = run_python(
        FRAME_SOURCE
        + textwrap.dedent(
            """
        import array, math, socket
        def send(sock, message, fds=()):
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
            sock.sendmsg([message], ancillary if fds else [])

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.connect(ust.parse_address(os.environ[ADDRESS_ENV]))
        not_a_pipe = os.open(os.devnull, os.O_RDONLY)
        send(sock, b"")
        send(sock, b"junk")
        send(sock, ust._HELLO)
        send(sock, ust._HELLO, [not_a_pipe])
        send(sock, b"x" * 100)
        read_end, write_end = os.pipe()
        send(sock, ust._HELLO, [read_end])
        assert sock.recv(64) == ust._WELCOME
        soon = time.time() + 0.3
        os.write(write_end, b"".join([
            frame(9, soon, 9, b"bad-op"),
            frame(1, math.nan, 9, b"nan"),
            frame(1, -5.0, 9, b"negative"),
            frame(1, soon, 9, b"\\xff\\xfe"),
            frame(1, soon, signal.NSIG, b"bad-signal"),
            frame(1, soon, 9, b"good"),
        ]))
        sock.send(ust._WAKE)
        time.sleep(30)
        """
        ),
        env_of(thread_server),
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert caplog_info.text.count("dropping a malformed control message") == 5
    assert "dropped 5 malformed request(s)" in caplog_info.text
    assert '"scope_id": "good"' in caplog_info.text


def test_a_corrupt_stream_ends_only_its_connection(
    thread_server: UnixSocketTimerServer, caplog_info: pytest.LogCaptureFixture
) -> None:
    other = UnixSocketTimerClient(thread_server.address)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    read_end, write_end = os.pipe()
    try:
        sock.connect(parse_address(thread_server.address))
        sock.sendmsg(
            [ust._HELLO],
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [read_end]))],
        )
        assert sock.recv(64) == ust._WELCOME
        os.write(write_end, frame(1, time.time() + 0.1, 0, b"ok") + b"\x03\x00" + b"garbage" * 3)
        sock.send(ust._WAKE)
        sock.settimeout(5)
        # The server closed this connection (with our wake-up unread: a reset).
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(64) == b""
    finally:
        sock.close()
        os.close(read_end)
        os.close(write_end)
    assert "is corrupt" in caplog_info.text
    other.acquire("still-served", time.time() + 0.1)
    wait_until(lambda: '"scope_id": "still-served"' in caplog_info.text)


def test_the_server_survives_a_flood_of_wake_ups(thread_server: UnixSocketTimerServer) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.connect(parse_address(thread_server.address))
        sock.setblocking(False)
        for _ in range(5000):
            try:
                sock.send(ust._WAKE)
            except BlockingIOError:
                break
        result = run_python(HANG, env_of(thread_server))
        assert result.returncode == -signal.SIGKILL, result.stderr
    finally:
        sock.close()


ARMS_AND_WAITS = """
import sys, time
from pytest_expire.timer.unix_socket_timer import UnixSocketTimerClient

client = UnixSocketTimerClient(sys.argv[1], signal=0)
client.acquire("late", time.time() + 0.1)
time.sleep(30)
"""


@pytest.mark.parametrize("descends", [True, False], ids=["descendant", "stranger"])
def test_worker_pidfd_names_the_process_that_armed_the_timer(descends: bool) -> None:
    # An on_expired that acts later signals through the pidfd it takes in
    # the server's thread; a process that does not descend from the host
    # gets none.
    stranger_host = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    taken: list[int | None] = []
    server = UnixSocketTimerServer(
        on_expired=lambda pid, timers: taken.append(server.worker_pidfd(pid)),
        host_pid=None if descends else stranger_host.pid,
    )
    server.start()
    worker = subprocess.Popen([sys.executable, "-c", ARMS_AND_WAITS, server.address])
    try:
        wait_until(lambda: taken, timeout=10)
        (pidfd,) = taken
        if not descends:
            assert pidfd is None
            return
        assert pidfd is not None
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
            assert worker.wait(timeout=10) == -signal.SIGTERM
        finally:
            os.close(pidfd)
    finally:
        server.stop()
        for process in (worker, stranger_host):
            process.kill()
            process.wait()
