"""The named-pipe pair: clients write timer requests to a FIFO, one JSON line each.

Any process that can open the FIFO can arm a timer, whatever started it and
whatever language it is written in: the wire format is torch's
(``{"version": 1, "pid": ..., "scope_id": ..., "expiration_time": ...,
"signal": ...}`` and a newline), so this module's client works with torch's
server and torch's client with this module's server.

Why not torch's own: its server polls (a deadline is noticed up to a second or
``max_interval`` late, and not at all while a writer holds the FIFO open), drops
a whole batch when one line is malformed, deletes whatever file sits at its
path, signals any PID (or process group) that a line names, and signals its own
process after every reap. Its client turns a full pipe into a
``BlockingIOError`` and lets through a request one byte too long to be
written atomically.

Here the server waits in ``poll()`` on the FIFO and a self-pipe, with a timeout
that ends at the earliest deadline; it reads whatever is there in chunks and
decodes it line by line, keeping an incomplete last line for the next read, so
one bad line costs only itself (and a request glued to a broken writer's
incomplete line is still found). A worker is signalled through
:class:`~pytest_expire.timer._guard.ReapGuard`: only while it is the process
that armed the timer, and only if it descends from the process that created the
server (or was admitted). The client waits out a full pipe.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import math
import multiprocessing
import os
import re
import select
import stat
import threading
import time
from collections.abc import Callable
from signal import NSIG, SIGKILL
from typing import TYPE_CHECKING, Any, cast

from pytest_expire.timer._guard import ReapGuard
from pytest_expire.timer._reaping import Reaper, log_expired
from pytest_expire.timer._table import TimerTable, apply_requests, clear_workers, wait_timeout
from pytest_expire.timer._validation import (
    checked_expiration,
    checked_signal,
    is_valid_expiration,
)
from pytest_expire.timer._watchdog import Watchdog
from pytest_expire.timer.api import _FILE_REQUEST_VERSION as _VERSION
from pytest_expire.timer.api import FileTimerRequest, TimerClient
from pytest_expire.timer.debug_info_logging import log_debug_info_for_expired_timers

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext

__all__ = ["FileTimerClient", "FileTimerRequest", "FileTimerServer"]

logger = logging.getLogger(__name__)

_KEYS = frozenset(("version", "pid", "scope_id", "expiration_time", "signal"))
# The largest PID any kernel hands out (pid_t is a 32-bit int); a larger
# number is not a PID, and some system calls would overflow on it.
_MAX_PID = 2**31 - 1
_MIN_SIGNAL = -(2**31)
# How long a client waits for a server that is starting (the FIFO exists but
# nobody reads it yet; torch's server opens it only after start() returned).
_CONNECT_WAIT = 0.5
# How long a client waits for room in a full pipe before it gives up.
_FULL_PIPE_WAIT = 5.0
# The server reads this much at a time, and at most _ROUND_READ_LIMIT per
# round, so that writers that never stop cannot keep it from its deadlines.
_READ_CHUNK = 65536
_ROUND_READ_LIMIT = 16 * _READ_CHUNK
# run_once() reads what is in the pipe; this bounds it against endless writers.
_DRAIN_LIMIT = 256 * _READ_CHUNK
# The longest single wait of the watchdog (poll() takes a C int of milliseconds).
_MAX_WAIT = 3600.0
# How much of a dropped line a log record shows.
_LOGGED_BYTES = 200

LogEvent = Callable[[str, "FileTimerRequest | None"], None]


# --------------------------------------------------------------------------- client


class FileTimerClient(TimerClient):
    """Client side of the named-pipe pair: writes requests to the server's FIFO.

    ``file_path`` is the FIFO a :class:`FileTimerServer` (this module's or
    torch's) created; ``signal`` is what the server sends this worker when one
    of its timers expires (0 or less: none). When no server reads the FIFO, a
    request raises ``BrokenPipeError``.

    A request and its newline must fit in ``select.PIPE_BUF`` bytes, so that
    each is written at once, never interleaved with another writer's. A full
    pipe is waited out, a few seconds at most.

    The FIFO is opened for each request and closed after it, as torch's client
    does. Keeping it open would be cheaper (about 1 us a request instead of
    10), but torch's server stops checking deadlines while any writer holds
    its FIFO open (it blocks reading a line), and a hung worker would hold it
    open for ever: its own timer would never fire.
    """

    def __init__(self, file_path: str, signal: int = SIGKILL) -> None:
        super().__init__()
        self._file_path = file_path
        self.signal = checked_signal(signal)

    def acquire(self, scope_id: str, expiration_time: float) -> None:
        """Arm ``scope_id``; a negative time releases it, as in torch (see ``_validation``).

        JSON has no infinity, so a timer that never expires cannot be sent: an
        infinite time is refused with ValueError.
        """
        checked = checked_expiration(expiration_time)
        if checked is None:
            self.release(scope_id)
            return
        if checked == math.inf:
            raise ValueError(f"expiration_time must be finite on a FIFO, got {expiration_time!r}")
        self._send_request(FileTimerRequest(os.getpid(), scope_id, expiration_time, self.signal))

    def release(self, scope_id: str) -> None:
        self._send_request(FileTimerRequest(os.getpid(), scope_id, -1, 0))

    def _send_request(self, request: FileTimerRequest) -> None:
        data = (request.to_json() + "\n").encode()
        if len(data) > select.PIPE_BUF:
            raise RuntimeError(
                f"a FileTimerRequest takes at most {select.PIPE_BUF} bytes with its newline, "
                f"this one takes {len(data)}: {request!r}"
            )
        fd = _open_fifo_for_writing(self._file_path)
        try:
            self._write(fd, data)
        except BrokenPipeError as exc:
            raise BrokenPipeError(
                f"the FileTimerServer reading {self._file_path} went away"
            ) from exc
        finally:
            os.close(fd)

    def _write(self, fd: int, data: bytes) -> None:
        """Write ``data`` at once; if the pipe is full, wait a little for room."""
        give_up_at: float | None = None
        while True:
            try:
                written = os.write(fd, data)
            except BlockingIOError:
                now = time.monotonic()
                if give_up_at is None:
                    give_up_at = now + _FULL_PIPE_WAIT
                elif now >= give_up_at:
                    raise TimeoutError(
                        f"the FileTimerServer at {self._file_path} has not read its FIFO "
                        f"for {_FULL_PIPE_WAIT} s (the pipe is full)"
                    ) from None
                poller = select.poll()
                poller.register(fd, select.POLLOUT)
                poller.poll(math.ceil((give_up_at - now) * 1000))
                continue
            if written == len(data):
                return
            data = data[written:]  # not for a pipe and at most PIPE_BUF bytes


def _open_fifo_for_writing(path: str) -> int:
    """Open the FIFO at ``path`` for writing without blocking; BrokenPipeError if no server."""
    give_up_at = time.monotonic() + _CONNECT_WAIT
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            break
        except FileNotFoundError as exc:
            raise BrokenPipeError(f"no FileTimerServer: {path} does not exist") from exc
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise BrokenPipeError(
                    f"cannot open the FileTimerServer FIFO {path}: {exc}"
                ) from exc
            # ENXIO: the FIFO exists but nobody reads it (yet).
            if time.monotonic() >= give_up_at:
                raise BrokenPipeError(f"no FileTimerServer is reading {path}") from exc
            time.sleep(0.01)
    try:
        is_fifo = stat.S_ISFIFO(os.fstat(fd).st_mode)
    except OSError:
        is_fifo = False
    if not is_fifo:
        os.close(fd)
        raise BrokenPipeError(f"{path} is not a FIFO: no FileTimerServer there")
    return fd


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


# -------------------------------------------------------------------------- decoder


class MalformedRequest(ValueError):
    """A line on the FIFO that is not a well-formed timer request."""


def _reject_constant(name: str) -> Any:
    raise MalformedRequest(f"{name} is not a time")


# Built once: json.loads() with any keyword builds a decoder per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


# The line a client sends (``json.dumps`` of the five fields, in this order)
# when its scope needs no escaping: the JSON grammar of each value, nothing
# more. Matched, such a line is decoded without the JSON parser; any other
# line goes through it. A time is an int (a release's -1; at most 15 digits,
# so any is a valid time) or a float, as JSON makes it.
_JSON_INT = rb"-?(?:0|[1-9][0-9]*)"
_CANONICAL = re.compile(
    rb'\{"version": 1, "pid": ([1-9][0-9]{0,9}), "scope_id": "([^"\\\x00-\x1f]*)", '
    rb'"expiration_time": (?:(-?(?:0|[1-9][0-9]{0,14}))|('
    + _JSON_INT
    + rb"(?:\.[0-9]+(?:[eE][-+]?[0-9]+)?|[eE][-+]?[0-9]+))), "
    rb'"signal": (' + _JSON_INT + rb")\}"
)


def parse_request(line: bytes) -> FileTimerRequest:
    """Decode one line (without its newline); raise :class:`MalformedRequest` if it is bad."""
    if len(line) + 1 > select.PIPE_BUF:
        raise MalformedRequest(f"longer than {select.PIPE_BUF} bytes")
    request = _parse_canonical(line)
    return request if request is not None else _parse_json(line)


def _parse_canonical(line: bytes) -> FileTimerRequest | None:
    """The request of a line in the form clients send, without the JSON parser; else None.

    Decodes to exactly what :func:`_parse_json` gives; a line it matches but
    that holds a value out of range is left to :func:`_parse_json` to refuse.
    """
    match = _CANONICAL.fullmatch(line)
    if match is None:
        return None
    pid_digits, scope_bytes, int_time, float_time, signal_digits = match.groups()
    pid, signum = int(pid_digits), int(signal_digits)
    expiration_time = int(int_time) if int_time is not None else float(float_time)
    if not (
        1 < pid <= _MAX_PID and math.isfinite(expiration_time) and _MIN_SIGNAL <= signum < NSIG
    ):
        return None
    try:
        scope_id = scope_bytes.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return FileTimerRequest(pid, scope_id, expiration_time, signum)


def _parse_json(line: bytes) -> FileTimerRequest:
    """Decode any JSON line; raise :class:`MalformedRequest` if it is not a request."""
    try:
        obj = _DECODER.decode(line.decode("utf-8"))
    except MalformedRequest:
        raise
    except UnicodeDecodeError as exc:
        raise MalformedRequest(f"not UTF-8: {exc}") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, int too long, nesting
        raise MalformedRequest(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MalformedRequest("not a JSON object")
    missing = _KEYS.difference(obj)
    if missing:
        raise MalformedRequest(f"missing {sorted(missing)}")
    version, pid, scope_id = obj["version"], obj["pid"], obj["scope_id"]
    expiration_time, signum = obj["expiration_time"], obj["signal"]
    if type(version) is not int or version != _VERSION:
        raise MalformedRequest(f"unknown version {version!r}")
    if type(pid) is not int or not 1 < pid <= _MAX_PID:
        raise MalformedRequest(f"pid {pid!r} is not a worker process")
    if not isinstance(scope_id, str):
        raise MalformedRequest(f"scope_id {scope_id!r} is not a string")
    if not is_valid_expiration(expiration_time) or not math.isfinite(expiration_time):
        raise MalformedRequest(f"expiration_time {expiration_time!r} is not a time")
    if type(signum) is not int or not _MIN_SIGNAL <= signum < NSIG:
        raise MalformedRequest(f"signal {signum!r} is not a signal number")
    return FileTimerRequest(pid, scope_id, expiration_time, signum)


class RequestDecoder:
    """Turns the bytes read from the FIFO into requests, line by line.

    Reads need not end at a line's end: the incomplete last line is kept and
    completed by the next :meth:`feed`. A line that is not a request (not
    JSON, wrong fields, longer than ``PIPE_BUF``) is logged and dropped alone;
    the lines around it are decoded.

    Conforming writers write whole lines at once, but a broken or hostile one
    may leave an incomplete line, which the next writer's request then
    completes. Such a request is not lost: a serialized request starts with
    ``{"version"``, which cannot occur inside one (quotes in strings are
    escaped), so a line that does not decode is decoded again from the last
    place it occurs. For the same reason, of an incomplete line that grows
    beyond ``PIPE_BUF`` only the last ``PIPE_BUF - 1`` bytes are kept.
    """

    __slots__ = ("_partial", "_truncated")

    def __init__(self) -> None:
        self._partial = b""
        self._truncated = False  # bytes were dropped from the front of _partial

    def feed(self, data: bytes) -> list[FileTimerRequest]:
        """Decode the lines ``data`` completes; keep the incomplete rest. Never raises."""
        lines = data.split(b"\n")
        rest = lines.pop()
        requests: list[FileTimerRequest] = []
        truncated = False
        if lines:
            lines[0] = self._partial + lines[0]
            truncated = self._truncated
            self._partial, self._truncated = b"", False
        for line in lines:
            try:
                _decode_line(line, truncated, requests)
            except Exception:  # pragma: no cover - a decoder bug must not stop the server
                logger.exception("could not decode timer request %r", line[:_LOGGED_BYTES])
            truncated = False
        if rest:
            partial = self._partial + rest
            if len(partial) >= select.PIPE_BUF:
                partial = partial[-(select.PIPE_BUF - 1) :]
                self._truncated = True
            self._partial = partial
        return requests

    @property
    def pending(self) -> int:
        """How many bytes of an incomplete line are kept."""
        return len(self._partial)


_REQUEST_START = b'{"version"'


def _decode_line(line: bytes, truncated: bool, requests: list[FileTimerRequest]) -> None:
    """Append the request ``line`` holds to ``requests``, or log why it holds none.

    ``truncated``: the line lost its beginning (it was longer than PIPE_BUF).
    """
    if truncated:
        reason = f"longer than {select.PIPE_BUF} bytes"
    else:
        if not line.strip():
            return
        try:
            requests.append(parse_request(line))
            return
        except MalformedRequest as exc:
            reason = str(exc)
    start = line.rfind(_REQUEST_START, 0 if truncated else 1)
    if start >= 0:
        try:
            request = parse_request(line[start:])
        except MalformedRequest:
            pass
        else:
            _log_drop(line[:start], f"garbage before a request, {reason}")
            requests.append(request)
            return
    _log_drop(line, reason)


def _log_drop(line: bytes, reason: str) -> None:
    shown = line[:_LOGGED_BYTES]
    more = f" (+{len(line) - len(shown)} bytes)" if len(line) > len(shown) else ""
    logger.warning("dropping malformed timer request (%s): %r%s", reason, shown, more)


# --------------------------------------------------------------------------- server


def _ignore_event(name: str, request: FileTimerRequest | None) -> None:
    """The default ``log_event``: nothing."""


class FileTimerServer(Watchdog):
    """Server side of the named-pipe pair.

    Creates the FIFO ``file_path`` (mode 0600; an existing FIFO is reused,
    any other file is refused) when constructed, and removes it in
    :meth:`stop`. Timers are keyed by ``(pid, scope_id)``. When a worker's
    timers expire, they are reported through
    :func:`~pytest_expire.timer.debug_info_logging.log_debug_info_for_expired_timers`
    under ``run_id``, and the worker gets the signal of its earliest expired
    timer that has one (> 0); then its timers are cleared. Timers of a worker
    that has exited are dropped.

    The watchdog wakes when a request arrives or at the earliest deadline;
    ``max_interval`` only bounds how long it waits. ``start()`` runs it in a
    thread, ``start(process=True)`` in a process of its own (the state then
    lives in that process). ``log_event(name, request_or_None)`` is called
    with ``"watchdog started"``, ``"watchdog stopped"`` (in the process that
    calls start and stop), ``"timer expired"`` and ``"kill worker process"``
    (where the watchdog runs).

    A worker is signalled only while it is the process that armed the timer,
    and only if it descends from the process that created the server or was
    :meth:`admit`-ted; never PID 0 or 1, a process group, or the server.
    """

    def __init__(
        self,
        file_path: str,
        run_id: str,
        max_interval: float = 10,
        daemon: bool = True,
        log_event: LogEvent | None = None,
    ) -> None:
        if not max_interval > 0:
            raise ValueError(f"max_interval must be > 0 seconds, got {max_interval!r}")
        self._file_path = file_path
        self._run_id = run_id
        self._max_interval = max_interval
        self._log_event: LogEvent = log_event if log_event is not None else _ignore_event
        self._guard = ReapGuard()
        self._init_watchdog(daemon)
        self._started = False
        # Written where the watchdog runs, read wherever the server object is.
        self._progress = multiprocessing.RawValue(ctypes.c_double, 0.0)
        self._fifo_id: tuple[int, int] | None = None
        self._init_runtime()
        self._ensure_fifo()

    def _init_runtime(self) -> None:
        """The state that belongs to where the watchdog runs (not pickled)."""
        self._io_lock = threading.RLock()
        self._read_fd: int | None = None
        self._write_fd: int | None = None
        self._wake_r: int | None = None
        self._wake_w: int | None = None
        self._poller: select.poll | None = None
        self._decoder = RequestDecoder()
        self._timers: TimerTable[FileTimerRequest] = TimerTable()
        # How many requests were registered (torch's tests read it).
        self._request_count = 0
        self._reaper: Reaper[int] = Reaper()
        self._final_round = False

    # ---- public API

    def admit(self, pid: int) -> None:
        """Allow signalling ``pid`` although it does not descend from this server's host."""
        self._guard.admit(pid)

    def start(self, *, process: bool = False, mp_context: BaseContext | str | None = None) -> None:
        """Start watching; clients can connect as soon as this returns (on a running
        server, nothing happens)."""
        if self._already_running(process):
            return
        logger.info(
            "starting %s: file_path=%s, max_interval=%s, process=%s",
            type(self).__name__,
            self._file_path,
            self._max_interval,
            process,
        )
        self._ensure_fifo()  # again after a stop()
        if process:
            # The process opens the FIFO itself; a second reader here would
            # take requests that nobody handles.
            self._close_io()
        super().start(process=process, mp_context=mp_context)
        self._started = True
        self._emit("watchdog started", None)

    def stop(self) -> None:
        """Stop watching, remove the FIFO; return promptly."""
        thread = self._watchdog_thread
        super().stop()
        if thread is None or not thread.is_alive():
            self._close_io()  # run_once() may have opened it here
        self._remove_fifo()
        if self._started:
            self._started = False
            self._emit("watchdog stopped", None)

    def run_once(self) -> None:
        """Handle the requests already written, and the timers due now, once.

        With a watchdog thread running, that thread does it as its last round
        and ends, and the FIFO is removed (as torch's ``run_once`` does);
        otherwise the calling thread does it, opening the FIFO if needed (it
        stays open until :meth:`stop`).
        """
        thread = self._watchdog_thread
        if thread is not None and thread.is_alive():
            self._final_round = True
            self._wake()
            thread.join()
            self._watchdog_thread = None
            self._remove_fifo()
            return
        if self._watchdog_process is not None:
            raise RuntimeError("run_once() cannot reach a watchdog process; stop() it first")
        if self._read_fd is None:
            self._prepare()
        self._run_watchdog(wait=False)

    @staticmethod
    def is_process_running(pid: int) -> bool:
        """Whether process ``pid`` exists and has not exited (a zombie has)."""
        if type(pid) is not int or pid <= 0:
            return False
        import psutil

        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.AccessDenied:
            return True
        except psutil.Error:
            return False

    def get_last_progress_time(self) -> float:
        """The wall-clock time the watchdog last completed a round (now if never started)."""
        last = self._progress.value
        return last if last > 0 else time.time()

    def register_timers(self, timer_requests: list[FileTimerRequest]) -> None:
        """Arm the requested timers, or release those with a negative expiration time,
        after dropping the timers of workers that exited (``_table.apply_requests``)."""
        self._request_count += len(timer_requests)
        apply_requests(self._timers, self._guard, timer_requests)

    def clear_timers(self, worker_pids: set[int]) -> None:
        """Disarm every timer of the given workers."""
        clear_workers(self._timers, self._guard, worker_pids)

    def get_expired_timers(self, deadline: float) -> dict[int, list[FileTimerRequest]]:
        """The timers with ``expiration_time <= deadline`` by worker, earliest first."""
        return cast(dict[int, list[FileTimerRequest]], self._timers.expired(deadline))

    # ---- the watchdog

    def _ensure_fifo(self) -> None:
        """Create the FIFO if nothing is at the path; refuse anything but a FIFO."""
        with contextlib.suppress(FileExistsError):
            os.mkfifo(self._file_path, 0o600)
        st = os.lstat(self._file_path)
        if not stat.S_ISFIFO(st.st_mode):
            raise FileExistsError(
                errno.EEXIST,
                "the path exists and is not a FIFO; FileTimerServer neither uses nor replaces it",
                self._file_path,
            )
        self._fifo_id = (st.st_dev, st.st_ino)

    def _remove_fifo(self) -> None:
        """Remove the FIFO, if the one at the path is still ours."""
        try:
            st = os.lstat(self._file_path)
            if stat.S_ISFIFO(st.st_mode) and (st.st_dev, st.st_ino) == self._fifo_id:
                os.unlink(self._file_path)
            else:
                logger.warning(
                    "not removing %s: it is no longer this server's FIFO", self._file_path
                )
        except FileNotFoundError:
            pass
        except OSError:
            logger.exception("could not remove %s", self._file_path)

    def _prepare(self) -> None:
        if self._read_fd is not None:
            return  # opened by run_once() in this process
        self._ensure_fifo()
        flags = os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW
        opened: list[int] = []
        try:
            read_fd = os.open(self._file_path, os.O_RDONLY | flags)
            opened.append(read_fd)
            # Our own writer: the reader never sees end-of-file, however
            # clients come and go, so poll() never reports a hang-up.
            write_fd = os.open(self._file_path, os.O_WRONLY | flags)
            opened.append(write_fd)
            for fd in opened:
                st = os.fstat(fd)
                if not stat.S_ISFIFO(st.st_mode) or (st.st_dev, st.st_ino) != self._fifo_id:
                    raise FileExistsError(
                        errno.EEXIST, "the FIFO was replaced while being opened", self._file_path
                    )
            wake_r, wake_w = os.pipe()
            opened += [wake_r, wake_w]
            os.set_blocking(wake_r, False)
            os.set_blocking(wake_w, False)
        except BaseException:
            for fd in opened:
                _close_quietly(fd)
            raise
        poller = select.poll()
        poller.register(read_fd, select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        self._decoder = RequestDecoder()
        self._timers = TimerTable()
        self._reaper = Reaper()
        self._final_round = False
        with self._io_lock:
            self._read_fd, self._write_fd = read_fd, write_fd
            self._wake_r, self._wake_w = wake_r, wake_w
            self._poller = poller
        self._progress.value = time.time()

    def _wake(self) -> None:
        with self._io_lock:
            if self._wake_w is not None:
                with contextlib.suppress(OSError):  # full: a wake-up is pending anyway
                    os.write(self._wake_w, b"\0")

    def _cleanup(self) -> None:
        self._close_io()
        self._remove_fifo()
        self._guard.close()

    def _close_io(self) -> None:
        with self._io_lock:
            fds = [self._read_fd, self._write_fd, self._wake_r, self._wake_w]
            self._read_fd = self._write_fd = self._wake_r = self._wake_w = None
            self._poller = None
        for fd in fds:
            if fd is not None:
                _close_quietly(fd)

    def _watchdog_loop(self) -> None:
        while not self._stop_signaled and self._read_fd is not None:
            final = self._final_round
            try:
                self._run_watchdog(wait=not final)
            except Exception:
                logger.exception("error running the watchdog")
                time.sleep(min(0.1, self._max_interval))  # no busy loop on a lasting error
            if final:
                break

    def _run_watchdog(self, wait: bool = True) -> None:
        """One round: wait for a request or the next deadline, read what came, reap what expired.

        torch's name for a round, which code written for torch wraps to count rounds.
        """
        poller, read_fd, wake_r = self._poller, self._read_fd, self._wake_r
        if poller is None or read_fd is None or wake_r is None:
            return
        if wait:
            ready = poller.poll(math.ceil(min(self._wait_timeout(), _MAX_WAIT) * 1000))
            if any(fd == wake_r for fd, _ in ready):
                _drain(wake_r)
        self.register_timers(self._read(read_fd, _ROUND_READ_LIMIT if wait else _DRAIN_LIMIT))
        self._reap_expired(time.time())
        self._progress.value = time.time()

    def _wait_timeout(self) -> float:
        return wait_timeout(
            self._timers.next_deadline(), self._reaper.retry_at, self._max_interval, time.time()
        )

    def _read(self, fd: int, limit: int) -> list[FileTimerRequest]:
        """Decode what the pipe holds, up to ``limit`` bytes.

        A read shorter than asked for emptied the pipe: reading on would only
        fail with EAGAIN, which costs a system call and an exception a round.
        """
        requests: list[FileTimerRequest] = []
        total = 0
        while total < limit:
            try:
                chunk = os.read(fd, _READ_CHUNK)
            except BlockingIOError:
                break
            total += len(chunk)
            requests += self._decoder.feed(chunk)
            if len(chunk) < _READ_CHUNK:
                break
        return requests

    def _reap_expired(self, now: float) -> None:
        expired = self.get_expired_timers(now)
        if not expired and self._reaper.retry_at is None:
            return
        for pid in list(expired):
            if not self.is_process_running(pid):
                logger.info("worker %d has exited; dropping its timers", pid)
                self.clear_timers({pid})
                del expired[pid]
        if expired:
            try:
                log_debug_info_for_expired_timers(
                    self._run_id,
                    {pid: [timer.to_json() for timer in timers] for pid, timers in expired.items()},
                )
            except Exception:
                logger.exception("error logging the expired timers")
        signals: dict[int, int] = {}
        for pid, timers in expired.items():
            log_expired(pid, [timer.scope_id for timer in timers])
            for timer in timers:
                self._emit("timer expired", timer)
            to_kill = next((timer for timer in timers if timer.signal > 0), None)
            if to_kill is None:
                logger.info("no signal requested for worker %d; not reaping it", pid)
                self.clear_timers({pid})
            else:
                self._emit("kill worker process", to_kill)
                signals[pid] = to_kill.signal
        reaped = self._reaper.reap(
            signals, lambda pid: self._reap_worker(pid, signals[pid]), now, self._max_interval
        )
        self.clear_timers(reaped)

    def _reap_worker(self, worker_pid: int, signal: int) -> bool:
        """Send ``signal`` to the worker, if it may be signalled (see ``ReapGuard``).

        True when the worker needs no more attention, False to try again
        later; the name and arguments are torch's, for code that patches it.
        """
        return self._guard.send_signal(worker_pid, signal)

    def _emit(self, name: str, request: FileTimerRequest | None) -> None:
        try:
            self._log_event(name, request)
        except Exception:
            logger.exception("log_event(%r) failed", name)

    # ---- pickling (start(process=True))

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        for name in _RUNTIME_ATTRIBUTES:
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()


_RUNTIME_ATTRIBUTES = (
    "_io_lock",
    "_read_fd",
    "_write_fd",
    "_wake_r",
    "_wake_w",
    "_poller",
    "_decoder",
    "_timers",
    "_reaper",
    "_final_round",
    "_request_count",
)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
