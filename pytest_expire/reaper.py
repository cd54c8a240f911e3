"""The supervisor as the session's child subreaper: no process a test started gets away.

A process whose parent dies is given a new parent: init, normally, where
nothing of the session can find it any more (a double-forked ``setsid``
daemon, the children of a killed worker). A *child subreaper*
(``prctl(PR_SET_CHILD_SUBREAPER)``, Linux) takes that role for its
descendants: the supervisor, which outlives every worker, becomes one, so
that such processes become its children and stay in reach of
``offspring``. It must then reap them when they end, as init would: they
are nobody else's children.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection

_PR_SET_CHILD_SUBREAPER = 36


def set_subreaper(enabled: bool) -> bool:
    """Make this process its descendants' subreaper, or no more; whether the system allows it.

    No more once the session is over: a program that ran ``pytest.main()``
    goes on, and would otherwise adopt the orphans of its other children.
    """
    import ctypes  # the only way to prctl(); imported by a supervisor alone

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, int(enabled), 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def children(pid: int | str = "self") -> list[int]:
    """The PIDs of the children of process ``pid``, this one by default (listed by the
    thread that is their parent); none if it ended."""
    pids: list[int] = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:  # no such process
        return pids
    for thread in threads:
        try:
            with open(f"/proc/{pid}/task/{thread}/children") as listing:
                pids += [int(word) for word in listing.read().split()]
        except OSError:  # the thread ended
            continue
    return pids


def reap_orphans(ours: Collection[int]) -> None:
    """Reap the ended children that are not among ``ours`` (those this process
    started and waits for itself): orphans it adopted."""
    for pid in children():
        if pid not in ours:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
