"""Reaping the workers whose timers expired, and trying again those that could not be reaped.

Every server reaps the same way. A reap returns True when the worker needs
no more attention (it was signalled, is gone, or must not be signalled) and
False when it may succeed later (the signal could not be sent); a reap that
raises is logged and counted as done, so a broken reap cannot make a server
spin. A worker whose reap failed is tried again ``REAP_RETRY_INTERVAL``
seconds later (or ``max_interval``, if shorter), not at every round: a
server woken by busy clients would otherwise retry, and log, many times a
second.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

#: How long after a failed reap the worker is tried again (at most ``max_interval``).
REAP_RETRY_INTERVAL = 1.0

W = TypeVar("W", bound=Hashable)


def log_expired(worker_id: Hashable, scopes: list[str]) -> None:
    """Say, before a worker is reaped, which of its timers expired."""
    logger.info("reaping worker %r: %d timer(s) expired: %s", worker_id, len(scopes), scopes)


def reap_no_throw(reap: Callable[[W], bool], worker_id: W) -> bool:
    """``reap(worker_id)``, with an exception logged and counted as reaped."""
    try:
        return reap(worker_id)
    except Exception:
        logger.exception("error reaping worker %r; counted as reaped", worker_id)
        return True


class Reaper(Generic[W]):
    """Reaps the workers a server owes a reap, and schedules another try for the failures.

    ``retry_at`` is when the failures are due again (a ``time.time()``
    value), or None when there are none: a server wakes by then.
    """

    def __init__(self) -> None:
        self.retry_at: float | None = None
        self._waiting: set[W] = set()

    def reap(
        self, workers: Iterable[W], reap: Callable[[W], bool], now: float, max_interval: float
    ) -> set[W]:
        """Reap each of ``workers`` (every worker still owed a reap); return those reaped.

        A worker whose earlier reap failed is skipped until ``retry_at``. A
        worker no longer passed is forgotten: its timers were released, or
        it is gone.
        """
        due = self.retry_at is not None and self.retry_at <= now
        reaped: set[W] = set()
        waiting: set[W] = set()
        for worker_id in workers:
            if worker_id in self._waiting and not due:
                waiting.add(worker_id)
            elif reap_no_throw(reap, worker_id):
                reaped.add(worker_id)
            else:
                logger.error("could not reap worker %r, will retry", worker_id)
                waiting.add(worker_id)
        self._waiting = waiting
        if not waiting:
            self.retry_at = None
        elif due or self.retry_at is None:
            self.retry_at = now + min(REAP_RETRY_INTERVAL, max_interval)
        return reaped
