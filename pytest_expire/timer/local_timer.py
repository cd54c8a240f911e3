"""The queue pair: clients put requests on a ``multiprocessing.Queue``.

Workers are processes that share a queue with the server's host, typically
children started by ``multiprocessing`` with the queue as an argument.

A ``multiprocessing.Queue`` has a hazard that no server can work around: a
writer killed while it holds the queue's write lock (in the middle of a
``put``) leaves the lock held forever, and every other writer then blocks.
The plugin therefore does not use this pair; see ``unix_socket_timer``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import time
from collections.abc import Hashable
from multiprocessing.context import BaseContext
from typing import Any

from pytest_expire.timer._guard import ReapGuard
from pytest_expire.timer._table import TimerTable, apply_requests, clear_workers
from pytest_expire.timer._validation import checked_expiration, is_valid_expiration
from pytest_expire.timer.api import RequestQueue, TimerClient, TimerRequest, TimerServer

__all__ = ["LocalTimerClient", "LocalTimerServer", "MultiprocessingRequestQueue"]

logger = logging.getLogger(__name__)

# Put on the queue by the server itself to end a wait early (stop()).
_WAKE_UP = None
# How long the server waits for each further request of a batch it knows was put.
_IN_FLIGHT_WAIT = 0.01


class LocalTimerClient(TimerClient):
    """Client side of the queue pair; the worker is identified by its PID."""

    def __init__(self, mp_queue: multiprocessing.Queue[Any]) -> None:
        self._mp_queue = mp_queue

    def acquire(self, scope_id: str, expiration_time: float) -> None:
        """Arm ``scope_id``; a negative time releases it, as in torch (see ``_validation``)."""
        if checked_expiration(expiration_time) is None:
            self.release(scope_id)
            return
        self._mp_queue.put(TimerRequest(os.getpid(), scope_id, expiration_time))

    def release(self, scope_id: str) -> None:
        self._mp_queue.put(TimerRequest(os.getpid(), scope_id, -1))


class MultiprocessingRequestQueue(RequestQueue):
    """A :class:`RequestQueue` over a ``multiprocessing.Queue``."""

    def __init__(self, mp_queue: multiprocessing.Queue[Any]) -> None:
        self._mp_queue = mp_queue

    def size(self) -> int:
        try:
            return self._mp_queue.qsize()
        except NotImplementedError:  # macOS has no sem_getvalue()
            return 0

    def get(self, size: int, timeout: float) -> list[TimerRequest]:
        """Collect up to ``size`` requests for up to ``timeout`` seconds in all, as torch's does.

        Returns early only when ``size`` requests came, or when the server
        that owns the queue is stopping.
        """
        requests: list[TimerRequest] = []
        deadline = time.monotonic() + timeout
        while len(requests) < size:
            item = self._take(deadline - time.monotonic())
            if item is None:  # none came in time, or the server is stopping
                break
            requests.append(item)
        return requests

    def get_arrived(self, size: int, timeout: float) -> list[TimerRequest]:
        """Wait up to ``timeout`` for a first request, then take up to ``size`` in all.

        The server's own read: a request is acted upon as soon as it
        arrives, not when a batch is complete. ``size`` is what the queue
        counted as put: after the first request the others are on their way
        from the writers' feeder threads, and each is waited for a moment
        (``_IN_FLIGHT_WAIT``), not for the whole timeout: a writer killed
        in the middle of a ``put`` leaves one counted that never comes.
        """
        requests: list[TimerRequest] = []
        deadline = time.monotonic() + timeout
        while len(requests) < size:
            wait = deadline - time.monotonic()
            item = self._take(min(wait, _IN_FLIGHT_WAIT) if requests else wait)
            if item is None:  # none came in time, or the server is stopping
                break
            requests.append(item)
        return requests

    def _take(self, wait: float) -> TimerRequest | None:
        """The next request, waiting up to ``wait`` (or taking what is there).

        None if none came, or if it was the server's wake-up (``_WAKE_UP``).
        """
        try:
            item: TimerRequest | None = self._mp_queue.get(
                block=wait > 0, timeout=wait if wait > 0 else None
            )
        except queue.Empty:
            return None
        return item

    def wake_up(self) -> None:
        """End a waiting :meth:`get` early."""
        self._mp_queue.put(_WAKE_UP)


class LocalTimerServer(TimerServer):
    """Server side of the queue pair: reaps an expired worker with SIGKILL.

    Timers are keyed by ``(worker PID, scope)``. The server wakes when a
    request arrives or at the earliest deadline; ``max_interval`` only bounds
    how long a round may wait. A worker is killed only if it is still the
    process that armed the timer and it descends from the process that
    created the server (or was admitted with :meth:`admit`); a worker that no
    longer exists counts as reaped.
    """

    def __init__(
        self, mp_queue: multiprocessing.Queue[Any], max_interval: float = 60, daemon: bool = True
    ) -> None:
        self._mp_request_queue = MultiprocessingRequestQueue(mp_queue)
        super().__init__(self._mp_request_queue, max_interval, daemon)
        self._timers: TimerTable[TimerRequest] = TimerTable()
        self._guard = ReapGuard()

    def admit(self, pid: int) -> None:
        """Allow reaping ``pid`` although it does not descend from this server's host."""
        self._guard.admit(pid)

    def register_timers(self, timer_requests: list[TimerRequest]) -> None:
        """Apply a batch of well-formed requests in order, after dropping the timers of
        exited workers (``_table.apply_requests``); a malformed one is logged and dropped."""
        well_formed = []
        for request in timer_requests:
            if _is_well_formed(request):
                well_formed.append(request)
            else:
                logger.warning("dropping malformed timer request %r", request)
        apply_requests(self._timers, self._guard, well_formed)

    def clear_timers(self, worker_ids: set[Any]) -> None:
        clear_workers(self._timers, self._guard, worker_ids)

    def get_expired_timers(self, deadline: float) -> dict[Any, list[TimerRequest]]:
        return self._timers.expired(deadline)

    def _next_deadline(self) -> float | None:
        return self._timers.next_deadline()

    def _reap_worker(self, worker_id: Any) -> bool:
        return self._guard.send_signal(worker_id, signal.SIGKILL)

    def _get_requests(self, size: int, timeout: float) -> list[TimerRequest]:
        return self._mp_request_queue.get_arrived(size, timeout)

    def _wake(self) -> None:
        self._mp_request_queue.wake_up()

    def _default_mp_context(self) -> BaseContext:
        # The queue was most likely made by the default context, and a queue
        # can only be handed to a process of the context that made it.
        return multiprocessing.get_context()


def _is_well_formed(request: object) -> bool:
    return (
        isinstance(request, TimerRequest)
        and isinstance(request.worker_id, Hashable)
        and isinstance(request.scope_id, str)
        and is_valid_expiration(request.expiration_time)
    )
