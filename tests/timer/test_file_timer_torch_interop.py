"""The named-pipe pair against torch's: our client with torch's server, torch's client with ours.

torch is not a dependency of this project and is not installed in its
environment; the torch side of each test runs in a subprocess of an
interpreter that has it. Which interpreter:

1. ``$PYTEST_EXPIRE_TORCH_PYTHON``, when set: the path of a Python that can
   import ``torch.distributed.elastic.timer``. Setting it asks for these
   tests, so if that interpreter is missing or cannot import torch, they fail
   rather than skip: an explicit request must not end in a silent skip.
2. Otherwise this interpreter, if it has a ``torch`` package (looked up with
   ``importlib.util.find_spec``, not imported: importing torch takes seconds).
3. Otherwise the tests are skipped, naming the variable to set.

The torch side reports a failed import on its first line instead of "ready",
so no separate probe (and no extra torch import) is needed. Each test starts
one torch process (about 4 s of it is importing torch) and otherwise waits on
events: a line from a process or its exit.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys

import pytest
from processes import read_line

from pytest_expire.timer.file_based_local_timer import FileTimerRequest, FileTimerServer

TORCH_PYTHON_VARIABLE = "PYTEST_EXPIRE_TORCH_PYTHON"
# Importing torch is slow, the more so on a busy CI machine.
TORCH_START_TIMEOUT = 60.0

_IMPORT_TORCH = r"""
import sys
try:
    import torch.distributed.elastic.timer as timer
except Exception as exc:
    print("NO-TORCH", type(exc).__name__, exc, flush=True)
    sys.exit(3)
"""

# torch's server; it runs until its stdin is closed. (It signals its own
# process after every reap, so it dies with the worker it kills.)
TORCH_SERVER = (
    _IMPORT_TORCH
    + r"""
server = timer.FileTimerServer(sys.argv[1], "interop", max_interval=0.05)
server.start()
print("ready", flush=True)
sys.stdin.read()
server.stop()
"""
)

# A worker with torch's client: prints torch's JSON of a sample request, arms a
# timer and releases it, outlives that timer's deadline, then hangs under a
# second timer.
TORCH_WORKER = (
    _IMPORT_TORCH
    + r"""
import time
print(timer.FileTimerRequest(1234, "s", 12.5, 9).to_json(), flush=True)
timer.configure(timer.FileTimerClient(sys.argv[1], signal=int(sys.argv[2])))
with timer.expires(after=0.3):
    pass
time.sleep(0.5)
print("released", flush=True)
with timer.expires(after=0.3):
    print("armed", flush=True)
    time.sleep(60)
"""
)

# The same worker with our client.
OUR_WORKER = r"""
import sys, time
from pytest_expire.timer import api
from pytest_expire.timer.file_based_local_timer import FileTimerClient
client = FileTimerClient(sys.argv[1], signal=int(sys.argv[2]))
with api.expires(after=0.3, client=client):
    pass
time.sleep(0.5)
print("released", flush=True)
with api.expires(after=0.3, client=client):
    print("armed", flush=True)
    time.sleep(60)
"""


def _find_torch_python() -> tuple[str | None, bool]:
    """The interpreter to run torch with, and whether it was asked for explicitly."""
    explicit = os.environ.get(TORCH_PYTHON_VARIABLE)
    if explicit:
        return explicit, True
    if importlib.util.find_spec("torch") is not None:
        return sys.executable, False
    return None, False


@pytest.fixture(scope="module")
def torch_python() -> tuple[str, bool]:
    python, explicit = _find_torch_python()
    if python is None:
        pytest.skip(
            f"torch is not installed here; set {TORCH_PYTHON_VARIABLE} to a Python "
            "that has torch to run the interoperability tests"
        )
    return python, explicit


def start_torch(
    procs: list[subprocess.Popen[bytes]],
    torch_python: tuple[str, bool],
    script: str,
    *args: object,
) -> tuple[subprocess.Popen[bytes], str]:
    """Run ``script`` with torch; return the process and its first line."""
    python, explicit = torch_python
    try:
        proc = subprocess.Popen(
            [python, "-W", "ignore", "-c", script, *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
    except OSError as exc:
        pytest.fail(f"{TORCH_PYTHON_VARIABLE}={python} cannot be run: {exc}")
    procs.append(proc)
    first = read_line(proc, TORCH_START_TIMEOUT)
    if first.startswith("NO-TORCH") or not first:
        reason = f"{python} cannot import torch.distributed.elastic.timer: {first or 'it exited'}"
        if explicit:
            pytest.fail(f"{TORCH_PYTHON_VARIABLE}: {reason}")
        pytest.skip(reason)
    return proc, first


def test_our_client_with_torchs_server(
    torch_python: tuple[str, bool], fifo: str, procs: list[subprocess.Popen[bytes]]
) -> None:
    torch_server, first = start_torch(procs, torch_python, TORCH_SERVER, fifo)
    assert first == "ready"
    worker = subprocess.Popen(
        [sys.executable, "-c", OUR_WORKER, fifo, str(int(signal.SIGKILL))], stdout=subprocess.PIPE
    )
    procs.append(worker)
    # The released timer did not fire although its deadline passed...
    assert read_line(worker) == "released"
    assert read_line(worker) == "armed"
    # ...the one left armed did: torch's server read our requests, in order.
    assert worker.wait(5) == -signal.SIGKILL
    # torch's server then signals its own process with the same signal.
    assert torch_server.wait(5) == -signal.SIGKILL


def test_torchs_client_with_our_server(
    torch_python: tuple[str, bool], fifo: str, procs: list[subprocess.Popen[bytes]]
) -> None:
    events: list[tuple[str, FileTimerRequest | None]] = []
    server = FileTimerServer(fifo, "interop", log_event=lambda n, r: events.append((n, r)))
    server.start()
    try:
        worker, torch_json = start_torch(
            procs, torch_python, TORCH_WORKER, fifo, int(signal.SIGTERM)
        )
        assert torch_json == FileTimerRequest(1234, "s", 12.5, 9).to_json()
        assert read_line(worker) == "released"
        assert read_line(worker) == "armed"
        assert worker.wait(5) == -signal.SIGTERM
    finally:
        server.stop()
    expired = [request for name, request in events if name == "timer expired"]
    assert len(expired) == 1
    assert expired[0] is not None and expired[0].worker_pid == worker.pid
    assert ("kill worker process", expired[0]) in events
    assert server.is_running is False
    assert not os.path.lexists(fifo)
