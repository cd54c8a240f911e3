"""The contract of expiration timers: requests, clients, queues, servers.

A *client* in a worker process arms a timer (``acquire``) before a block of
code and disarms it (``release``) after; a *server* elsewhere watches the
timers and reaps a worker whose timer expired. This module holds the abstract
pieces, with the names and signatures of ``torch.distributed.elastic.timer``,
the request types every pair shares (:class:`TimerRequest`, and
:class:`FileTimerRequest`, a request with a signal of its own), the type of
the Unix-socket server's expiry callback (:data:`OnExpired`, :class:`Logged`), and
:func:`expires`, the context manager that user code writes.
"""

from __future__ import annotations

import abc
import enum
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii
from types import TracebackType
from typing import Any, cast

from pytest_expire.timer._reaping import Reaper, log_expired, reap_no_throw
from pytest_expire.timer._table import wait_timeout
from pytest_expire.timer._watchdog import Watchdog

__all__ = [
    "FileTimerRequest",
    "Logged",
    "OnExpired",
    "RequestQueue",
    "TimerClient",
    "TimerRequest",
    "TimerServer",
    "configure",
    "expires",
]

logger = logging.getLogger(__name__)

# The version of the named-pipe wire format that FileTimerRequest serializes.
_FILE_REQUEST_VERSION = 1


class TimerRequest:
    """One message from a client: arm (or, with a negative time, disarm) a timer.

    ``worker_id`` names the worker (for the built-in servers, its PID);
    ``scope_id`` names the timer within the worker; ``expiration_time`` is a
    wall-clock time as from ``time.time()``.
    """

    __slots__ = ["expiration_time", "scope_id", "worker_id"]

    def __init__(self, worker_id: Any, scope_id: str, expiration_time: float) -> None:
        self.worker_id = worker_id
        self.scope_id = scope_id
        self.expiration_time = expiration_time

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TimerRequest):
            return (
                self.worker_id == other.worker_id
                and self.scope_id == other.scope_id
                and self.expiration_time == other.expiration_time
            )
        return False

    __hash__ = None  # type: ignore[assignment]  # mutable, like torch's

    def __lt__(self, other: TimerRequest) -> bool:
        """Requests order by expiration time, so a server can keep them in a heap."""
        return self.expiration_time < other.expiration_time

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(worker_id={self.worker_id!r}, scope_id={self.scope_id!r}, "
            f"expiration_time={self.expiration_time!r})"
        )


class FileTimerRequest(TimerRequest):
    """A timer request on the FIFO: a :class:`TimerRequest` with a version and a signal.

    The worker is identified by its PID. A negative ``expiration_time``
    releases the timer. ``signal`` is what the server sends the worker when
    the timer expires; a timer whose signal is 0 or less expires without one.
    """

    __slots__ = ["signal", "version"]

    def __init__(
        self, worker_pid: int, scope_id: str, expiration_time: float, signal: int = 0
    ) -> None:
        super().__init__(worker_pid, scope_id, expiration_time)
        self.version = _FILE_REQUEST_VERSION
        self.signal = signal

    @property
    def worker_pid(self) -> int:
        """The PID of the worker the timer belongs to."""
        return cast(int, self.worker_id)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FileTimerRequest):
            return (
                super().__eq__(other)
                and self.version == other.version
                and self.signal == other.signal
            )
        return False

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(worker_pid={self.worker_id!r}, scope_id={self.scope_id!r}, "
            f"expiration_time={self.expiration_time!r}, signal={self.signal!r})"
        )

    def to_json(self) -> str:
        """The request as one JSON object, in torch's wire format (no newline).

        Exactly what ``json.dumps`` of the five fields gives. Fields of the
        types a client sends are formatted directly, in a third of the time
        ``json.dumps`` takes; anything else goes through ``json.dumps``.
        """
        version, pid, scope_id = self.version, self.worker_id, self.scope_id
        expiration_time, signum = self.expiration_time, self.signal
        if (
            type(scope_id) is str
            and type(version) is int
            and type(pid) is int
            and _is_json_int(signum)
            and (type(expiration_time) is int or _is_finite_float(expiration_time))
        ):
            # %r is what json.dumps writes for an int or a finite float, %d for
            # an int or an int enum (a signal), and encode_basestring_ascii
            # escapes the string exactly as json.dumps does.
            return _WIRE_FORMAT % (
                version,
                pid,
                encode_basestring_ascii(scope_id),
                expiration_time,
                signum,
            )
        fields = {
            "version": version,
            "pid": pid,
            "scope_id": scope_id,
            "expiration_time": expiration_time,
            "signal": signum,
        }
        return json.dumps(fields)


_WIRE_FORMAT = '{"version": %d, "pid": %d, "scope_id": %s, "expiration_time": %r, "signal": %d}'


def _is_json_int(value: object) -> bool:
    """An int that json.dumps writes as its digits (a bool is written as true or false)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_float(value: object) -> bool:
    return type(value) is float and math.isfinite(value)


class Logged(enum.Enum):
    """What an :data:`OnExpired` callback returns for a worker whose expiry it logs
    through the debug-info hook itself.

    A callback that acts off the server's loop (a diagnosis that takes
    seconds, in a thread of its own) has no stacks to return yet; it logs
    the expiry, with them, when it has them, and the server leaves that
    worker out of its own record, so that the expiry is logged once.
    """

    BY_CALLBACK = "by callback"


#: Called by the Unix-socket server for each worker with expired timers, before
#: the signal: ``on_expired(pid, timers)``; a returned text is logged as the
#: worker's stacks, :attr:`Logged.BY_CALLBACK` leaves the worker to the callback's
#: own record.
OnExpired = Callable[[int, list[FileTimerRequest]], "str | Logged | None"]


class TimerClient(abc.ABC):
    """The worker's side: arms and disarms timers on a server."""

    @abc.abstractmethod
    def acquire(self, scope_id: str, expiration_time: float) -> None:
        """Arm the timer ``scope_id`` of this worker to expire at ``expiration_time``."""

    @abc.abstractmethod
    def release(self, scope_id: str) -> None:
        """Disarm the timer ``scope_id`` of this worker."""


class RequestQueue(abc.ABC):
    """Where a server reads the clients' :class:`TimerRequest` s from."""

    @abc.abstractmethod
    def size(self) -> int:
        """How many requests are waiting (may be approximate)."""

    @abc.abstractmethod
    def get(self, size: int, timeout: float) -> list[TimerRequest]:
        """Up to ``size`` requests, waiting at most ``timeout`` seconds; ``[]`` if none came."""


class TimerServer(Watchdog):
    """A server that reaps workers whose timers expired.

    A subclass implements the four abstract methods. One watchdog round reads
    requests (``get(max(1, size()), timeout)``), registers them, reaps each
    worker with an expired timer, and clears the timers of those reaped. An
    exception in any step is logged and the watchdog goes on.

    The wait of a round ends when a request arrives or at ``max_interval``.
    A subclass that can tell its earliest deadline (:meth:`_next_deadline`)
    also wakes at that deadline: expiry is then detected when it happens,
    whatever ``max_interval`` is.
    """

    def __init__(
        self, request_queue: RequestQueue, max_interval: float, daemon: bool = True
    ) -> None:
        self._request_queue = request_queue
        self._max_interval = max_interval
        self._init_watchdog(daemon)
        self._reaper: Reaper[Any] = Reaper()

    @abc.abstractmethod
    def register_timers(self, timer_requests: list[TimerRequest]) -> None:
        """Arm (or, for a negative expiration time, disarm) the requested timers."""

    @abc.abstractmethod
    def clear_timers(self, worker_ids: set[Any]) -> None:
        """Disarm every timer of the given workers."""

    @abc.abstractmethod
    def get_expired_timers(self, deadline: float) -> dict[Any, list[TimerRequest]]:
        """The timers with ``expiration_time <= deadline``, grouped by worker."""

    @abc.abstractmethod
    def _reap_worker(self, worker_id: Any) -> bool:
        """Reap a worker; True if reaped, False to try again in a later round."""

    def _next_deadline(self) -> float | None:
        """The earliest expiration time of a live timer, if the server knows it.

        The default, None, makes the watchdog wait ``max_interval`` between
        rounds, as torch's does.
        """
        return None

    def _get_requests(self, size: int, timeout: float) -> list[TimerRequest]:
        """A round's requests: ``request_queue.get(size, timeout)``, or a server's own read."""
        return self._request_queue.get(size, timeout)

    def _reap_worker_no_throw(self, worker_id: Any) -> bool:
        """:meth:`_reap_worker`, with an exception logged and counted as reaped (as torch's)."""
        return reap_no_throw(self._reap_worker, worker_id)

    def _stop_join_timeout(self) -> float:
        return max(super()._stop_join_timeout(), self._max_interval)

    def _watchdog_loop(self) -> None:
        while not self._stop_signaled:
            try:
                self._run_watchdog()
            except Exception:
                logger.exception("error running the watchdog")

    def _wait_timeout(self) -> float:
        """How long a round may wait for requests before it must look at deadlines."""
        return wait_timeout(
            self._next_deadline(), self._reaper.retry_at, self._max_interval, time.time()
        )

    def _run_watchdog(self) -> None:
        batch_size = max(1, self._request_queue.size())
        timer_requests = self._get_requests(batch_size, self._wait_timeout())
        self.register_timers(timer_requests)
        now = time.time()
        expired = self.get_expired_timers(now)
        for worker_id, expired_timers in expired.items():
            log_expired(worker_id, [timer.scope_id for timer in expired_timers])
        reaped = self._reaper.reap(expired, self._reap_worker, now, self._max_interval)
        self.clear_timers(reaped)


_default_client: TimerClient | None = None


def configure(timer_client: TimerClient) -> None:
    """Set the client that :func:`expires` uses when it is given none."""
    global _default_client
    _default_client = timer_client
    logger.info("timer client configured to: %s", type(timer_client).__name__)


def expires(after: float, scope: str | None = None, client: TimerClient | None = None) -> _Expires:
    """A context manager that arms a timer for its body and disarms it after.

    If the body has not finished ``after`` seconds from entering, the server
    reaps this worker. ``scope`` names the timer; by default it is
    ``"<file>#<line>"`` of the ``with`` statement, so nested blocks get
    timers of their own. ``client`` defaults to the one :func:`configure` set.
    """
    if isinstance(after, bool) or not isinstance(after, (int, float)):
        raise TypeError(f"expires(after=...) takes a number of seconds, got {after!r}")
    if math.isnan(after) or after < 0:
        raise ValueError(f"expires(after=...) takes a number of seconds >= 0, got {after!r}")
    if client is None:
        client = _default_client
        if client is None:
            raise RuntimeError("configure a timer client (timer.configure(client)) or pass client=")
    if scope is None:
        caller = sys._getframe(1)
        scope = f"{caller.f_code.co_filename}#{caller.f_lineno}"
    return _Expires(client, scope, after)


class _Expires:
    """The context manager :func:`expires` returns; one timer for one block."""

    __slots__ = ("_after", "_client", "_scope")

    def __init__(self, client: TimerClient, scope: str, after: float) -> None:
        self._client = client
        self._scope = scope
        self._after = after

    def __enter__(self) -> None:
        self._client.acquire(self._scope, time.time() + self._after)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._client.release(self._scope)
