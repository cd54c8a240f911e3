"""The Unix-socket pair: one server per session, reachable through an address string.

torch's two pairs each miss something a pytest session needs. The queue pair
reaches only processes that were handed the queue (and a writer killed inside
``put`` wedges every other writer); the named-pipe pair reaches any process
that knows the path, but takes the worker's PID from the message, so any
writer can have any process signalled, and it never learns that a worker
died. This pair offers:

- **An address string** (``"unix:/path/to/socket"``, see :func:`parse_address`)
  that can be put in an environment variable of the caller's choice, so
  xdist workers, spawned multiprocessing children and plain subprocesses all
  reach the same server (:meth:`UnixSocketTimerClient.from_env`).
- **Identity from the kernel.** A client connects to a ``SOCK_SEQPACKET``
  Unix socket; at ``accept`` the server reads ``SO_PEERCRED``, the PID and
  user of the process that connected, as the kernel recorded them. Requests
  carry no PID: every timer armed through a connection belongs to the
  process that made it. A forked child does not inherit its parent's
  connection (the client drops it in the child and connects anew), so its
  timers are its own. Peers of another user are refused.
- **Death is noticed.** When a client process exits or is killed, the kernel
  closes its connection; the server sees the end of the connection and drops
  that process's timers.
- **The cheapest request.** Sending a message on a Unix socket costs several
  times a pipe write (the kernel allocates a buffer per message, then wakes
  the server), more than the budget of an acquire *and* a release
  (docs/benchmarks.md). So the socket is only the control channel. At
  connect the client hands the server (``SCM_RIGHTS``) the read end of a
  pipe of its own; requests are writes to that pipe, and writes do not wake
  the server. The server reads every pipe whenever it wakes, and before it
  sleeps it publishes in a shared page (a sealed ``memfd``, also handed over
  at connect) the time it will next wake. A client whose new deadline is
  earlier than that time wakes the server with a one-byte message on the
  socket; a release never needs to, because the server reads all pipes
  before it looks at any deadline, so a release written in time is always
  seen in time. Since the pipe is handed over on the connection the kernel
  vouched for, requests on it are that process's, exactly as requests on the
  socket would be.

Why ``SOCK_SEQPACKET`` for the socket: it keeps message boundaries (a
malformed control message is dropped alone, unlike a byte stream that a bad
length desynchronizes), it is connection-oriented (the end of a connection
tells that the process is gone), and it carries ``SO_PEERCRED`` and
``SCM_RIGHTS``.

Wire format. Control socket, client to server: ``HELLO`` (``b"PXT1"`` with the
pipe's read end attached) once, then ``WAKE`` (``b"w"``) any number of times;
server to client: ``WELCOME`` (``b"PXT1"`` with the wake page attached). Pipe:
one message per ``write`` of at most ``PIPE_BUF`` bytes (so writes of
concurrent threads never interleave), little-endian header ``<HBdi`` (total
length, op: 1 acquire / 2 release, expiration time, signal) then the scope,
UTF-8. A release carries -1 and 0 in the time and signal fields, which the
server ignores. A message with a bad op, time (NaN or negative; ``inf`` means
"never"), signal (``>= NSIG``; ``<= 0`` means "expire without a kill") or
scope (not UTF-8) is dropped alone and logged; a bad *length* leaves no way to
find the next message, so the server closes that connection.

What happens when a connection ends: the server first reads what is left in
its pipe, then, if it was the last connection of that PID, drops the PID's
timers and forgets its identity. A process may hold several connections (one
per client object); its timers are keyed by ``(pid, scope)`` and shared by
them, so they stay armed while any of its connections lives: closing one
client object does not disarm timers another one armed.

Known limit: a request written after the server died raises
``BrokenPipeError`` only while ``SIGPIPE`` is ignored, as Python sets it at
startup; a process that restored ``SIGPIPE``'s default action is killed by it
instead.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import logging
import math
import mmap
import os
import secrets
import select
import signal
import socket
import stat
import struct
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, cast

from pytest_expire.timer import debug_info_logging
from pytest_expire.timer._guard import ReapGuard
from pytest_expire.timer._reaping import Reaper
from pytest_expire.timer._table import TimerTable
from pytest_expire.timer._validation import checked_expiration, checked_signal
from pytest_expire.timer._watchdog import Watchdog
from pytest_expire.timer.api import FileTimerRequest, Logged, OnExpired, TimerClient

__all__ = [
    "MAX_SCOPE_BYTES",
    "Logged",
    "OnExpired",
    "PreparedTimers",
    "TimerServerError",
    "UnixSocketTimerClient",
    "UnixSocketTimerServer",
    "format_address",
    "parse_address",
]

logger = logging.getLogger(__name__)

_SCHEME = "unix:"
# sun_path holds 108 bytes, the terminating NUL included.
_MAX_PATH_BYTES = 107

# One request on the pipe: total length, op, expiration time, signal; then the scope.
_HEADER = struct.Struct("<HBdi")
_HEADER_SIZE = _HEADER.size
_MAX_MESSAGE = select.PIPE_BUF
#: The longest scope, in UTF-8 bytes, that fits one atomic pipe write.
MAX_SCOPE_BYTES = _MAX_MESSAGE - _HEADER_SIZE
_ACQUIRE = 1
_RELEASE = 2
_RELEASE_TIME = -1.0

_HELLO = b"PXT1"
_WELCOME = b"PXT1"
_WAKE = b"w"
_CONTROL_SIZE = 64
_FD_SIZE = array.array("i").itemsize
# Room for a few descriptors, so that extra ones a peer attaches are received and closed.
_ANCILLARY_SIZE = socket.CMSG_SPACE(4 * _FD_SIZE)
_PEERCRED = struct.Struct("iII")

# The wake page holds one native double: when the server will next wake
# (a time.time() value), or _AWAKE while it is awake. An aligned 8-byte load
# or store is a single instruction on every 64-bit platform, so a reader
# never sees half of a value.
_WAKE_TIME = struct.Struct("d")
_AWAKE = 0.0

_DEFAULT_TIMEOUT = 1.0
_RELEASE_CACHE_SIZE = 256
_READ_SIZE = 65536
# What a client asks for its request pipe (the kernel's default is 64 KiB;
# an unprivileged process may have up to /proc/sys/fs/pipe-max-size, 1 MiB).
_PIPE_SIZE = 1 << 20
# Per connection and round, so one busy client cannot starve the others or the deadlines.
_CONTROL_BATCH = 256
_ACCEPT_BATCH = 64
# epoll cannot wait much longer than 2**31 ms; waking early is harmless.
_MAX_WAIT = 86400.0
_ERROR_BACKOFF = 0.1
# What reading a client's pipe found (see _read_pipe).
_NOTHING, _SOME, _FULL = 0, 1, 2


class TimerServerError(ConnectionError):
    """The client cannot reach its timer server, was refused, or lost it."""


def parse_address(address: str) -> str:
    """The socket path of a server address: ``"unix:/absolute/path"``.

    The absolute path alone is accepted too. Raises ``ValueError`` naming
    what is wrong with a malformed address.
    """
    if not isinstance(address, str):
        raise TypeError(f"a timer server address is a str, got {type(address).__name__}")
    if address.startswith(_SCHEME):
        path = address[len(_SCHEME) :]
    elif address.startswith("/"):
        path = address
    else:
        raise ValueError(
            f"timer server address {address!r} does not start with {_SCHEME!r} "
            f"(expected {_SCHEME}/absolute/path/to/socket)"
        )
    if not path:
        raise ValueError(f"timer server address {address!r} names no socket path")
    if "\0" in path:
        raise ValueError(f"timer server address {address!r} contains a NUL character")
    if not os.path.isabs(path):
        raise ValueError(
            f"timer server address {address!r} has a relative path; it must be absolute "
            "so that processes in any directory reach the same server"
        )
    if len(os.fsencode(path)) > _MAX_PATH_BYTES:
        raise ValueError(
            f"timer server address {address!r} is too long: a Unix socket path holds at "
            f"most {_MAX_PATH_BYTES} bytes"
        )
    return path


def format_address(path: str) -> str:
    """The address of a server listening at ``path`` (checked like :func:`parse_address`)."""
    return _SCHEME + parse_address(_SCHEME + path)


# ---------------------------------------------------------------------------
# The pipe's messages


def _encode_release(scope: bytes) -> bytes:
    return _HEADER.pack(_HEADER_SIZE + len(scope), _RELEASE, _RELEASE_TIME, 0) + scope


def _checked_scope(scope_id: object) -> bytes:
    """``scope_id`` in UTF-8; TypeError if it is not a str, ValueError if too long a one."""
    if not isinstance(scope_id, str):
        raise TypeError(f"scope_id must be a str, got {scope_id!r}")
    scope = scope_id.encode()
    if len(scope) > MAX_SCOPE_BYTES:
        raise ValueError(
            f"scope_id {scope_id[:80]!r}... is {len(scope)} bytes in UTF-8; "
            f"at most {MAX_SCOPE_BYTES} fit one request"
        )
    return scope


def _arming_request(scope: bytes, expiration_time: object, signum: int) -> tuple[bytes, float]:
    """The request that arms the timer ``scope``, and its deadline: every arming path's.

    ``scope`` and ``signum`` are checked already (:func:`_checked_scope`,
    ``checked_signal``); ``expiration_time`` is checked here
    (``checked_expiration``): a negative one gives the scope's release,
    whose deadline is infinite (it never wakes the server).
    """
    if type(expiration_time) is float and expiration_time >= 0.0:
        deadline = expiration_time
    else:
        checked = checked_expiration(expiration_time)
        if checked is None:
            return _encode_release(scope), math.inf
        deadline = checked
    request = _HEADER.pack(_HEADER_SIZE + len(scope), _ACQUIRE, deadline, signum) + scope
    return request, deadline


class _Decoded(NamedTuple):
    """What :func:`_decode` found at the start of a pipe's bytes."""

    #: ``(scope, expiration_time, signal)``; a release has time -1.0 and signal 0.
    requests: list[tuple[str, float, int]]
    #: One line per message dropped for a bad op, time, signal or scope.
    problems: list[str]
    #: How many bytes the complete messages took; the rest is an incomplete message.
    consumed: int
    #: A message's length is impossible: what follows cannot be parsed.
    broken: bool


def _decode(data: bytes) -> _Decoded:
    """Split ``data`` into messages, dropping the malformed ones. Never raises."""
    requests: list[tuple[str, float, int]] = []
    problems: list[str] = []
    unpack = _HEADER.unpack_from
    end_of_data = len(data)
    offset = 0
    while end_of_data - offset >= _HEADER_SIZE:
        length, op, expiration_time, signum = unpack(data, offset)
        if not _HEADER_SIZE <= length <= _MAX_MESSAGE:
            problems.append(f"impossible message length {length}")
            return _Decoded(requests, problems, offset, True)
        end = offset + length
        if end > end_of_data:
            break
        try:
            scope = data[offset + _HEADER_SIZE : end].decode()
        except UnicodeDecodeError:
            problems.append(f"scope is not UTF-8: {data[offset + _HEADER_SIZE : end]!r}")
        else:
            if op == _ACQUIRE:
                if not expiration_time >= 0.0:
                    problems.append(f"bad expiration time {expiration_time!r} for {scope!r}")
                elif signum >= signal.NSIG:
                    problems.append(f"bad signal {signum} for {scope!r}")
                else:
                    requests.append((scope, expiration_time, signum))
            elif op == _RELEASE:
                requests.append((scope, _RELEASE_TIME, 0))
            else:
                problems.append(f"bad op {op} for {scope!r}")
        offset = end
    return _Decoded(requests, problems, offset, False)


# ---------------------------------------------------------------------------
# Client


class _ClientConnection:
    """One connection of a client: the socket, the pipe and the wake page.

    Both descriptors are non-blocking and written with ``os.write``. A client
    drops a connection by dropping its reference, and the descriptors are
    closed when the last reference goes, so never while a thread writes to
    them (a descriptor closed under a writer could be reused by another file
    in between). They are plain descriptors, not socket or file objects,
    because those would warn if a garbage collection finalized them before
    this object.
    """

    __slots__ = ("pipe", "sock", "wake")

    def __init__(self, sock: int, pipe: int, wake: memoryview[float]) -> None:
        self.sock = sock
        self.pipe = pipe
        self.wake = wake

    def close(self, _close: Callable[[int], None] = os.close) -> None:
        # os.close is bound here: __del__ may run while the interpreter shuts down.
        fds = (self.pipe, self.sock)
        self.pipe = self.sock = -1
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    _close(fd)

    __del__ = close


class PreparedTimers:
    """Timers of fixed scopes and signals, armed again and again with new expiration times.

    Made by :meth:`UnixSocketTimerClient.prepare`. The scopes are encoded
    and checked once; :meth:`acquire` then packs the times into the
    requests and writes them in one system call: the cheapest way to arm
    the same timers for task after task (the pytest plugin does, for every
    test). Arming a scope again replaces its timer, as ``acquire`` does.
    :meth:`release` releases them all in one write.
    """

    __slots__ = ("_client", "_release", "_timers")

    def __init__(self, client: UnixSocketTimerClient, timers: Sequence[tuple[str, int]]) -> None:
        prepared = tuple(
            (_checked_scope(scope_id), checked_signal(signum)) for scope_id, signum in timers
        )
        if not prepared:
            raise ValueError("prepare() needs at least one timer")
        if sum(_HEADER_SIZE + len(scope) for scope, _ in prepared) > _MAX_MESSAGE:
            raise ValueError(f"prepared timers must fit one write of {_MAX_MESSAGE} bytes")
        self._client = client
        self._timers = prepared
        self._release = b"".join(_encode_release(scope) for scope, _ in prepared)

    def acquire(self, *expiration_times: float) -> None:
        """Arm the timers, the i-th to expire at the i-th time (``time.time()`` based).

        A negative time releases its timer, as :meth:`UnixSocketTimerClient.acquire` does.
        """
        if len(expiration_times) != len(self._timers):
            raise TypeError(
                f"acquire() takes one expiration time per prepared timer "
                f"({len(self._timers)}), got {len(expiration_times)}"
            )
        requests = []
        earliest = math.inf
        for (scope, signum), expiration_time in zip(self._timers, expiration_times, strict=True):
            request, deadline = _arming_request(scope, expiration_time, signum)
            requests.append(request)
            if deadline < earliest:
                earliest = deadline
        self._client._write_requests(b"".join(requests), earliest)

    def release(self) -> None:
        """Release the timers (those that have not expired yet)."""
        self._client._write_requests(self._release)


# Clients of this process, so that a forked child drops the connections it inherited.
_CLIENTS: weakref.WeakSet[UnixSocketTimerClient] = weakref.WeakSet()


class UnixSocketTimerClient(TimerClient):
    """Client side of the Unix-socket pair.

    Connects when created, so a missing server is reported at once
    (:class:`TimerServerError` naming the address). ``signal`` is what the
    server sends when a timer of this client expires (``<= 0``: expire
    without a kill). ``timeout`` bounds every wait for a server that does not
    answer; a server that is gone is reported at once. The worker is the
    process that calls ``acquire``: a forked child connects anew, and a
    client passed to a spawned child (it pickles) connects there. Safe to
    share between threads.
    """

    def __init__(
        self,
        address: str,
        signal: int = signal.SIGKILL,
        timeout: float = _DEFAULT_TIMEOUT,
    ) -> None:
        self._setup(address, signal, timeout)
        self._connect()

    @classmethod
    def from_env(
        cls,
        variable: str,
        signal: int = signal.SIGKILL,
        timeout: float = _DEFAULT_TIMEOUT,
        environ: Mapping[str, str] | None = None,
    ) -> UnixSocketTimerClient:
        """A client of the server whose address is in the environment variable ``variable``.

        The process that starts the server chooses the variable and sets it
        to :attr:`UnixSocketTimerServer.address`; its children inherit it.
        ``environ`` defaults to ``os.environ``.
        """
        address = (os.environ if environ is None else environ).get(variable)
        if not address:
            raise RuntimeError(
                f"{variable} is not set: no timer server was started for this process "
                "(the process that starts the server sets it to the server's address)"
            )
        return cls(address, signal=signal, timeout=timeout)

    def _setup(self, address: str, signum: int, timeout: float) -> None:
        self._path = parse_address(address)
        self._address = format_address(self._path)
        self._signal = checked_signal(signum)
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        self._timeout = float(timeout)
        self._lock = threading.Lock()
        self._conn: _ClientConnection | None = None
        # A release message depends only on the scope, and most code releases
        # the same few scopes over and over: this saves a third of a release.
        self._releases: dict[str, bytes] = {}
        _CLIENTS.add(self)

    @property
    def address(self) -> str:
        return self._address

    def acquire(self, scope_id: str, expiration_time: float) -> None:
        """Arm ``scope_id`` with this client's signal; a negative time releases it, as in torch."""
        request, deadline = _arming_request(_checked_scope(scope_id), expiration_time, self._signal)
        self._write_requests(request, deadline)

    def release(self, scope_id: str) -> None:
        self._send(self._release_message(scope_id))

    def acquire_many(self, timers: Iterable[tuple[str, float, int]]) -> None:
        """Arm several timers, each ``(scope_id, expiration_time, signal)``, in one write.

        Beyond torch's API: a timer with a signal of its own (escalation, as
        an interrupt followed by a kill), and one system call for all of
        them when they fit in one atomic pipe write. Every timer is checked
        before any is sent, as :meth:`acquire` checks its arguments and the
        client's signal; a negative time releases its timer.
        """
        requests: list[bytes] = []
        earliest = math.inf
        for scope_id, expiration_time, signum in timers:
            request, deadline = _arming_request(
                _checked_scope(scope_id), expiration_time, checked_signal(signum)
            )
            requests.append(request)
            if deadline < earliest:
                earliest = deadline
        data = b"".join(requests)
        if len(data) <= _MAX_MESSAGE:
            self._write_requests(data, earliest)
            return
        for request in requests:  # each is atomic, the whole would not be
            self._write_requests(request, earliest)

    def release_many(self, scope_ids: Iterable[str]) -> None:
        """Release several timers in one write (when they fit in one atomic pipe write)."""
        messages = []
        for scope_id in scope_ids:
            message = self._releases.get(scope_id)
            if message is None:
                # Not cached: a scope released once (a test's, say) stays out of the cache.
                message = _encode_release(_checked_scope(scope_id))
            messages.append(message)
        self._send_all(messages)

    def _write_requests(self, requests: bytes, earliest: float = math.inf) -> None:
        """Write encoded requests in one write; wake the server if it sleeps past ``earliest``."""
        conn = self._send(requests)
        if earliest < conn.wake[0]:
            # The server sleeps past this deadline: wake it to read the pipe.
            self._poke(conn)

    def prepare(self, timers: Sequence[tuple[str, int]]) -> PreparedTimers:
        """Timers of fixed scopes and signals, each ``(scope_id, signal)``, to arm again and again.

        See :class:`PreparedTimers`: the cheapest way to re-arm the same
        timers with new times.
        """
        return PreparedTimers(self, timers)

    def _release_message(self, scope_id: str) -> bytes:
        message = self._releases.get(scope_id)
        if message is None:
            message = _encode_release(_checked_scope(scope_id))
            if len(self._releases) >= _RELEASE_CACHE_SIZE:
                self._releases.clear()
            self._releases[scope_id] = message
        return message

    def _send_all(self, messages: list[bytes]) -> _ClientConnection:
        data = b"".join(messages)
        if len(data) <= _MAX_MESSAGE:
            return self._send(data) if data else self._conn or self._connect()
        conn = self._conn or self._connect()
        for message in messages:  # each is atomic, the whole would not be
            conn = self._send(message)
        return conn

    def close(self) -> None:
        """Drop the connection (the next request connects again).

        If it was this process's last connection, the server drops the
        process's timers.
        """
        self._conn = None  # closed when no thread uses it any more

    def _send(self, message: bytes) -> _ClientConnection:
        conn = self._conn or self._connect()
        try:
            os.write(conn.pipe, message)
        except BlockingIOError:
            self._send_when_possible(conn, message)
        except OSError as exc:
            raise self._lost(conn, exc) from exc
        return conn

    def _send_when_possible(self, conn: _ClientConnection, message: bytes) -> None:
        """The pipe is full: wake the server, and wait (bounded) until it has read."""
        self._poke(conn)
        poller = select.poll()
        poller.register(conn.pipe, select.POLLOUT)
        deadline = time.monotonic() + self._timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimerServerError(
                    f"the timer server at {self._address} took no request for "
                    f"{self._timeout} s (is it stuck?)"
                )
            poller.poll(math.ceil(remaining * 1000))
            try:
                os.write(conn.pipe, message)
                return
            except BlockingIOError:
                pass
            except OSError as exc:
                raise self._lost(conn, exc) from exc

    def _poke(self, conn: _ClientConnection) -> None:
        try:
            os.write(conn.sock, _WAKE)
        except BlockingIOError:
            pass  # wake-ups are already queued
        except OSError as exc:
            raise self._lost(conn, exc) from exc

    def _lost(self, conn: _ClientConnection, exc: OSError) -> TimerServerError:
        if self._conn is conn:
            self._conn = None
        return TimerServerError(
            f"lost the timer server at {self._address} ({exc}); "
            "the timers this process armed there are gone"
        )

    def _connect(self) -> _ClientConnection:
        with self._lock:
            if self._conn is None:
                self._conn = _handshake(self._path, self._address, self._timeout)
            return self._conn

    def _forget_inherited_connection(self) -> None:
        """In a forked child: drop the parent's connection, whose PID is the parent's."""
        conn, self._conn = self._conn, None
        self._lock = threading.Lock()
        if conn is not None:
            conn.close()  # no other thread exists in the child to be writing

    def __getstate__(self) -> dict[str, Any]:
        return {"address": self._address, "signal": self._signal, "timeout": self._timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._setup(state["address"], state["signal"], state["timeout"])


def _handshake(path: str, address: str, timeout: float) -> _ClientConnection:
    """Connect, hand over a pipe, receive the wake page."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    write_end = -1
    connected = False
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        connected = True
        read_end, write_end = os.pipe()
        with contextlib.suppress(OSError):  # a bigger pipe fills, and stalls, less often
            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        try:
            sock.sendmsg(
                [_HELLO],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [read_end]))],
                socket.MSG_NOSIGNAL,
            )
        finally:
            os.close(read_end)
        data, ancdata, _flags, _address = sock.recvmsg(
            _CONTROL_SIZE, _ANCILLARY_SIZE, socket.MSG_CMSG_CLOEXEC
        )
        fds = _received_fds(ancdata)
        if data != _WELCOME or len(fds) != 1:
            _close_all(fds)
            raise TimerServerError(_refused(address))
        try:
            page = mmap.mmap(fds[0], _WAKE_TIME.size, access=mmap.ACCESS_READ)
        finally:
            os.close(fds[0])
        os.set_blocking(write_end, False)
        sock.setblocking(False)
        return _ClientConnection(sock.detach(), write_end, memoryview(page).cast("d"))
    except BaseException as exc:
        sock.close()
        if write_end >= 0:
            os.close(write_end)
        if isinstance(exc, TimerServerError) or not isinstance(exc, OSError):
            raise
        if isinstance(exc, TimeoutError):
            message = f"the timer server at {address} did not answer within {timeout} s"
        elif not connected:
            message = f"no timer server at {address}: {exc}"
        elif isinstance(exc, ConnectionError):  # the server closed the connection
            message = _refused(address)
        else:
            message = f"cannot connect to the timer server at {address}: {exc}"
        raise TimerServerError(message) from exc


def _refused(address: str) -> str:
    return (
        f"the timer server at {address} refused this process "
        "(another user's server, or one that is stopping)"
    )


def _received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % _FD_SIZE])
    return list(fds)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


# ---------------------------------------------------------------------------
# Server


class _ServerConnection:
    __slots__ = ("fd", "pending", "pid", "pipe", "sock")

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.pid = pid
        self.pipe = -1
        self.pending = b""


# Servers of this process, so that a forked child closes the descriptors it inherited.
_SERVERS: weakref.WeakSet[UnixSocketTimerServer] = weakref.WeakSet()


class UnixSocketTimerServer(Watchdog):
    """Server side of the Unix-socket pair.

    ``address`` is ``"unix:/absolute/path"``; by default a socket in a new
    private directory (mode 0o700) of the temporary directory. The socket is
    created with mode 0o600 and removed by :meth:`stop`; a stale socket left
    at the path is replaced, a live one or any other file is not. Clients of
    another user are refused. Put :attr:`address` in an environment variable
    to let the processes started under it find the server
    (:meth:`UnixSocketTimerClient.from_env`).

    The server wakes at the earliest deadline, when a client wakes it, or
    after ``max_interval`` seconds at the latest. A request whose deadline is
    further away than the server's next wake-up does not wake it: it waits in
    the client's pipe until then, so ``max_interval`` also bounds how long the
    server may be behind its clients (which only matters to someone counting
    its timers). A wake-up with nothing to do costs microseconds, so the default,
    one second, is still no measurable CPU. On expiry it calls
    ``on_expired(pid, timers)`` if given (in the server's thread or process;
    the kill waits for it; with ``start(process=True)`` it must pickle), logs
    the expired timers through ``debug_info_logging.
    log_debug_info_for_expired_timers(run_id, ...)`` (with what ``on_expired``
    returned as the stacks; a worker for which it returned
    ``Logged.BY_CALLBACK`` is left to the callback's own record), and sends the
    worker the signal of its earliest expired timer whose signal is > 0, if the
    worker may be signalled (see ``ReapGuard``). An expired timer is removed;
    the worker's other timers stay armed, so a later timer can escalate with
    another signal. Workers are signalled only if they descend from
    ``host_pid`` (by default the process that creates the server; a server
    created inside a watchdog process of its own names the process it watches).
    """

    def __init__(
        self,
        address: str | None = None,
        run_id: str | None = None,
        max_interval: float = 1.0,
        daemon: bool = True,
        on_expired: OnExpired | None = None,
        host_pid: int | None = None,
    ) -> None:
        if not max_interval > 0:
            raise ValueError(f"max_interval must be > 0, got {max_interval!r}")
        if address is None:
            self._owned_dir: str | None = _private_dir_name()
            address = os.path.join(self._owned_dir, "timer.sock")
        else:
            self._owned_dir = None
        self._path = parse_address(address)
        self._address = format_address(self._path)
        self._run_id = self._address if run_id is None else run_id
        self._max_interval = float(max_interval)
        self._on_expired = on_expired
        self._guard = ReapGuard(host_pid)
        self._uid = os.geteuid()
        self._made_dir = False
        self._wake_lock = threading.Lock()
        self._wake_w = -1
        self._init_watchdog(daemon)
        self._reset_runtime()
        _SERVERS.add(self)

    def _reset_runtime(self) -> None:
        """Forget what a run of the watchdog made (it is all made by ``_prepare``)."""
        self._listener: socket.socket | None = None
        self._bound: tuple[int, int] | None = None
        self._epoll: select.epoll | None = None
        self._wake_r = -1
        self._page_fd = -1
        self._wake_time: memoryview[float] | None = None
        self._conns: dict[int, _ServerConnection] = {}
        self._pid_conns: dict[int, int] = {}
        self._timers: TimerTable[FileTimerRequest] = TimerTable()
        # The signal each worker is still owed, its reap having failed.
        self._owed: dict[int, int] = {}
        self._reaper: Reaper[int] = Reaper()

    @property
    def address(self) -> str:
        """Where clients connect: ``"unix:/path"``, a string fit for the environment."""
        return self._address

    def admit(self, pid: int) -> None:
        """Allow signalling ``pid`` although it does not descend from this server's host.

        With ``start(process=True)``, admit before ``start()``: the watchdog
        process has its own copy of the server.
        """
        if self._watchdog_process is not None:
            raise RuntimeError(
                "admit() must be called before start(process=True): "
                "the watchdog process does not see later changes"
            )
        self._guard.admit(pid)

    def worker_pidfd(self, pid: int) -> int | None:
        """A new pidfd of the process that armed timers as ``pid``, if it still runs and may
        be signalled (``host_pid``'s descendant or admitted); the caller closes it.

        Call it from ``on_expired`` (the server's thread), or before
        :meth:`start`: an ``on_expired`` that acts later (a diagnosis, an
        escalation) signals through it, and so never reaches another process
        that got the PID meanwhile. A process that is not a client (yet) is
        identified now.
        """
        self._guard.identify(pid)
        if not self._guard.may_signal(pid):
            logger.warning(
                "refusing to act on %d: not a descendant of host process %d and not admitted",
                pid,
                self._guard.host_pid,
            )
            return None
        return self._guard.pidfd(pid)

    def stop(self) -> None:
        in_process = self._watchdog_process is not None
        super().stop()
        if in_process:
            # The process cleans up after itself, unless it had to be killed.
            self._remove_files(leftover=True)

    # -- Watchdog hooks ----------------------------------------------------

    def _prepare(self) -> None:
        try:
            if self._owned_dir is not None:
                os.mkdir(self._owned_dir, 0o700)
                self._made_dir = True
                os.chmod(self._owned_dir, 0o700)  # whatever the umask
            self._listener, self._bound = _listen(self._path, self._address)
            self._epoll = select.epoll()
            self._wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            with self._wake_lock:
                self._wake_w = wake_w
            self._page_fd, self._wake_time = _wake_page()
            self._epoll.register(self._listener.fileno(), select.EPOLLIN)
            self._epoll.register(self._wake_r, select.EPOLLIN)
        except BaseException:
            self._cleanup()
            raise

    def _wake(self) -> None:
        with self._wake_lock:
            if self._wake_w >= 0:
                with contextlib.suppress(BlockingIOError):
                    os.write(self._wake_w, b"x")

    def _cleanup(self) -> None:
        self._close_descriptors()
        self._remove_files()

    def _watchdog_loop(self) -> None:
        timeout = 0.0
        while not self._stop_signaled:
            try:
                timeout = self._run_round(timeout)
            except Exception:
                logger.exception("error in the timer server's watchdog; going on")
                timeout = _ERROR_BACKOFF

    # -- One round -----------------------------------------------------------

    def _run_round(self, timeout: float) -> float:
        """Wait up to ``timeout``, serve, reap; return how long the next round may wait."""
        assert self._epoll is not None and self._wake_time is not None
        events = self._epoll.poll(timeout)
        self._wake_time[0] = _AWAKE  # clients need not wake an awake server
        for fd, _mask in events:
            if fd == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            elif self._listener is not None and fd == self._listener.fileno():
                self._accept()
            else:
                conn = self._conns.get(fd)
                if conn is not None:
                    self._read_control(conn)
        read = self._read_pipes()
        now = time.time()
        self._reap(now)
        if read == _FULL:
            return 0.0  # a pipe holds more than one read took
        wake_at = self._next_wake(now)
        self._wake_time[0] = wake_at
        # A client that wrote after the read above may have seen _AWAKE and
        # not woken us: read once more after publishing the wake time. What
        # comes can only bring the wake time forward; a client that writes
        # after this read sees the wake time published, and wakes us if its
        # deadline is earlier. (Returning at once after every read instead
        # would spin while a busy client writes.)
        read = self._read_pipes()
        if read == _FULL:
            return 0.0
        if read:
            wake_at = self._next_wake(now)
            self._wake_time[0] = wake_at
        return max(0.0, wake_at - time.time())

    def _next_wake(self, now: float) -> float:
        wake_at = now + min(self._max_interval, _MAX_WAIT)
        deadline = self._timers.next_deadline()
        if deadline is not None and deadline < wake_at:
            wake_at = deadline
        retry_at = self._reaper.retry_at
        if retry_at is not None and retry_at < wake_at:
            wake_at = retry_at
        return wake_at

    def _accept(self) -> None:
        assert self._listener is not None and self._epoll is not None
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                logger.error("cannot accept a timer client: %s", exc)
                return
            try:
                pid, uid, _gid = _PEERCRED.unpack(
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
                )
            except OSError as exc:
                logger.warning("cannot identify a timer client, refusing it: %s", exc)
                sock.close()
                continue
            if uid != self._uid:
                logger.warning(
                    "refusing timer client %d: it runs as uid %d, this server as uid %d",
                    pid,
                    uid,
                    self._uid,
                )
                sock.close()
                continue
            if pid <= 0:
                logger.warning("refusing a timer client outside this server's PID namespace")
                sock.close()
                continue
            sock.setblocking(False)
            conn = _ServerConnection(sock, pid)
            self._epoll.register(conn.fd, select.EPOLLIN | select.EPOLLRDHUP)
            self._conns[conn.fd] = conn
            count = self._pid_conns.get(pid, 0)
            if count == 0:
                self._guard.forget(pid)  # a new process, maybe with a reused PID
            self._guard.remember(pid)
            self._pid_conns[pid] = count + 1
            logger.debug("timer client %d connected", pid)

    def _read_control(self, conn: _ServerConnection) -> None:
        """Read a connection's control messages: its pipe, wake-ups, or its end."""
        for _ in range(_CONTROL_BATCH):
            try:
                data, ancdata, _flags, _address = conn.sock.recvmsg(
                    _CONTROL_SIZE,
                    _ANCILLARY_SIZE,
                    socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC,
                )
            except BlockingIOError:
                return
            except OSError as exc:
                self._end_connection(conn, f"lost its connection ({exc})")
                return
            fds = _received_fds(ancdata)
            if data == _WAKE and not fds:
                continue
            if data == _HELLO and len(fds) == 1 and conn.pipe < 0 and _is_pipe_read_end(fds[0]):
                self._welcome(conn, fds[0])
                if conn.fd not in self._conns:
                    return
                continue
            _close_all(fds)
            if not data and not fds and _peer_closed(conn.sock):
                self._end_connection(conn, "closed its connection")
                return
            logger.warning(
                "dropping a malformed control message from timer client %d: %r (%d fds)",
                conn.pid,
                data[:_CONTROL_SIZE],
                len(fds),
            )

    def _welcome(self, conn: _ServerConnection, pipe: int) -> None:
        os.set_blocking(pipe, False)
        # Recorded before the client can go on: a child it forks at once must
        # find the pipe here to close its copy (see _abandon_in_child).
        conn.pipe = pipe
        try:
            conn.sock.sendmsg(
                [_WELCOME],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [self._page_fd]))],
                socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL,
            )
        except OSError as exc:
            self._end_connection(conn, f"could not be answered ({exc})")

    def _read_pipes(self) -> int:
        """Read every client's pipe once: :data:`_FULL` if a read may have left more,
        else :data:`_SOME` if anything came, else :data:`_NOTHING`."""
        read = _NOTHING
        for conn in tuple(self._conns.values()):
            if conn.pipe >= 0:
                state = self._read_pipe(conn)
                if state < 0:
                    self._end_connection(conn, "closed its pipe")
                    state = _SOME
                read = max(read, state)
        return read

    def _read_pipe(self, conn: _ServerConnection) -> int:
        """Read and apply what is in a client's pipe.

        Returns :data:`_FULL` if the read took all it could (more may wait),
        :data:`_SOME` if something came, :data:`_NOTHING` if nothing, -1 if
        the pipe ended or is corrupt (the connection must end).
        """
        try:
            data = os.read(conn.pipe, _READ_SIZE)
        except BlockingIOError:
            return 0
        except OSError as exc:
            logger.error("cannot read the pipe of timer client %d: %s", conn.pid, exc)
            os.close(conn.pipe)
            conn.pipe = -1
            return -1
        if not data:
            return -1
        full = len(data) == _READ_SIZE
        if conn.pending:
            data = conn.pending + data
        decoded = _decode(data)
        self._apply(conn.pid, decoded.requests)
        if decoded.problems:
            logger.warning(
                "dropped %d malformed request(s) of timer client %d: %s",
                len(decoded.problems),
                conn.pid,
                "; ".join(decoded.problems[:3]),
            )
        if decoded.broken:
            logger.error("the request stream of timer client %d is corrupt", conn.pid)
            os.close(conn.pipe)  # nothing more can be read from it with sense
            conn.pipe = -1
            return -1
        conn.pending = data[decoded.consumed :]
        return _FULL if full else _SOME

    def _apply(self, pid: int, requests: list[tuple[str, float, int]]) -> None:
        timers = self._timers
        for scope, expiration_time, signum in requests:
            if expiration_time < 0:
                timers.remove(pid, scope)
            else:
                timers.set(FileTimerRequest(pid, scope, expiration_time, signum))

    def _end_connection(self, conn: _ServerConnection, reason: str) -> None:
        """A connection ended: apply what is left in its pipe, then forget it."""
        if self._conns.pop(conn.fd, None) is None:
            return
        if conn.pipe >= 0:
            while self._read_pipe(conn) > 0:
                pass
            os.close(conn.pipe)
            conn.pipe = -1
        if self._epoll is not None:
            with contextlib.suppress(OSError):
                self._epoll.unregister(conn.fd)
        conn.sock.close()
        pid = conn.pid
        remaining = self._pid_conns.pop(pid, 1) - 1
        if remaining:
            self._pid_conns[pid] = remaining
            logger.debug("a connection of timer client %d %s; %d remain", pid, reason, remaining)
            return
        dropped = self._timers.remove_worker(pid)
        self._owed.pop(pid, None)
        self._guard.forget(pid)
        if dropped:
            logger.info(
                "timer client %d %s (exited?); dropping its %d timer(s): %s",
                pid,
                reason,
                len(dropped),
                [timer.scope_id for timer in dropped],
            )
        else:
            logger.debug("timer client %d %s", pid, reason)

    def _reap(self, now: float) -> None:
        owed = self._owed
        deadline = self._timers.next_deadline()
        if deadline is not None and deadline <= now:
            expired = cast("dict[int, list[FileTimerRequest]]", self._timers.expired(now))
            for pid, timers in expired.items():
                for timer in timers:
                    self._timers.remove(pid, timer.scope_id)
            self._report(expired)
            for pid, timers in expired.items():
                signum = next((timer.signal for timer in timers if timer.signal > 0), 0)
                if signum:
                    owed[pid] = signum
                else:
                    logger.info("timers of worker %d expired; they ask for no signal", pid)
        if owed or self._reaper.retry_at is not None:
            reaped = self._reaper.reap(
                list(owed),
                lambda pid: self._reap_worker(pid, owed[pid]),
                now,
                self._max_interval,
            )
            for pid in reaped:
                del owed[pid]

    def _reap_worker(self, worker_pid: int, signal: int) -> bool:
        """Send ``signal`` to the worker, if it may be signalled (see ``ReapGuard``).

        True when the worker needs no more attention, False to try again
        later; named and called as ``FileTimerServer``'s (and torch's).
        """
        return self._guard.send_signal(worker_pid, signal)

    def _report(self, expired: dict[int, list[FileTimerRequest]]) -> None:
        stacks: dict[int, str] = {}
        logged_by_callback = set()
        if self._on_expired is not None:
            for pid, timers in expired.items():
                try:
                    text = self._on_expired(pid, timers)
                except Exception:
                    logger.exception("on_expired failed for worker %d", pid)
                else:
                    if text is Logged.BY_CALLBACK:
                        logged_by_callback.add(pid)
                    elif text:
                        stacks[pid] = text
        ours = {
            pid: [timer.to_json() for timer in timers]
            for pid, timers in expired.items()
            if pid not in logged_by_callback
        }
        if ours:
            debug_info_logging.log_debug_info_for_expired_timers(
                self._run_id, ours, stacks=stacks or None
            )

    # -- Resources -------------------------------------------------------------

    def _close_descriptors(self) -> None:
        """Close what ``_prepare`` and the clients opened; leave the files alone."""
        for conn in self._conns.values():
            if conn.pipe >= 0:
                os.close(conn.pipe)
            conn.sock.close()
        if self._epoll is not None:
            self._epoll.close()
        if self._listener is not None:
            self._listener.close()
        if self._page_fd >= 0:
            os.close(self._page_fd)
        with self._wake_lock:
            if self._wake_w >= 0:
                os.close(self._wake_w)
                self._wake_w = -1
        if self._wake_r >= 0:
            os.close(self._wake_r)
        self._guard.close()
        bound = self._bound
        self._reset_runtime()
        self._bound = bound  # for _remove_files

    def _remove_files(self, *, leftover: bool = False) -> None:
        """Remove our socket file (only if it is still ours) and our private directory.

        The socket is ours if it is the one this process bound or, with
        ``leftover``, any socket at our address: after the watchdog process
        ended, only it can have put one there.
        """
        bound, self._bound = self._bound, None
        try:
            st = os.lstat(self._path)
        except OSError:
            pass
        else:
            if bound is not None:
                ours = (st.st_dev, st.st_ino) == bound
            else:
                ours = leftover and stat.S_ISSOCK(st.st_mode)
            if ours:
                with contextlib.suppress(OSError):
                    os.unlink(self._path)
        if self._owned_dir is not None and (self._made_dir or leftover):
            with contextlib.suppress(OSError):
                os.rmdir(self._owned_dir)
        self._made_dir = False

    def _abandon_in_child(self) -> None:
        """In a forked child: close the inherited descriptors; the files stay the parent's."""
        self._wake_lock = threading.Lock()  # a thread of the parent may have held it
        if self._epoll is not None:
            self._close_descriptors()
        self._bound = None
        self._made_dir = False
        self._watchdog_thread = None
        self._watchdog_process = None

    def __getstate__(self) -> dict[str, Any]:
        # What a run made belongs to the process that made it; a copy sent to
        # a watchdog process makes its own in _prepare.
        state = super().__getstate__()
        for name in _RUN_STATE:
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._made_dir = False
        self._wake_lock = threading.Lock()
        self._wake_w = -1
        self._reset_runtime()


# Set by _prepare and _reset_runtime, never pickled.
_RUN_STATE = (
    "_listener",
    "_bound",
    "_epoll",
    "_wake_r",
    "_page_fd",
    "_wake_time",
    "_conns",
    "_pid_conns",
    "_timers",
    "_owed",
    "_reaper",
    "_made_dir",
    "_wake_lock",
    "_wake_w",
)


def _private_dir_name() -> str:
    """A new directory name in the temporary directory, short enough for a socket path."""
    name = f"pytest-expire-{os.getpid()}-{secrets.token_hex(4)}"
    directory = os.path.join(tempfile.gettempdir(), name)
    if len(os.fsencode(os.path.join(directory, "timer.sock"))) > _MAX_PATH_BYTES:
        directory = os.path.join("/tmp", name)
    return directory


def _listen(path: str, address: str) -> tuple[socket.socket, tuple[int, int]]:
    """A listening socket at ``path``, mode 0o600; and the file's (device, inode)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise FileExistsError(
                errno.EEXIST, f"refusing to replace {path!r}: it is not a socket", path
            )
        if _is_listening(path):
            raise OSError(errno.EADDRINUSE, f"a server is already listening at {address}")
        os.unlink(path)  # left by a server that did not clean up
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        # On Linux bind() gives the file the mode of the socket's inode (less
        # the umask), so it never exists with a wider mode.
        with contextlib.suppress(OSError):
            os.fchmod(listener.fileno(), 0o600)
        listener.bind(path)
        st = os.lstat(path)
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(path, 0o600)
        listener.listen(socket.SOMAXCONN)
        listener.setblocking(False)
    except BaseException:
        listener.close()
        raise
    return listener, (st.st_dev, st.st_ino)


def _is_listening(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        probe.settimeout(_DEFAULT_TIMEOUT)
        probe.connect(path)
    except ConnectionRefusedError:
        return False
    except OSError:
        return True  # not ours to judge: leave it
    finally:
        probe.close()
    return True


def _wake_page() -> tuple[int, memoryview[float]]:
    """A sealed one-double shared page, its descriptor, and a view to write it."""
    fd = os.memfd_create("pytest-expire-wake", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, _WAKE_TIME.size)
        # Clients cannot shrink it under the server (which would crash it with SIGBUS).
        fcntl.fcntl(
            fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
        )
        page = mmap.mmap(fd, _WAKE_TIME.size)
    except BaseException:
        os.close(fd)
        raise
    view = memoryview(page).cast("d")
    view[0] = _AWAKE
    return fd, view


def _is_pipe_read_end(fd: int) -> bool:
    try:
        return stat.S_ISFIFO(os.fstat(fd).st_mode) and (
            fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        )
    except OSError:
        return False


def _peer_closed(sock: socket.socket) -> bool:
    """Whether the peer closed (an empty read is also what an empty message gives)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLRDHUP)
    return any(mask & (select.POLLHUP | select.POLLRDHUP) for _, mask in poller.poll(0))


def _after_fork_in_child() -> None:
    for client in list(_CLIENTS):
        client._forget_inherited_connection()
    for server in list(_SERVERS):
        server._abandon_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
