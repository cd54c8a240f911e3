#!/usr/bin/env python3
"""Timer servers side by side: ours and torch's, measured the same way on one machine.

Run::

    python benchmarks/timer_servers.py [--quick] [--only NAME...] [--samples N]
                                       [--torch-python PATH] [--no-torch] [--json PATH]

and it prints one Markdown table, a row per pair (a server and its client):

- ``local``, ``file``, ``socket``: this project's ``LocalTimerServer``,
  ``FileTimerServer`` and ``UnixSocketTimerServer`` at their default settings
  (a pair whose module does not import is reported as not measured);
- ``torch-local``, ``torch-file``: torch's ``LocalTimerServer`` and
  ``FileTimerServer`` at their defaults, and ``torch-local@0.01``,
  ``torch-file@0.01``, the same tuned to ``max_interval=0.01``.

``--only`` takes names or shell patterns (``--only local 'torch-*'``).

Where torch runs. torch is never a dependency and never imported by the
interpreter that measures our pairs. After our rows are done, this same
script is run by an interpreter that has torch, with ``--internal-torch``, as
a subprocess; it measures torch's rows the same way and hands them back as
JSON, so one command prints one table. Keeping the two apart means each
side's memory and CPU figures carry only its own imports. The interpreter is
``--torch-python``, else ``$PYTEST_EXPIRE_TORCH_PYTHON`` (the variable the
interop tests use), else the running one if it has a ``torch`` package; with
none of these (or ``--no-torch``) torch's rows say "not measured".

How every server runs
---------------------
The driver (this script's process) creates the server object, then forks a
*host* process that calls ``server.start()`` (a watchdog thread: the mode all
five servers have) and otherwise only answers the driver (how many timers are
live, ``stop()``). The host is the server process whose CPU time and RSS are
measured with psutil. Workers and clients are forked from the driver; our
servers signal only descendants of the process that created the server
object, which is the driver, as a test runner would be. Every process the
script starts dies with the driver (``PR_SET_PDEATHSIG``) and is killed and
reaped before the script exits, also on Ctrl-C, SIGTERM or an error; FIFOs and
sockets live in a ``tempfile.mkdtemp()`` directory removed at the end.

What is measured, and why this way
----------------------------------
Latency, deadline -> worker killed (p50 / p99 / max, ms). A worker process
creates its client, arms a timer to expire 30-50 ms later (random, so a
polling server's phase is sampled), sends the timer's ``expiration_time`` to
the driver, and sleeps. The driver waits in ``poll()`` on the worker's pidfd;
latency is the wall-clock time it saw the death minus ``expiration_time``.
That is what a user waits for: the server's wake-up, its checks, the signal,
the kernel tearing the worker down, and the parent being told. Measured with
no other live timer, and with 10,000 others armed beforehand by a holder
process (deadlines an hour away), so that a server whose rounds scan all
timers shows it. The samples are taken one after another on one server,
except for torch:

- at their defaults torch's servers poll (``LocalTimerServer``: a lone
  worker's timer is seen ``max_interval`` = 60 s after its request arrived;
  ``FileTimerServer``: up to about 11 s), so those rows take few samples
  (``n=`` in the table), each on a server of its own, all at the same time,
  and a wait is cut at ``--cap`` seconds: ``>cap`` means the worker was still
  alive then (the script kills it);
- torch's ``FileTimerServer`` signals its own process after every reap (it
  kills itself), so each of its samples gets a new server and, with 10,000
  other timers, a new holder that arms them again (fewer samples).

With fewer than 100 samples, p99 is the maximum.

Throughput, one client (requests/s). A client process sends acquire/release
pairs (one scope, deadline an hour away) for ``--seconds`` seconds, counting
the requests N, then arms an already-expired timer on itself. The server
kills it once it has handled everything sent before, so
``N / (death - first send)`` is the rate at which the server *handled*
requests, whatever buffers sit between client and server. Three runs (one in
``--quick``), each with a fresh server; the table gives the median run, the
lines below it every run (on a 2-core machine the client's threads and the
server share two cores, and runs vary by tens of percent). (A
``multiprocessing.Queue`` client only hands requests to its feeder thread:
its own send rate, also printed below the table, says nothing about the
server.) A polling server adds up to one polling interval to the time; that
is why torch's rows appear both at their defaults and tuned. For the FIFO
pairs the table gives the number of ``BlockingIOError`` the client saw:
torch's client raises it when the pipe is full, and the benchmark's client
then sends again after 1 ms, as any caller would have to; ours waits for
room itself.

Client cost (us per acquire+release pair). A client process times batches of
100 pairs, each batch followed by a 20 ms pause, so that a batch fits in the
buffers between client and server and the server can drain them during the
pause: the figure is what ``with expires(...)`` costs the worker, not how fast
the server reads. Median over 100 batches, with 10,000 other timers live (the
mean over all pairs, occasional stalls included, is in the JSON output).
torch's ``FileTimerServer`` at its defaults sleeps 1 s whenever its FIFO is
empty, so its client is timed against the tuned server (the client is the
same).

Idle CPU (% of one core) of the server process over a few seconds, with
10,000 live timers, once all are registered: a server that polls burns CPU
here; one that sleeps until its next deadline does not.

``stop()`` (ms): how long ``server.stop()`` takes in the host, with 10,000
live timers. Cut at ``min(--cap, 15)`` s: torch's ``LocalTimerServer.stop()``
waits up to ``max_interval``.

Server RSS (MiB) of the host with 10,000 live timers. The host is a fork of
the driver, so this includes the interpreter and what the driver imported:
psutil and the timer library for our rows, all of torch for torch's.

Bytes per live timer: (RSS with 100,000 live timers - RSS before) / 100,000,
in a fresh server, the timers armed by one holder process with 33-character
scopes (a short pytest node id). RSS, not tracemalloc: it is what the machine
pays, allocator slack included. Measured at the defaults only (the tables are
the same when tuned).

Others' CPU (% of one core): what the machine's other processes used while
the row was measured (its busy time from ``/proc/stat`` less this script's
and its children's CPU time). The script cannot control them: a row measured
while they used much CPU has its throughput and client cost understated. The
line above the table gives the same for the whole run, and the hypervisor's
steal time.

Two helpers of the harness, neither of which touches the servers: the number
of live timers, which tells the driver that a holder's timers are all
registered, is read from the server's private ``_timers``; and a holder of a
FIFO pair first enlarges the FIFO's pipe to 1 MiB (``F_SETPIPE_SZ``), because
torch's reader sleeps 1 s whenever the FIFO is empty and 10,000 requests would
otherwise take about 20 s to get through a 64 KiB pipe (the throughput and
client-cost clients never do this). ``--quick`` takes fewer samples, shorter
windows, 10,000 timers for the memory figure and none of torch's, and ends in
about a minute and a half with torch's rows, a few seconds per pair of ours.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import fnmatch
import importlib
import importlib.util
import itertools
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import platform
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any

import psutil

FORK = multiprocessing.get_context("fork")

OURS_LOCAL = "pytest_expire.timer.local_timer"
OURS_FILE = "pytest_expire.timer.file_based_local_timer"
OURS_SOCKET = "pytest_expire.timer.unix_socket_timer"
TORCH_LOCAL = "torch.distributed.elastic.timer.local_timer"
TORCH_FILE = "torch.distributed.elastic.timer.file_based_local_timer"
TORCH_PYTHON_VARIABLE = "PYTEST_EXPIRE_TORCH_PYTHON"

OTHER_TIMERS = 10_000
FAR_AWAY = 3600.0  # the deadline of timers that must not expire, from now
BLOCKED_RETRY = 0.001  # a client that saw BlockingIOError sends again after this long
COST_BATCH = 100  # acquire+release pairs per client-cost batch
COST_PAUSE = 0.02  # between client-cost batches
READY_TIMEOUT = 60.0
PIPE_SIZE = 1 << 20  # a FIFO holder's pipe
STOP_CAP = 15.0
_PR_SET_PDEATHSIG = 1


class BenchError(RuntimeError):
    """A measurement could not be taken."""


# ----------------------------------------------------------------------- settings


@dataclass
class Settings:
    samples: int  # latency samples per case, one server
    slow_samples: int  # latency samples per case, polling servers at their defaults
    one_shot_samples: int  # latency samples per case, servers that die after a reap
    cap: float  # seconds a latency sample waits at most
    seconds: float  # throughput: how long the client sends
    throughput_runs: int
    idle_window: float  # seconds over which idle CPU is measured
    cost_batches: int
    memory_timers: int
    quick: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        quick = args.quick
        samples = args.samples if args.samples is not None else (20 if quick else 100)
        return cls(
            samples=samples,
            slow_samples=args.slow_samples or (1 if quick else 2),
            one_shot_samples=max(1, min(samples, 5 if quick else 20)),
            cap=args.cap or (2.0 if quick else 65.0),
            seconds=args.seconds or (0.5 if quick else 1.0),
            throughput_runs=1 if quick else 3,
            idle_window=1.0 if quick else 3.0,
            cost_batches=max(3, samples) if quick else 100,
            memory_timers=10_000 if quick else 100_000,
            quick=quick,
        )


# ------------------------------------------------------------------------ the pairs


class Handle:
    """A server and what its clients need.

    Created in the driver (so that the driver's children are the server's
    host's descendants); ``start``/``count``/``stop`` run in the host,
    ``client`` in a forked worker.
    """

    server: Any

    def start(self) -> Any:
        """Start the server in this process; return what clients need to reach it."""
        self.server.start()
        return None

    def client(self, info: Any) -> Any:
        raise NotImplementedError

    def count(self) -> int | None:
        """How many timers the server holds (private state, read for the benchmark)."""
        timers = getattr(self.server, "_timers", None)
        return len(timers) if timers is not None else None

    def stop(self) -> None:
        self.server.stop()

    def before_holding(self) -> None:
        """Runs in a holder before it arms its timers."""

    def cleanup(self) -> None:
        """Remove what the server may have left (it may have been killed)."""


def _interval_kwargs(max_interval: float | None) -> dict[str, float]:
    return {} if max_interval is None else {"max_interval": max_interval}


class QueueHandle(Handle):
    def __init__(self, module: str, path: str, max_interval: float | None) -> None:
        mod = importlib.import_module(module)
        self.queue = FORK.Queue()
        self._client_class = mod.LocalTimerClient
        self.server = mod.LocalTimerServer(self.queue, **_interval_kwargs(max_interval))

    def client(self, info: Any) -> Any:
        return self._client_class(self.queue)


class FifoHandle(Handle):
    def __init__(self, module: str, path: str, max_interval: float | None) -> None:
        mod = importlib.import_module(module)
        self.path = path
        self._client_class = mod.FileTimerClient
        self.server = mod.FileTimerServer(path, "bench", **_interval_kwargs(max_interval))

    def client(self, info: Any) -> Any:
        return self._client_class(self.path)

    def before_holding(self) -> None:
        # torch's reader sleeps 1 s whenever it finds the FIFO empty, and a
        # 64 KiB pipe holds ~600 requests: arming 10,000 timers would take
        # ~20 s. A 1 MiB pipe (the pipe's size, kept while the server reads
        # it) takes them in one go. Only holders do this, never the
        # throughput client.
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: torch's thread has not opened it yet
                time.sleep(0.01)
                continue
            try:
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass
            finally:
                os.close(fd)
            return

    def cleanup(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class SocketHandle(Handle):
    def __init__(self, module: str, path: str, max_interval: float | None) -> None:
        mod = importlib.import_module(module)
        self.path = path
        self._client_class = mod.UnixSocketTimerClient
        address = mod.format_address(path)
        self.server = mod.UnixSocketTimerServer(address, **_interval_kwargs(max_interval))

    def client(self, info: Any) -> Any:
        return self._client_class(self.server.address)

    def cleanup(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


@dataclass(frozen=True)
class Pair:
    name: str
    label: str
    settings: str
    handle: Callable[[str, str, float | None], Handle]  # (module, path, max_interval)
    module: str
    max_interval: float | None = None
    torch: bool = False
    slow: bool = False  # detection takes seconds: parallel servers, few samples
    one_shot: bool = False  # the server kills itself after a reap
    client_cost: bool = True
    memory: bool = True

    def make(self, path: str) -> Handle:
        return self.handle(self.module, path, self.max_interval)


PAIRS = [
    Pair("local", "ours LocalTimerServer", "defaults (60 s)", QueueHandle, OURS_LOCAL),
    Pair("file", "ours FileTimerServer", "defaults (10 s)", FifoHandle, OURS_FILE),
    Pair("socket", "ours UnixSocketTimerServer", "defaults", SocketHandle, OURS_SOCKET),
    Pair(
        "torch-local",
        "torch LocalTimerServer",
        "defaults (60 s)",
        QueueHandle,
        TORCH_LOCAL,
        torch=True,
        slow=True,
    ),
    Pair(
        "torch-local@0.01",
        "torch LocalTimerServer",
        "max_interval=0.01",
        QueueHandle,
        TORCH_LOCAL,
        max_interval=0.01,
        torch=True,
        client_cost=False,
        memory=False,
    ),
    Pair(
        "torch-file",
        "torch FileTimerServer",
        "defaults (10 s)",
        FifoHandle,
        TORCH_FILE,
        torch=True,
        slow=True,
        one_shot=True,
        # Its reader sleeps 1 s whenever the FIFO is empty: the client cost
        # would measure those sleeps; the client is the same at 0.01.
        client_cost=False,
    ),
    Pair(
        "torch-file@0.01",
        "torch FileTimerServer",
        "max_interval=0.01",
        FifoHandle,
        TORCH_FILE,
        max_interval=0.01,
        torch=True,
        one_shot=True,
        memory=False,
    ),
]


# -------------------------------------------------------------------- the results


@dataclass
class Row:
    name: str
    label: str
    settings: str
    # Latency samples in ms; math.inf: not killed within cap seconds.
    latency_0: list[float] = field(default_factory=list)
    latency_others: list[float] = field(default_factory=list)
    cap: float = 0.0
    requests_per_s: float | None = None  # the median run
    throughput_runs: list[float] = field(default_factory=list)
    send_rate: float | None = None
    requests: int | None = None
    throughput_server_cpu: float | None = None
    blocking_errors: int | None = None
    client_us: float | None = None  # median over batches
    client_us_mean: float | None = None  # over all pairs, stalls included
    idle_cpu: float | None = None
    stop_ms: float | None = None  # math.inf: did not return within STOP_CAP
    stop_cap: float = STOP_CAP
    rss_mib: float | None = None
    bytes_per_timer: float | None = None
    # CPU other processes of the machine used while this row was measured, % of a core.
    other_load: float | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------- child processes

_SEQ = itertools.count()
_CHILDREN: list[BaseProcess] = []


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel kill this process when the driver dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the driver died before prctl took effect
        os._exit(1)


def _child_main(parent_pid: int, target: Callable[..., None], args: tuple[Any, ...]) -> None:
    # Ctrl-C reaches the whole process group; the driver kills its children.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent(parent_pid)
    target(*args)


def _spawn(target: Callable[..., None], *args: Any) -> BaseProcess:
    """Fork a child running ``target(*args)``; it is killed and reaped by :func:`_finish`."""
    process = FORK.Process(target=_child_main, args=(os.getpid(), target, args), daemon=True)
    process.start()
    _CHILDREN.append(process)
    return process


def _finish(process: BaseProcess) -> None:
    """Kill (if still alive) and reap a child."""
    with contextlib.suppress(ValueError):  # already closed
        if process.exitcode is None:
            process.kill()
        process.join()
        process.close()
    with contextlib.suppress(ValueError):
        _CHILDREN.remove(process)


def _finish_all() -> None:
    for process in list(_CHILDREN):
        _finish(process)


def _sleep_forever() -> None:
    while True:
        time.sleep(3600)


def _wait_deaths(pidfds: Sequence[int], timeout: float) -> dict[int, float]:
    """Wait until the processes behind ``pidfds`` die; the wall-clock time each death was seen."""
    poller = select.poll()
    for fd in pidfds:
        poller.register(fd, select.POLLIN)
    deaths: dict[int, float] = {}
    give_up_at = time.monotonic() + timeout
    while len(deaths) < len(pidfds):
        remaining = give_up_at - time.monotonic()
        if remaining <= 0:
            break
        events = poller.poll(math.ceil(remaining * 1000))
        now = time.time()
        for fd, _ in events:
            deaths[fd] = now
            poller.unregister(fd)
    return deaths


# ------------------------------------------------------------- what children run


def _host_main(handle: Handle, conn: multiprocessing.connection.Connection) -> None:
    """The server's process: start it, then answer the driver until told to stop."""
    conn.send(handle.start())
    while True:
        try:
            command = conn.recv()
        except EOFError:
            os._exit(0)
        if command == "count":
            conn.send(handle.count())
        elif command == "stop":
            started = time.perf_counter()
            handle.stop()
            conn.send(time.perf_counter() - started)
            conn.close()
            os._exit(0)


def _send(call: Callable[[str, float], None], scope: str, when: float) -> int:
    """``call(scope, when)``, retried on BlockingIOError; return how many there were."""
    errors = 0
    while True:
        try:
            call(scope, when)
            return errors
        except BlockingIOError:
            errors += 1
            time.sleep(BLOCKED_RETRY)


def _holder_main(
    handle: Handle, info: Any, count: int, conn: multiprocessing.connection.Connection
) -> None:
    """Arm ``count`` timers that will not expire, report the BlockingIOErrors, then sleep."""
    handle.before_holding()
    client = handle.client(info)
    expiration = time.time() + FAR_AWAY
    errors = 0
    for i in range(count):
        errors += _send(client.acquire, f"tests/test_bench.py::test_{i:07d}", expiration)
    conn.send(errors)
    conn.close()
    _sleep_forever()


def _latency_worker(
    handle: Handle, info: Any, after: float, conn: multiprocessing.connection.Connection
) -> None:
    """Arm a timer ``after`` seconds from now, tell the driver when it expires, and hang."""
    client = handle.client(info)
    expiration = time.time() + after
    client.acquire("latency", expiration)
    conn.send(expiration)
    conn.close()
    _sleep_forever()


def _throughput_client(
    handle: Handle, info: Any, seconds: float, conn: multiprocessing.connection.Connection
) -> None:
    """Send acquire/release pairs for ``seconds``, then an already-expired acquire."""
    client = handle.client(info)
    acquire, release = client.acquire, client.release
    expiration = time.time() + FAR_AWAY
    errors = 0
    sent = 0
    first = time.time()
    stop_at = time.perf_counter() + seconds
    while time.perf_counter() < stop_at:
        for _ in range(500):
            try:
                acquire("throughput", expiration)
            except BlockingIOError:
                errors += 1 + _send(acquire, "throughput", expiration)
            try:
                release("throughput")
            except BlockingIOError:
                errors += 1 + _send(lambda scope, _: release(scope), "throughput", 0.0)
        sent += 1000
    last = time.time()
    conn.send((first, last, sent, errors))
    conn.close()
    _send(acquire, "throughput-end", time.time() - 1.0)
    _sleep_forever()


def _cost_client(
    handle: Handle, info: Any, batches: int, conn: multiprocessing.connection.Connection
) -> None:
    """Time batches of acquire+release pairs; report us per pair for the clean batches."""
    client = handle.client(info)
    acquire, release = client.acquire, client.release
    expiration = time.time() + FAR_AWAY
    per_pair: list[float] = []
    errors = 0
    total_ns = 0
    for _ in range(batches):
        clean = True
        started = time.perf_counter_ns()
        for _ in range(COST_BATCH):
            try:
                acquire("cost", expiration)
                release("cost")
            except BlockingIOError:
                clean = False
                errors += 1
                time.sleep(BLOCKED_RETRY)
        elapsed = time.perf_counter_ns() - started
        total_ns += elapsed
        if clean:
            per_pair.append(elapsed / COST_BATCH / 1000)
        time.sleep(COST_PAUSE)
    with contextlib.suppress(BlockingIOError):
        release("cost")
    conn.send((per_pair, errors, total_ns / 1000 / (batches * COST_BATCH)))
    conn.close()


# ------------------------------------------------------------------ a server host


class Instance:
    """One server, running in a host process of its own, and its holder of timers."""

    def __init__(self, pair: Pair, workdir: str) -> None:
        self.pair = pair
        self.holder: BaseProcess | None = None
        self._holder_reader: multiprocessing.connection.Connection | None = None
        self._held = 0
        self.handle = pair.make(os.path.join(workdir, f"s{next(_SEQ)}"))
        self._conn, child_conn = FORK.Pipe()
        try:
            self.host = _spawn(_host_main, self.handle, child_conn)
        finally:
            child_conn.close()
        try:
            if not self._conn.poll(READY_TIMEOUT):
                raise EOFError
            self.info = self._conn.recv()
        except EOFError:
            self.close()
            raise BenchError(f"{pair.name}: the server did not start") from None
        self.process = psutil.Process(self.host.pid)

    def __enter__(self) -> Instance:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.holder is not None:
            _finish(self.holder)
            self.holder = None
        if self._holder_reader is not None:
            self._holder_reader.close()
        _finish(self.host)
        self._conn.close()
        self.handle.cleanup()

    def count(self) -> int | None:
        try:
            self._conn.send("count")
            if self._conn.poll(10):
                value: int | None = self._conn.recv()
                return value
        except (OSError, EOFError):
            pass
        raise BenchError(f"{self.pair.name}: the server process is gone")

    def wait_for_timers(self, count: int, timeout: float) -> None:
        """Wait until the server holds ``count`` timers (or, if it cannot tell, goes quiet)."""
        give_up_at = time.monotonic() + timeout
        if self.count() is None:
            self.wait_quiet(timeout)
            return
        while True:
            held = self.count()
            if held is not None and held >= count:
                return
            if time.monotonic() > give_up_at:
                raise BenchError(
                    f"{self.pair.name}: {held} of {count} timers registered after {timeout} s"
                )
            time.sleep(0.02)

    def wait_quiet(self, timeout: float) -> None:
        """Wait until the server process uses (almost) no CPU for 0.3 s."""
        give_up_at = time.monotonic() + timeout
        last = self.cpu_seconds()
        while time.monotonic() < give_up_at:
            time.sleep(0.3)
            now = self.cpu_seconds()
            if now - last < 0.003:
                return
            last = now

    def start_holder(self, count: int) -> None:
        """Have a holder process arm ``count`` timers that will not expire."""
        reader, writer = FORK.Pipe(duplex=False)
        try:
            self.holder = _spawn(_holder_main, self.handle, self.info, count, writer)
        finally:
            writer.close()
        self._holder_reader = reader
        self._held = count

    def wait_holder(self, timeout: float) -> None:
        """Wait until the holder's timers are all registered."""
        reader, self._holder_reader = self._holder_reader, None
        assert reader is not None, "start_holder() first"
        with reader:
            if not reader.poll(timeout):
                raise BenchError(f"{self.pair.name}: the holder did not arm {self._held} timers")
            reader.recv()
        self.wait_for_timers(self._held, timeout)

    def hold(self, count: int, timeout: float) -> None:
        self.start_holder(count)
        self.wait_holder(timeout)

    def cpu_seconds(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def cpu_percent(self, window: float) -> float:
        before = self.cpu_seconds()
        started = time.monotonic()
        time.sleep(window)
        return 100 * (self.cpu_seconds() - before) / (time.monotonic() - started)

    def rss(self) -> int:
        return int(self.process.memory_info().rss)

    def stop(self, cap: float) -> float:
        """Call ``stop()`` in the host; seconds it took, or math.inf past ``cap``."""
        self._conn.send("stop")
        if not self._conn.poll(cap):
            return math.inf
        try:
            seconds: float = self._conn.recv()
        except EOFError as exc:
            raise BenchError(f"{self.pair.name}: the server process died in stop()") from exc
        return seconds


# ------------------------------------------------------------------ measurements


def _start_latency_worker(instance: Instance) -> tuple[BaseProcess, int, Any]:
    after = 0.03 + 0.02 * random.random()
    reader, writer = FORK.Pipe(duplex=False)
    try:
        worker = _spawn(_latency_worker, instance.handle, instance.info, after, writer)
    finally:
        writer.close()
    assert worker.pid is not None
    return worker, os.pidfd_open(worker.pid), reader


def _latency_samples(instances: Sequence[Instance], cap: float) -> list[float]:
    """One sample per instance, all at once: deadline -> death seen, in ms (inf: > cap)."""
    started = [_start_latency_worker(instance) for instance in instances]
    try:
        deaths = _wait_deaths([pidfd for _, pidfd, _ in started], 0.05 + cap)
        samples = []
        for worker, pidfd, reader in started:
            expiration = reader.recv() if reader.poll(0) else None
            if expiration is None:
                _finish(worker)
                raise BenchError(
                    f"a latency worker died before arming its timer (exit code {worker.exitcode})"
                )
            died = deaths.get(pidfd)
            samples.append(math.inf if died is None else 1000 * (died - expiration))
        return samples
    finally:
        for worker, pidfd, reader in started:
            os.close(pidfd)
            reader.close()
            _finish(worker)


def measure_latency(pair: Pair, settings: Settings, workdir: str, row: Row) -> None:
    row.cap = settings.cap
    if pair.slow:
        # Each sample on a server of its own, all at once: a sample is a wait of
        # up to max_interval, and one server's samples would wake each other.
        count = settings.slow_samples
        _progress(f"{pair.name}: latency, {count}+{count} samples on servers of their own")
        instances: list[Instance] = []
        try:
            for others in [0] * count + [OTHER_TIMERS] * count:
                instances.append(Instance(pair, workdir))
                if others:
                    instances[-1].start_holder(others)
            for instance in instances[count:]:
                instance.wait_holder(120)
            samples = _latency_samples(instances, settings.cap)
        finally:
            for instance in instances:
                instance.close()
        row.latency_0, row.latency_others = samples[:count], samples[count:]
    elif pair.one_shot:
        count = settings.one_shot_samples
        for others, into in ((0, row.latency_0), (OTHER_TIMERS, row.latency_others)):
            _progress(f"{pair.name}: latency, {others} other timers, {count} fresh servers")
            for _ in range(count):
                with Instance(pair, workdir) as instance:
                    if others:
                        instance.hold(others, 120)
                    into += _latency_samples([instance], settings.cap)
    else:
        with Instance(pair, workdir) as instance:
            _progress(f"{pair.name}: latency, no other timer, {settings.samples} samples")
            for _ in range(settings.samples):
                row.latency_0 += _latency_samples([instance], settings.cap)
            _progress(f"{pair.name}: latency, {OTHER_TIMERS} other timers")
            instance.hold(OTHER_TIMERS, 120)
            for _ in range(settings.samples):
                row.latency_others += _latency_samples([instance], settings.cap)


def measure_state(pair: Pair, settings: Settings, workdir: str, row: Row) -> None:
    """Idle CPU, RSS, client cost and stop(), with 10,000 live timers."""
    _progress(f"{pair.name}: idle CPU, RSS, client cost, stop() with {OTHER_TIMERS} timers")
    with Instance(pair, workdir) as instance:
        instance.hold(OTHER_TIMERS, 120)
        time.sleep(0.5)
        row.idle_cpu = instance.cpu_percent(settings.idle_window)
        row.rss_mib = instance.rss() / 2**20
        if pair.client_cost:
            reader, writer = FORK.Pipe(duplex=False)
            try:
                client = _spawn(
                    _cost_client, instance.handle, instance.info, settings.cost_batches, writer
                )
            finally:
                writer.close()
            with reader:
                if not reader.poll(120):
                    raise BenchError(f"{pair.name}: the client-cost client did not finish")
                per_pair, errors, mean = reader.recv()
            _finish(client)
            if per_pair:
                row.client_us = _percentile(sorted(per_pair), 50)
                row.client_us_mean = mean
            if errors:
                row.notes.append(f"client cost: {errors} BlockingIOError (those batches dropped)")
        row.stop_cap = min(settings.cap, STOP_CAP)
        row.stop_ms = 1000 * instance.stop(row.stop_cap)


@dataclass
class Throughput:
    requests: int
    per_s: float  # handled: requests / (death - first send)
    send_rate: float  # requests / (last send - first send), as the client saw it
    blocking_errors: int
    server_cpu: float  # % of one core, from the client's start to its death


def _one_throughput_run(pair: Pair, settings: Settings, workdir: str) -> Throughput:
    with Instance(pair, workdir) as instance:
        reader, writer = FORK.Pipe(duplex=False)
        try:
            client = _spawn(
                _throughput_client, instance.handle, instance.info, settings.seconds, writer
            )
        finally:
            writer.close()
        assert client.pid is not None
        pidfd = os.pidfd_open(client.pid)
        cpu_before, started = instance.cpu_seconds(), time.monotonic()
        try:
            # The server may still have a backlog when the client is done.
            deaths = _wait_deaths([pidfd], settings.seconds + 120)
        finally:
            os.close(pidfd)
            with reader:
                report = reader.recv() if reader.poll(0) else None
            _finish(client)
        if report is None:
            raise BenchError(f"{pair.name}: the throughput client died early")
        if pidfd not in deaths:
            raise BenchError(f"{pair.name}: the throughput client was not killed within 120 s")
        server_cpu = 100 * (instance.cpu_seconds() - cpu_before) / (time.monotonic() - started)
    first, last, sent, errors = report
    return Throughput(
        sent, sent / (deaths[pidfd] - first), sent / (last - first), errors, server_cpu
    )


def measure_throughput(pair: Pair, settings: Settings, workdir: str, row: Row) -> None:
    runs = settings.throughput_runs
    _progress(f"{pair.name}: throughput, one client, {runs} x {settings.seconds} s")
    results = sorted(
        (_one_throughput_run(pair, settings, workdir) for _ in range(runs)),
        key=lambda run: run.per_s,
    )
    median = results[len(results) // 2]
    row.throughput_runs = [run.per_s for run in results]
    row.requests = median.requests
    row.requests_per_s = median.per_s
    row.send_rate = median.send_rate
    row.throughput_server_cpu = median.server_cpu
    if pair.handle is FifoHandle:
        row.blocking_errors = median.blocking_errors


def measure_memory(pair: Pair, settings: Settings, workdir: str, row: Row) -> None:
    count = settings.memory_timers
    _progress(f"{pair.name}: memory, {count} timers")
    with Instance(pair, workdir) as instance:
        instance.wait_quiet(5)
        before = instance.rss()
        instance.hold(count, 600)
        instance.wait_quiet(30)
        row.bytes_per_timer = (instance.rss() - before) / count


def measure_pair(pair: Pair, settings: Settings, workdir: str) -> Row:
    row = Row(pair.name, pair.label, pair.settings)
    load = _LoadMeter()
    steps: list[Callable[[Pair, Settings, str, Row], None]] = [
        measure_latency,
        measure_state,
        measure_throughput,
    ]
    if pair.memory and not (settings.quick and pair.torch):
        steps.append(measure_memory)
    for step in steps:
        try:
            step(pair, settings, workdir, row)
        except BenchError as exc:
            _progress(f"{pair.name}: {exc}")
            row.notes.append(str(exc))
        finally:
            _finish_all()
    row.other_load = load.percents()[0]
    return row


# ------------------------------------------------------------------------- output


def _percentile(values: Sequence[float], percent: float) -> float:
    """Nearest-rank percentile of sorted ``values``."""
    rank = max(1, math.ceil(percent / 100 * len(values)))
    return values[rank - 1]


def _ms(value: float, cap: float) -> str:
    if math.isinf(value):
        return f">{cap:g} s"
    if value >= 10_000:
        return f"{value / 1000:.1f} s"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _latency_cell(samples: list[float], cap: float) -> str:
    if not samples:
        return "—"
    values = sorted(samples)
    cells = [_ms(_percentile(values, p), cap) for p in (50, 99, 100)]
    return f"{' / '.join(cells)} (n={len(values)})"


def _number(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def format_table(rows: Sequence[Row]) -> str:
    header = [
        "pair",
        "max_interval",
        "deadline→killed ms p50 / p99 / max, no other timer",
        f"same, {OTHER_TIMERS:,} other timers",
        "requests/s, 1 client",
        "BlockingIOError",
        "µs per acquire+release",
        f"idle CPU % ({OTHER_TIMERS:,} timers)",
        "stop() ms",
        "server RSS MiB",
        "bytes per timer",
        "others' CPU %",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if row.error:
            cells = [row.name, row.settings, row.error] + [""] * (len(header) - 3)
        else:
            stop = (
                "—"
                if row.stop_ms is None
                else (f">{row.stop_cap:g} s" if math.isinf(row.stop_ms) else f"{row.stop_ms:.1f}")
            )
            cells = [
                f"{row.name}",
                row.settings,
                _latency_cell(row.latency_0, row.cap),
                _latency_cell(row.latency_others, row.cap),
                _number(row.requests_per_s, ",.0f"),
                "—" if row.blocking_errors is None else f"{row.blocking_errors:,}",
                _number(row.client_us, ".2f"),
                _number(row.idle_cpu, ".2f"),
                stop,
                _number(row.rss_mib, ".1f"),
                _number(row.bytes_per_timer, ".0f"),
                _number(row.other_load, ".0f"),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def describe_machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": str(os.cpu_count()),
        "cpu": model,
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


# ----------------------------------------------------------------------- driving


def _selected(patterns: Sequence[str] | None) -> list[Pair]:
    if not patterns:
        return list(PAIRS)
    chosen = [p for p in PAIRS if any(fnmatch.fnmatchcase(p.name, pat) for pat in patterns)]
    unknown = [pat for pat in patterns if not any(fnmatch.fnmatchcase(p.name, pat) for p in PAIRS)]
    if unknown:
        names = ", ".join(pair.name for pair in PAIRS)
        raise SystemExit(f"unknown pair(s) {', '.join(unknown)}; choose from {names}")
    return chosen


def _importable(module: str) -> str | None:
    """None if ``module`` imports, else why not."""
    try:
        importlib.import_module(module)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def run_pairs(pairs: Sequence[Pair], settings: Settings) -> list[Row]:
    """Measure ``pairs`` in this interpreter."""
    workdir = tempfile.mkdtemp(prefix="tsb")
    rows = []
    try:
        for pair in pairs:
            missing = _importable(pair.module)
            if missing is not None:
                _progress(f"{pair.name}: skipped, {missing}")
                row = Row(pair.name, pair.label, pair.settings, error=f"not measured: {missing}")
                rows.append(row)
                continue
            rows.append(measure_pair(pair, settings, workdir))
    finally:
        _finish_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return rows


class _LoadMeter:
    """How much CPU processes other than this script and its children used meanwhile.

    The machine's busy time (from /proc/stat) less this process's and its
    reaped children's CPU time (every child is reaped, the torch run's
    included), and the time the hypervisor stole.
    """

    def __init__(self) -> None:
        self._start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float, float]:
        machine = psutil.cpu_times()
        busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        ours = os.times()
        mine = ours.user + ours.system + ours.children_user + ours.children_system
        return time.monotonic(), busy, mine, getattr(machine, "steal", 0.0)

    def percents(self) -> tuple[float, float]:
        """CPU of other processes and stolen time so far, in % of one core."""
        end = self._sample()
        elapsed, busy, mine, steal = (b - a for a, b in zip(self._start, end, strict=True))
        others = max(0.0, busy - steal - mine)
        return 100 * others / elapsed, 100 * steal / elapsed

    def report(self) -> str:
        others, steal = self.percents()
        return f"other processes used {others:.0f} % of a core meanwhile, steal {steal:.0f} %"


def _torch_python(requested: str | None) -> str | None:
    """The interpreter for torch's rows: ``--torch-python``, else
    ``$PYTEST_EXPIRE_TORCH_PYTHON`` (as the interop tests use), else this one if
    it has a ``torch`` package; None if none of these.

    It is not probed: an interpreter without torch reports each torch row as
    not measured, with the import error.
    """
    python = requested or os.environ.get(TORCH_PYTHON_VARIABLE)
    if python:
        return python
    return sys.executable if importlib.util.find_spec("torch") is not None else None


def _child_dies_with_us() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def run_torch(
    pairs: Sequence[Pair], args: argparse.Namespace, python: str
) -> tuple[list[Row], dict[str, str]]:
    """Measure torch's ``pairs`` with this script in ``python``; return its rows."""
    handle, result_path = tempfile.mkstemp(prefix="tsb-torch-", suffix=".json")
    os.close(handle)
    command = [python, "-W", "ignore", os.path.abspath(__file__), "--internal-torch"]
    command += ["--json", result_path, "--only", *(pair.name for pair in pairs)]
    for option in ("samples", "slow_samples", "cap", "seconds"):
        value = getattr(args, option)
        if value is not None:
            command += [f"--{option.replace('_', '-')}", str(value)]
    if args.quick:
        command.append("--quick")
    _progress(f"torch: running {' '.join(command)}")
    try:
        child = subprocess.Popen(command, preexec_fn=_child_dies_with_us)
        try:
            returncode = child.wait()
        finally:
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(10)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
        if returncode != 0:
            raise BenchError(f"the torch run exited with {returncode}")
        with open(result_path) as results:
            data = json.load(results)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(result_path)
    return [Row(**row) for row in data["rows"]], data["machine"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the timer servers (ours and torch's) side by side.",
        epilog="Pairs: " + ", ".join(pair.name for pair in PAIRS),
    )
    parser.add_argument("--quick", action="store_true", help="fewer samples, shorter windows")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="pairs to run (shell patterns)")
    parser.add_argument("--samples", type=int, help="latency samples per case (100; quick: 20)")
    parser.add_argument(
        "--slow-samples",
        type=int,
        help="latency samples per case for torch's polling defaults (2; quick: 1)",
    )
    parser.add_argument(
        "--cap", type=float, help="seconds a latency sample waits at most (65; quick: 2)"
    )
    parser.add_argument(
        "--seconds", type=float, help="how long a throughput client sends (1; quick: 0.5)"
    )
    parser.add_argument(
        "--torch-python",
        metavar="PATH",
        help="interpreter with torch for torch's rows (default: this one, if it has torch)",
    )
    parser.add_argument("--no-torch", action="store_true", help="skip torch's rows")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--internal-torch", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings.from_args(args)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    pairs = _selected(args.only)
    machine = describe_machine()
    if args.internal_torch:
        import warnings

        warnings.simplefilter("ignore")  # torch warns that numpy is missing
        rows = run_pairs([pair for pair in pairs if pair.torch], settings)
        with open(args.json, "w") as out:
            json.dump({"rows": [asdict(row) for row in rows], "machine": machine}, out)
        return 0

    started = time.monotonic()
    load = _LoadMeter()
    rows = run_pairs([pair for pair in pairs if not pair.torch], settings)
    torch_pairs = [pair for pair in pairs if pair.torch]
    if torch_pairs:
        python = None if args.no_torch else _torch_python(args.torch_python)
        if python is None:
            why_not = (
                "--no-torch"
                if args.no_torch
                else f"no torch here; pass --torch-python or set {TORCH_PYTHON_VARIABLE}"
            )
            _progress(f"torch: skipped ({why_not})")
            rows += [
                Row(p.name, p.label, p.settings, error=f"not measured: {why_not}")
                for p in torch_pairs
            ]
        else:
            try:
                torch_rows, torch_machine = run_torch(torch_pairs, args, python)
                rows += torch_rows
                machine["torch python"] = f"{python} (Python {torch_machine['python']})"
            except BenchError as exc:
                rows += [Row(p.name, p.label, p.settings, error=str(exc)) for p in torch_pairs]
    order = {pair.name: index for index, pair in enumerate(PAIRS)}
    rows.sort(key=lambda row: order[row.name])

    machine["other load"] = load.report()
    print(
        f"\n{machine['cpus']} CPUs ({machine['cpu']}), {machine['memory']}, "
        f"Python {machine['python']}, Linux {machine['kernel']}; "
        f"{time.strftime('%Y-%m-%d')}, {time.monotonic() - started:.0f} s"
        + (" (--quick)" if args.quick else "")
        + f"; {machine['other load']}\n"
    )
    print(format_table(rows))
    notes = [f"- {row.name}: {note}" for row in rows for note in row.notes]
    notes += [
        f"- {row.name}: throughput runs {', '.join(f'{rate:,.0f}' for rate in row.throughput_runs)}"
        f" requests/s; median run: {row.requests:,} requests, sent at {row.send_rate:,.0f}/s, "
        f"server process CPU {row.throughput_server_cpu:.0f} % meanwhile"
        for row in rows
        if row.requests and row.send_rate and row.throughput_server_cpu is not None
    ]
    if notes:
        print("\n" + "\n".join(notes))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"rows": [asdict(row) for row in rows], "machine": machine}, out, default=str)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        _finish_all()
        sys.exit(130)
    finally:
        _finish_all()
