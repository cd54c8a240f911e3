"""What the process that ran a session's tests leaves for whoever watches it exit.

Once its session is over, the process that ran the tests (a supervised
worker, an xdist worker) still has to exit, and may not: a test leaked a
thread that is not a daemon (interpreter exit waits for it), a child that
``multiprocessing`` joins at exit, or an exit handler that blocks. Its
watcher (``exit_deadline``) then says what still runs and during which test
it started, which only this process knows. So, from its start, it records:

- the test during which each thread started: a wrapper installed once
  around ``threading.Thread.start`` keeps, for the thread being started, the
  ``PYTEST_CURRENT_TEST`` of that moment (one look-up in the environment
  per thread started, nothing per test);
- the test during which each exit handler was registered (a wrapper around
  ``atexit.register``, and ``atexit.unregister`` to forget it);
- the test during which each child was forked (a wrapper around ``os.fork``,
  which ``multiprocessing`` calls too): a child started by ``exec`` names its
  test in its environment, which the watcher reads, but a forked one does
  not (the environment a process shows is the one it was started with).
  In a session whose tests have deadlines, the registry names them too.

As its session ends it writes a *note* (:func:`leave_note`): the threads
that still run, with their tests, and the handlers the tests registered;
then registers ``faulthandler`` to append the stacks of all its threads to
the note on the dump signal, which needs no GIL to be written; and, as its
first exit handler, marks in the note that its threads are joined and its
exit handlers run. Nothing is written if it exits in time: the note is for
a hang only.

The wrappers keep the wrapped functions' names and docstrings
(``functools.wraps``), and the threads' test names live in a weak mapping
of this module, not on the threads: the code under test sees the functions
and objects it would see without the plugin.
"""

from __future__ import annotations

import atexit
import faulthandler
import functools
import json
import os
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from pytest_expire.registry import CURRENT_TEST_ENV
from pytest_expire.signals import DUMP_SIGNAL
from pytest_expire.verdict import start_time

#: The note's first byte: the process has not run its exit handlers yet (it waits
#: for its threads, say),
JOINING_THREADS = b"T"
#: or it runs them.
RUNNING_HANDLERS = b"H"

#: The test during which each thread started ("NODEID (PHASE)"), for those started during one.
_started_during: weakref.WeakKeyDictionary[threading.Thread, str] = weakref.WeakKeyDictionary()
#: The exit handlers registered during a test, with that test, in the order registered.
_handlers: list[tuple[Callable[..., object], str]] = []
#: The children forked during a test: their PIDs, start times and tests.
_forked_during: list[tuple[int, int, str]] = []
_recording = False
# What the environment said of the running test when recording began: not a test of
# this process's session, but of one around it (this pytest runs inside a test).
_inherited: str | None = None
# The file faulthandler appends dumps to: kept open until the process ends.
_dump_stream: IO[str] | None = None


def record() -> None:
    """From now on, note the test during which each thread starts, each exit handler is
    registered and each child is forked. Once per process: the process ends with its
    session, wrappers and all."""
    global _recording, _inherited
    if _recording:
        return
    _recording = True
    _inherited = os.environ.get(CURRENT_TEST_ENV)
    start = _recording_start(threading.Thread.start)
    threading.Thread.start = start  # type: ignore[method-assign, assignment]
    atexit.register = _recording_register(atexit.register)
    atexit.unregister = _forgetting_unregister(atexit.unregister)
    os.fork = _recording_fork(os.fork)


def _recording_start(
    start: Callable[[threading.Thread], None],
) -> Callable[[threading.Thread], None]:
    @functools.wraps(start)
    def recording_start(self: threading.Thread) -> None:
        test = _running_test()
        if test:
            _started_during[self] = test
        start(self)

    return recording_start


def _recording_register(
    register: Callable[..., Callable[..., Any]],
) -> Callable[..., Callable[..., Any]]:
    @functools.wraps(register)
    def recording_register(
        func: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Callable[..., Any]:
        test = _running_test()
        if test:
            _handlers.append((func, test))
        return register(func, *args, **kwargs)

    return recording_register


def _forgetting_unregister(
    unregister: Callable[[Callable[..., Any]], None],
) -> Callable[[Callable[..., Any]], None]:
    @functools.wraps(unregister)
    def forgetting_unregister(func: Callable[..., Any]) -> None:
        _handlers[:] = [(handler, test) for handler, test in _handlers if handler != func]
        unregister(func)

    return forgetting_unregister


def _recording_fork(fork: Callable[[], int]) -> Callable[[], int]:
    @functools.wraps(fork)
    def recording_fork() -> int:
        pid = fork()
        test = _running_test() if pid else None
        started = start_time(pid) if test else None
        if test and started is not None:
            _forked_during.append((pid, started, test))
        return pid

    return recording_fork


def _running_test() -> str | None:
    """The test of this process's session running now, "NODEID (PHASE)"; None between
    tests (pytest sets ``PYTEST_CURRENT_TEST`` during each phase, and removes it after)."""
    test = os.environ.get(CURRENT_TEST_ENV)
    return None if test == _inherited else test


def contents(status: int | None) -> dict[str, Any]:
    """What a note says as the session ends with exit ``status``: the threads that still
    run (but the main thread and this one), the exit handlers and the children of the
    tests, each with its test."""
    return {
        "status": status,
        "threads": [
            {
                "ident": thread.ident,
                "name": thread.name,
                "daemon": thread.daemon,
                "test": _started_during.get(thread, ""),
            }
            for thread in threading.enumerate()
            if thread is not threading.current_thread() and thread is not threading.main_thread()
        ],
        "handlers": [{"handler": describe(func), "test": test} for func, test in _handlers],
        "children": [
            {"pid": pid, "started": started, "test": test}
            for pid, started, test in _forked_during
            if start_time(pid) == started
        ],
    }


def leave_note(path: Path, status: int | None) -> None:
    """Write the note at ``path`` (a new file, or an emptied one) as the session ends
    with exit ``status`` (None: not the session's to say), and make the process's dumps
    and its exit handlers' start go there too."""
    global _dump_stream
    note = contents(status)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    os.write(fd, JOINING_THREADS + json.dumps(note).encode() + b"\n")
    if _dump_stream is not None:
        _dump_stream.close()
    _dump_stream = open(path, "a", encoding="utf-8")  # noqa: SIM115 (open until the end)
    faulthandler.register(DUMP_SIGNAL, file=_dump_stream, all_threads=True, chain=False)
    # Exit handlers run last registered first: this one before the others.
    atexit.register(os.pwrite, fd, RUNNING_HANDLERS, 0)


def describe(func: Callable[..., Any]) -> str:
    """An exit handler by name: ``module.qualified_name``, or its repr."""
    name = getattr(func, "__qualname__", None)
    module = getattr(func, "__module__", None)
    if not isinstance(name, str):
        return repr(func)
    return f"{module}.{name}" if isinstance(module, str) else name
