"""Who a timer server may signal, and signalling exactly that process.

A timer server acts on a PID that a message named. Taken at its word, such a
server can be made to kill any process of its user: a PID that was reused
since the timer was armed, init, a whole process group, the server itself.
The guard refuses all of these and logs each refusal.

A process is identified by its PID *and* its start time, recorded when the
first timer of that PID is registered. At the kill, the guard opens a pidfd
first and checks the start time second, so the signal reaches the very
process that was checked, even if it dies and its PID is reused in between.
"""

from __future__ import annotations

import logging
import math
import os
import signal

import psutil

logger = logging.getLogger(__name__)

# Identities are kept while their process lives (re-reading /proc on every
# acquire would dominate the cost of a request); those of ended processes are
# dropped once the table holds this many or twice as many as after the last
# drop.
_MIN_PRUNE_AT = 4096


class ReapGuard:
    """Decides whether a PID may be signalled, and signals it safely.

    A PID may be signalled when it is still the process whose identity was
    recorded by :meth:`remember`, is neither PID 0 or 1, a process group nor
    the calling process, and is the host process, one of its descendants, or
    was :meth:`admit`-ted.

    ``host_pid`` defaults to the process that creates the guard: a server
    started in a process of its own still guards the processes of the one
    that created it.
    """

    def __init__(self, host_pid: int | None = None) -> None:
        self.host_pid = os.getpid() if host_pid is None else host_pid
        self._admitted: set[int] = set()
        self._identities: dict[int, float | None] = {}
        self._prune_at = _MIN_PRUNE_AT

    def admit(self, pid: int) -> None:
        """Allow signalling ``pid`` although it is not a descendant of the host."""
        self._admitted.add(pid)

    def remember(self, pid: object) -> None:
        """Record the identity of ``pid`` if it is not known yet.

        Called when a worker arms a timer. A PID that does not exist is
        recorded as gone (its timers will expire without a signal) and looked
        up again at its next timer, in case the PID was reused.
        """
        if self._identities.get(pid) is not None or not _is_pid(pid):  # type: ignore[call-overload]
            return
        assert isinstance(pid, int)
        self._identities[pid] = _start_time(pid)
        if len(self._identities) > self._prune_at:
            self._forget_the_dead()

    def forget(self, pid: object) -> None:
        """Drop the identity of a worker that was reaped or is known gone."""
        if isinstance(pid, int):
            self._identities.pop(pid, None)

    def _forget_the_dead(self) -> None:
        """Bound memory: drop the identities of processes that have ended.

        Safe whatever timers are live: a worker without a recorded identity
        is never signalled, which is right for one that has ended. Runs when
        the table has doubled since the last time, so its cost is amortized.
        """
        self._identities = {
            pid: started
            for pid, started in self._identities.items()
            if started is not None and _start_time(pid) == started
        }
        self._prune_at = max(_MIN_PRUNE_AT, 2 * len(self._identities))

    def send_signal(self, pid: object, signum: int) -> bool:
        """Send ``signum`` to ``pid`` if allowed.

        Returns True when the worker needs no further attention: it was
        signalled, it is gone, or signalling it is refused (a refusal is
        logged and retrying would not change it). Returns False when the
        signal could not be sent for a reason that may pass (retry later).
        """
        if not _is_pid(pid) or pid == os.getpid():
            logger.warning("refusing to signal %r: not a worker process", pid)
            return True
        assert isinstance(pid, int)
        recorded = self._identities.get(pid)
        if recorded is None:
            logger.info("worker %d is gone, nothing to signal", pid)
            return True
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            logger.info("worker %d is gone, nothing to signal", pid)
            return True
        try:
            current = _start_time(pid)
            if current != recorded:
                if current is None:
                    logger.info("worker %d is gone, nothing to signal", pid)
                else:
                    logger.warning(
                        "refusing to signal %d: the PID now names another process "
                        "(started %.3f, the worker started %.3f)",
                        pid,
                        current,
                        recorded,
                    )
                return True
            if not self._may_signal(pid):
                logger.warning(
                    "refusing to signal %d: not a descendant of host process %d and not admitted",
                    pid,
                    self.host_pid,
                )
                return True
            signal.pidfd_send_signal(pidfd, signum)
            logger.info("sent signal %d to worker %d", signum, pid)
            return True
        except ProcessLookupError:
            return True
        except OSError:
            logger.exception("could not signal worker %d", pid)
            return False
        finally:
            os.close(pidfd)

    def _may_signal(self, pid: int) -> bool:
        if pid == self.host_pid or pid in self._admitted:
            return True
        try:
            return any(parent.pid == self.host_pid for parent in psutil.Process(pid).parents())
        except psutil.Error:
            return False


def _is_pid(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 1


def _start_time(pid: int) -> float | None:
    """The start time of process ``pid``, or None if there is no such process."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.Error:
        # Exists but unreadable (another user's process): we may not signal it
        # anyway, and NaN compares unequal to every start time, itself included.
        return math.nan
