"""The life of a watchdog process: bound to its parent's, started and stopped in bounded time.

A watchdog process, or any worker that must not outlive the process that
started it, calls :func:`die_with_parent` first thing. The kernel then sends
it a signal when its parent ends, however the parent ends (SIGKILL
included): no cleanup code of the parent's has to run. Whoever starts a
watchdog process waits :data:`WATCHDOG_READY_TIMEOUT` for it to be ready,
and whoever stops one waits :data:`WATCHDOG_STOP_TIMEOUT` before killing it.

``ctypes`` is imported by the function, not here: this module is imported by
processes that never call it.
"""

from __future__ import annotations

import os
import sys

__all__ = ["WATCHDOG_READY_TIMEOUT", "WATCHDOG_STOP_TIMEOUT", "die_with_parent"]

#: How long a watchdog process may take to become ready: starting an
#: interpreter and importing the timer server takes well under a second on an
#: idle machine, but CI machines are not idle.
WATCHDOG_READY_TIMEOUT = 30.0
#: How long stopping a watchdog process waits for it before killing it.
WATCHDOG_STOP_TIMEOUT = 2.0

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, signum: int) -> None:
    """Have the kernel send ``signum`` to this process when its parent ``parent_pid`` ends.

    ``parent_pid`` is the PID of the process that started this one, as it
    knew itself (``os.getpid()`` there, passed down). If that process has
    already ended (before the request took effect, so the kernel will never
    send the signal), this process exits at once with ``SystemExit(0)``.
    Linux only; elsewhere only that check is made.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signum)
    if not _exists(parent_pid):
        raise SystemExit(0)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        return True
    return True
