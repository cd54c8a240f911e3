"""Who a timer server may signal, and signalling exactly that process.

A timer server acts on a PID that a message named. Taken at its word, such a
server can be made to kill any process of its user: a PID that was reused
since the timer was armed, init, a whole process group, the server itself.
The guard refuses all of these and logs each refusal.

A worker is identified by a pidfd opened when its first timer is registered.
A pidfd refers to one process for good: it cannot come to mean another
process when the PID is reused, it becomes readable when its process exits,
and a signal sent through it reaches that process or nobody. This is stronger
than comparing start times, which leaves a window between the check and the
kill.

A PID can only be reused after its process has exited, so a known PID needs
identifying afresh only when its pidfd has become readable. The pidfds sit in
an epoll set: one ``epoll_wait`` per batch of requests finds the workers that
exited, however many are known, and remembering a known PID is then a
dictionary lookup instead of a system call per request.

psutil is imported by the two methods that use it, not here: a client
process imports this module with its server's (they share a module) and
should not pay for psutil's import, which is most of theirs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal

logger = logging.getLogger(__name__)

# How many exits one epoll_wait() reports at most; more are read in a loop.
_MAX_EXITS = 1024

# How many times this process was forked into being: a guard made before a
# fork holds, in the child, copies of its parent's pidfds and epoll set.
# (Counted rather than compared with os.getpid(): that is a system call, on
# every batch of requests.)
_forks = 0


def _count_fork() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_count_fork)


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
        self._pids_by_fd: dict[int, int] = {}
        # The pidfds, waited on for exits; made when first needed, and again
        # in a forked child (an epoll set is shared with the parent).
        self._exits: select.epoll | None = None
        self._forks_seen = _forks

    def __getstate__(self) -> dict[str, object]:
        # A pidfd belongs to its process; a copy sent elsewhere starts afresh.
        return {**self.__dict__, "_pidfds": {}, "_pids_by_fd": {}, "_exits": None}

    def admit(self, pid: int) -> None:
        """Allow signalling ``pid`` although it is not a descendant of the host."""
        self._admitted.add(pid)

    def remember(self, pid: object) -> None:
        """Identify the process ``pid`` names now, unless it is identified already.

        Called when a worker arms a timer; safe on its own, at the cost of one
        system call (:meth:`notice_exits`). A server that reads requests in
        batches calls :meth:`notice_exits` once per batch and :meth:`identify`
        for each request instead.
        """
        self.notice_exits()
        self.identify(pid)

    def notice_exits(self) -> list[int]:
        """Forget every remembered worker that has exited; return their PIDs.

        Call it after reading a batch of requests and before identifying the
        PIDs they name. A request that names a reused PID was sent by the new
        process, which exists only because the old one had exited before: its
        pidfd is readable by now, so the PID is forgotten here and identified
        afresh by :meth:`identify`.
        """
        self._adopt()
        if self._exits is None or not self._pidfds:
            return []
        exited: list[int] = []
        while True:
            events = self._exits.poll(0, _MAX_EXITS)
            for pidfd, _ in events:
                pid = self._pids_by_fd.get(pidfd)
                if pid is not None:
                    exited.append(pid)
                    self.forget(pid)
            if len(events) < _MAX_EXITS:
                return exited

    def identify(self, pid: object) -> None:
        """Identify the process ``pid`` names now, unless it is identified already.

        A dictionary lookup for a known worker: correct only if
        :meth:`notice_exits` ran after the request naming ``pid`` was read
        (see there). A PID that names no process is not recorded, and its
        timers expire without a signal.
        """
        if not _is_pid(pid) or pid in self._pidfds:
            return
        assert isinstance(pid, int)
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        except OSError:
            logger.exception("cannot identify worker %d; its timers will not signal it", pid)
            return
        self._watch(pid, pidfd)

    def _watch(self, pid: int, pidfd: int) -> None:
        """Take ``pidfd`` as the identity of ``pid``, and wait for its exit."""
        self._adopt()
        if self._exits is None:
            self._exits = select.epoll()
        self._exits.register(pidfd, select.EPOLLIN)
        self._pidfds[pid] = pidfd
        self._pids_by_fd[pidfd] = pid

    def _adopt(self) -> None:
        """In a forked child, let go of the parent's pidfds and epoll set, and start afresh.

        They are copies of the parent's: an epoll set is shared across fork,
        so the child must neither wait on nor change it. Closing the copies
        leaves the parent's alone.
        """
        if self._forks_seen == _forks:
            return
        copies = list(self._pidfds.values())
        if self._exits is not None:
            copies.append(self._exits.fileno())
        for fd in copies:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._pidfds, self._pids_by_fd, self._exits = {}, {}, None
        self._forks_seen = _forks

    def pidfd(self, pid: int) -> int | None:
        """A new pidfd of the worker remembered for ``pid`` (the caller closes it); None if none.

        For someone who acts on the worker later than its timer's expiry: the
        pidfd keeps naming the process that armed the timer, whatever
        happens to its PID meanwhile.
        """
        self._adopt()
        pidfd = self._pidfds.get(pid)
        if pidfd is None or _has_exited(pidfd):
            return None
        return os.dup(pidfd)

    def forget(self, pid: object) -> None:
        """Drop the identity of a worker that was reaped or is known gone."""
        self._adopt()
        pidfd = self._pidfds.pop(pid, None)  # type: ignore[call-overload]
        if pidfd is None:
            return
        self._pids_by_fd.pop(pidfd, None)
        if self._exits is not None:
            # Explicitly: a closed pidfd stays in the set while a child forked
            # since holds a copy of it.
            with contextlib.suppress(OSError):
                self._exits.unregister(pidfd)
        os.close(pidfd)

    def close(self) -> None:
        """Close every pidfd and the epoll set (when the server stops)."""
        for pid in list(self._pidfds):
            self.forget(pid)
        if self._exits is not None:
            self._exits.close()
            self._exits = None

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
            logger.info(
                "worker %d has exited, or was gone when its timer was registered; "
                "nothing to signal",
                pid,
            )
            return True
        if _has_exited(pidfd):
            import psutil

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
        if not self.may_signal(pid):
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

    def may_signal(self, pid: int) -> bool:
        """Whether ``pid`` is the host, one of its descendants, or admitted."""
        if pid == self.host_pid or pid in self._admitted:
            return True
        import psutil

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
