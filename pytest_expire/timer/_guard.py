"""Who a timer server may signal, and signalling exactly that process.

A timer server acts on a PID that a message named. Taken at its word, such a
server can be made to kill any process of its user: a PID that was reused
since the timer was armed, init, a whole process group, the server itself.
The guard refuses all of these and logs each refusal.

A worker is identified by a pidfd opened when its first timer is registered.
A pidfd refers to one process for good: it cannot come to mean another
process when the PID is reused, it tells cheaply whether its process has
exited, and a signal sent through it reaches that process or nobody. This is
stronger than comparing start times, which leaves a window between the check
and the kill.
"""

from __future__ import annotations

import logging
import os
import select
import signal

import psutil

logger = logging.getLogger(__name__)

# The pidfds of ended workers are closed once the guard holds this many
# pidfds, or twice as many as after the last such sweep.
_MIN_SWEEP_AT = 1024


class ReapGuard:
    """Decides whether a PID may be signalled, and signals it safely.

    A PID may be signalled when it still names the process that was
    :meth:`remember`-ed for it, is neither PID 0 or 1, a process group nor
    the calling process, and is the host process, one of its descendants, or
    was :meth:`admit`-ted.

    ``host_pid`` defaults to the process that creates the guard: a server
    started in a process of its own still guards the processes of the one
    that created it.
    """

    def __init__(self, host_pid: int | None = None) -> None:
        self.host_pid = os.getpid() if host_pid is None else host_pid
        self._admitted: set[int] = set()
        self._pidfds: dict[int, int] = {}
        self._sweep_at = _MIN_SWEEP_AT

    def __getstate__(self) -> dict[str, object]:
        # A pidfd belongs to its process; a copy sent elsewhere starts afresh.
        return {**self.__dict__, "_pidfds": {}}

    def admit(self, pid: int) -> None:
        """Allow signalling ``pid`` although it is not a descendant of the host."""
        self._admitted.add(pid)

    def remember(self, pid: object) -> None:
        """Identify the process ``pid`` names now, unless it is identified already.

        Called when a worker arms a timer; costs one system call when the
        worker is known and alive. A PID whose known process has exited is
        identified afresh: it may have been reused by the worker that arms
        this timer. A PID that names no process is not recorded, and its
        timers expire without a signal.
        """
        if not _is_pid(pid):
            return
        assert isinstance(pid, int)
        pidfd = self._pidfds.get(pid)
        if pidfd is not None:
            if not _has_exited(pidfd):
                return
            self.forget(pid)
        try:
            self._pidfds[pid] = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        except OSError:
            logger.exception("cannot identify worker %d; its timers will not signal it", pid)
            return
        if len(self._pidfds) > self._sweep_at:
            self._sweep()

    def forget(self, pid: object) -> None:
        """Drop the identity of a worker that was reaped or is known gone."""
        pidfd = self._pidfds.pop(pid, None)  # type: ignore[call-overload]
        if pidfd is not None:
            os.close(pidfd)

    def close(self) -> None:
        """Close every pidfd (when the server stops)."""
        for pid in list(self._pidfds):
            self.forget(pid)

    def _sweep(self) -> None:
        """Close the pidfds of workers that have exited; bounds the open files."""
        for pid in [pid for pid, pidfd in self._pidfds.items() if _has_exited(pidfd)]:
            self.forget(pid)
        self._sweep_at = max(_MIN_SWEEP_AT, 2 * len(self._pidfds))

    def send_signal(self, pid: object, signum: int) -> bool:
        """Send ``signum`` to the worker ``pid`` if allowed.

        Returns True when the worker needs no further attention: it was
        signalled, it is gone, or signalling it is refused (a refusal is
        logged and retrying would not change it). Returns False when the
        signal could not be sent for a reason that may pass (retry later).
        """
        if not _is_pid(pid) or pid == os.getpid():
            logger.warning("refusing to signal %r: not a worker process", pid)
            return True
        assert isinstance(pid, int)
        pidfd = self._pidfds.get(pid)
        if pidfd is None:
            logger.info("worker %d was gone when its timer was registered", pid)
            return True
        if _has_exited(pidfd):
            if psutil.pid_exists(pid):
                logger.warning(
                    "refusing to signal %d: the worker that armed the timer has exited "
                    "and the PID now names another process",
                    pid,
                )
            else:
                logger.info("worker %d is gone, nothing to signal", pid)
            self.forget(pid)
            return True
        if not self._may_signal(pid):
            logger.warning(
                "refusing to signal %d: not a descendant of host process %d and not admitted",
                pid,
                self.host_pid,
            )
            return True
        try:
            signal.pidfd_send_signal(pidfd, signum)
        except ProcessLookupError:
            logger.info("worker %d is gone, nothing to signal", pid)
            return True
        except OSError:
            logger.exception("could not signal worker %d", pid)
            return False
        logger.info("sent signal %d to worker %d", signum, pid)
        return True

    def _may_signal(self, pid: int) -> bool:
        if pid == self.host_pid or pid in self._admitted:
            return True
        # Up the parent chain until the host or init: one step for a direct child.
        try:
            while pid > 1:
                pid = psutil.Process(pid).ppid()
                if pid == self.host_pid:
                    return True
        except psutil.Error:
            pass
        return False


def _is_pid(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 1


def _has_exited(pidfd: int) -> bool:
    """A pidfd becomes readable when its process exits (a zombie has exited)."""
    readable, _, _ = select.select([pidfd], [], [], 0)
    return bool(readable)
