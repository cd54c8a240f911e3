"""The live timers of a server, ordered by deadline.

Every built-in server keeps its timers here so that registering, releasing and
finding the next deadline cost O(log n) or less, and a server can sleep until
exactly that deadline instead of polling.

Timers are stored per worker (so clearing a reaped worker is O(its timers))
and in a heap by expiration time. Releasing a timer does not touch the heap:
its heap entry goes stale and is skipped, popped when it reaches the top, or
dropped when stale entries outnumber live ones.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Hashable, Iterable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from pytest_expire.timer._guard import ReapGuard


class _Timer(Protocol):
    @property
    def worker_id(self) -> Hashable: ...
    @property
    def scope_id(self) -> str: ...
    @property
    def expiration_time(self) -> float: ...
    def __lt__(self, other: Any, /) -> bool: ...


T = TypeVar("T", bound=_Timer)

logger = logging.getLogger(__name__)

# Below this many heap entries a rebuild is not worth doing.
_MIN_COMPACT = 1024


class TimerTable(Generic[T]):
    """Timers keyed by ``(worker_id, scope_id)``, the latest request winning."""

    __slots__ = ("_by_worker", "_count", "_heap")

    def __init__(self) -> None:
        self._by_worker: dict[Hashable, dict[str, T]] = {}
        # The timers themselves, ordered by their expiration time (their
        # ``<``): no tuple per entry, which would cost more than the timer.
        self._heap: list[T] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: object) -> bool:
        """Whether ``(worker_id, scope_id)`` is armed: torch's servers keep such a dict."""
        if not isinstance(key, tuple) or len(key) != 2:
            return False
        worker_id, scope_id = key
        scopes = self._by_worker.get(worker_id)
        return scopes is not None and scope_id in scopes

    def set(self, timer: T) -> None:
        """Arm ``timer``, replacing the worker's timer of the same scope."""
        scopes = self._by_worker.setdefault(timer.worker_id, {})
        if timer.scope_id not in scopes:
            self._count += 1
        scopes[timer.scope_id] = timer
        heapq.heappush(self._heap, timer)
        self._compact_if_stale()

    def remove(self, worker_id: Hashable, scope_id: str) -> T | None:
        """Disarm one timer; return it, or None if there was none."""
        scopes = self._by_worker.get(worker_id)
        if scopes is None:
            return None
        timer = scopes.pop(scope_id, None)
        if timer is not None:
            self._count -= 1
            if not scopes:
                del self._by_worker[worker_id]
        return timer

    def remove_worker(self, worker_id: Hashable) -> list[T]:
        """Disarm every timer of a worker; return them."""
        scopes = self._by_worker.pop(worker_id, None)
        if not scopes:
            return []
        self._count -= len(scopes)
        return list(scopes.values())

    def next_deadline(self) -> float | None:
        """The earliest expiration time of a live timer, or None."""
        heap = self._heap
        while heap and not self._is_live(heap[0]):
            heapq.heappop(heap)
        return heap[0].expiration_time if heap else None

    def expired(self, deadline: float) -> dict[Hashable, list[T]]:
        """Live timers with ``expiration_time <= deadline``, grouped by worker.

        Reads the heap without changing it: the entries at or below the
        deadline form a subtree at the top, so this costs O(expired + stale
        among them), not O(all timers).
        """
        result: dict[Hashable, list[T]] = {}
        heap = self._heap
        pending = [0] if heap else []
        while pending:
            index = pending.pop()
            timer = heap[index]
            if timer.expiration_time > deadline:
                continue
            if self._is_live(timer):
                result.setdefault(timer.worker_id, []).append(timer)
            pending.extend(child for child in (2 * index + 1, 2 * index + 2) if child < len(heap))
        for timers in result.values():
            timers.sort(key=lambda timer: timer.expiration_time)
        return result

    def _is_live(self, timer: T) -> bool:
        scopes = self._by_worker.get(timer.worker_id)
        return scopes is not None and scopes.get(timer.scope_id) is timer

    def _compact_if_stale(self) -> None:
        heap = self._heap
        if len(heap) > _MIN_COMPACT and len(heap) > 2 * self._count:
            self._heap = [timer for timer in heap if self._is_live(timer)]
            heapq.heapify(self._heap)


def _drop_timers_of_exited(timers: TimerTable[Any], worker_ids: Iterable[Hashable]) -> None:
    """Disarm every timer of workers known to have exited, and log what was dropped.

    Such a worker cannot be reaped any more, and its PID may be handed to a
    new process that must not inherit its timers.
    """
    for worker_id in worker_ids:
        dropped = timers.remove_worker(worker_id)
        if dropped:
            logger.info(
                "worker %r has exited; dropping its %d timer(s): %s",
                worker_id,
                len(dropped),
                [timer.scope_id for timer in dropped],
            )


def apply_requests(timers: TimerTable[T], guard: ReapGuard, requests: Iterable[T]) -> None:
    """Apply a batch of requests in order, after dropping the timers of exited workers.

    Exits are noticed before the batch is applied (``ReapGuard.notice_exits``):
    a worker whose PID was reused since its timers were armed is forgotten with
    them, so a new process with that PID is identified afresh and never
    signalled for the old one's timers. A negative expiration time releases
    the timer; any other arms it, and identifies its worker while its PID
    surely names it.
    """
    _drop_timers_of_exited(timers, guard.notice_exits())
    for request in requests:
        if request.expiration_time < 0:
            timers.remove(request.worker_id, request.scope_id)
        else:
            guard.identify(request.worker_id)
            timers.set(request)


def clear_workers(
    timers: TimerTable[Any], guard: ReapGuard, worker_ids: Iterable[Hashable]
) -> None:
    """Disarm every timer of ``worker_ids``, and let the guard forget them."""
    for worker_id in worker_ids:
        timers.remove_worker(worker_id)
        guard.forget(worker_id)


def wait_timeout(
    next_deadline: float | None, retry_at: float | None, max_interval: float, now: float
) -> float:
    """How long a watchdog may sleep: until the next deadline or retry, at most ``max_interval``.

    ``retry_at`` is when workers that could not be reaped are tried again;
    their timers are still due, so waiting for the next deadline would spin.
    """
    wake_at = next_deadline
    if retry_at is not None and (wake_at is None or wake_at < retry_at):
        wake_at = retry_at
    if wake_at is None:
        return max_interval
    return min(max_interval, max(0.0, wake_at - now))
