"""Stacks of every thread of a process, taken from outside, even when it is wedged.

A process of the session *registers* for dumps: faulthandler writes the
stacks of all its threads to a file of its own when it receives
:data:`DUMP_SIGNAL`. faulthandler writes from the C signal handler, without
the GIL, so the dump works while a thread is stuck in C code that holds the
GIL and never returns. The file is the process's own, named after its PID
and start time, not its stderr: pytest captures stderr, and a dump there
would be swallowed.

The watchdog *collects*: it sends the signal to a registered process and
reads what was appended to its file. It signals only a process whose file
proves it registered *and* that handles the signal at that moment
(``signals.handles``): the default action of a real-time signal is to
terminate, and a forked child that exec'd keeps the PID, start time and file
of its registration but not the handler.

A forked child inherits the registration and the file descriptor of its
parent; a fork handler re-registers it with a file of its own, so parent and
child dumps never mix.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import time
from pathlib import Path

from pytest_expire import registry
from pytest_expire.signals import DUMP_SIGNAL, handles
from pytest_expire.verdict import start_time

# How long a dump may take to appear, and how long the file must stay
# unchanged to count as complete.
_DUMP_TIMEOUT = 1.0
_DUMP_SETTLE = 0.05

# This process's registrations, the one in force last: each a session's
# directory and the descriptor of the dump file there. A process that joined
# a session (``startup``) and runs a session of its own (a pytest run that a
# test started) dumps into its own session's file while that runs. The
# descriptors are raw ones: a process that joined a session keeps its file
# open until it exits, and a file object would warn of that (ResourceWarning)
# when it is collected at exit, an error where warnings are.
_registered: list[tuple[Path, int]] = []


def dump_file(directory: Path, pid: int) -> Path | None:
    """The dump file of process ``pid`` in ``directory``; None if there is no such process.

    Named after the PID and the process's start time, so that a process
    that reuses the PID of a registered one is not taken for it.
    """
    started = start_time(pid)
    return None if started is None else directory / f"stacks-{pid}-{started}.txt"


def register(directory: Path) -> None:
    """Make this process (and its future forked children) dump stacks on DUMP_SIGNAL
    into a file of its own in ``directory``, until :func:`unregister`."""
    path = dump_file(directory, os.getpid())
    assert path is not None, "this process exists"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
    faulthandler.register(DUMP_SIGNAL, file=fd, all_threads=True, chain=False)
    _registered.append((directory, fd))


def _reregister_in_child() -> None:
    """A forked child of a registered process: a dump file of its own, and an entry of its own.

    Its entry in the session's ``registry`` says which test it started in,
    so that it is found even once it left the tree of the test's process.
    A child forked after its session ended (the directory gone) leaves the
    registration instead: it has no file for the watchdog to read, and an
    at-fork handler must not raise into the child.
    """
    if not _registered:
        return
    directory = _registered[-1][0]
    # The parent's files are the parent's: the child dumps into its own.
    for _, fd in _registered:
        os.close(fd)
    _registered.clear()
    try:
        register(directory)
    except OSError:
        faulthandler.unregister(DUMP_SIGNAL)
        return
    registry.join(directory)


os.register_at_fork(after_in_child=_reregister_in_child)


def unregister() -> None:
    """End the last :func:`register` (its session is over): the registration before
    it applies again, or none; forked children follow."""
    if not _registered:
        return
    os.close(_registered.pop()[1])
    if _registered:
        faulthandler.register(DUMP_SIGNAL, file=_registered[-1][1], all_threads=True, chain=False)
    else:
        faulthandler.unregister(DUMP_SIGNAL)


def collect(directory: Path, pids: list[int]) -> dict[int, str]:
    """Dump the stacks of the registered processes among ``pids``; their texts by PID.

    All are signalled first and then waited for together, so a tree of
    processes costs one wait, not one per process. Unregistered processes
    are left out (and never signalled), and so are those that wrote nothing.
    """
    started = {pid: started for pid in pids if (started := _signal(directory, pid))}
    sizes = dict.fromkeys(started, -1)
    deadline = time.monotonic() + _DUMP_TIMEOUT
    while time.monotonic() < deadline:
        time.sleep(_DUMP_SETTLE)
        settled = True
        for pid, (path, before) in started.items():
            current = path.stat().st_size
            settled = settled and before < current == sizes[pid]
            sizes[pid] = current
        if settled:
            break
    texts = {pid: _read_from(path, before) for pid, (path, before) in started.items()}
    # One that wrote nothing dumps elsewhere now (it runs a session of its
    # own), or is stuck before its handler: it is left to py-spy.
    return {pid: text for pid, text in texts.items() if text}


def _signal(directory: Path, pid: int) -> tuple[Path, int] | None:
    """Signal ``pid`` to dump, if registered: its file and the file's size before."""
    try:
        # Held across the check below, the pidfd makes sure the signal goes to
        # the process whose file was found, even if its PID is reused meanwhile.
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    try:
        path = dump_file(directory, pid)
        if path is None or not path.exists() or not handles(pid, DUMP_SIGNAL):
            return None
        before = path.stat().st_size
        signal.pidfd_send_signal(pidfd, DUMP_SIGNAL)
        return path, before
    except ProcessLookupError:
        return None
    finally:
        os.close(pidfd)


def _read_from(path: Path, offset: int) -> str:
    with open(path, "rb") as stream:
        stream.seek(offset)
        return stream.read().decode("utf-8", "replace")
