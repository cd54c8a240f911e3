"""Running a server's watchdog loop in a thread, or in a process of its own.

A watchdog thread stops working when its process is wedged: a C call that
holds the GIL starves every thread of that process. A watchdog that must act
on such a process runs in a process of its own, started with
``start(process=True)``. That process dies with the one that started it, ignores
the terminal's Ctrl-C (the user's interrupt is for pytest, which still needs its
watchdog while it tears down), and cleans up after itself when stopped.

``multiprocessing`` and ``ctypes`` are imported where they are used: a
client process imports this module with its server's, and needs neither.
"""

from __future__ import annotations

import abc
import logging
import os
import signal
import threading
from typing import TYPE_CHECKING, Any

from pytest_expire.timer.lifetime import (
    WATCHDOG_READY_TIMEOUT,
    WATCHDOG_STOP_TIMEOUT,
    die_with_parent,
)

if TYPE_CHECKING:
    import multiprocessing.connection
    import multiprocessing.process
    from multiprocessing.context import BaseContext

logger = logging.getLogger(__name__)


class Watchdog(abc.ABC):
    """A restartable watchdog loop, run by a thread or a process.

    Subclasses implement :meth:`_watchdog_loop` (run until ``_stop_signaled``)
    and may override :meth:`_prepare` (acquire what the loop needs, where the
    loop will run, so that clients can connect as soon as ``start()``
    returns), :meth:`_wake` (interrupt the loop's wait so ``stop()`` is
    prompt) and :meth:`_cleanup` (release what ``_prepare`` acquired).
    """

    _daemon: bool
    _stop_signaled: bool
    _watchdog_thread: threading.Thread | None
    _watchdog_process: multiprocessing.process.BaseProcess | None

    def _init_watchdog(self, daemon: bool) -> None:
        self._daemon = daemon
        self._stop_signaled = False
        self._watchdog_thread = None
        self._watchdog_process = None

    @abc.abstractmethod
    def _watchdog_loop(self) -> None:
        """Watch until ``self._stop_signaled`` is set."""

    def _prepare(self) -> None:
        """Acquire what the loop needs; runs where the loop will run, before it."""

    def _wake(self) -> None:
        """Make a waiting loop look at ``_stop_signaled`` now."""

    def _cleanup(self) -> None:
        """Release what :meth:`_prepare` acquired; runs after the loop ended."""

    def _stop_join_timeout(self) -> float:
        """How long ``stop()`` waits for the watchdog thread."""
        return WATCHDOG_STOP_TIMEOUT

    def _default_mp_context(self) -> BaseContext:
        import multiprocessing

        return multiprocessing.get_context("spawn")

    @property
    def is_running(self) -> bool:
        """Whether a watchdog thread or process of this server is alive."""
        runner = self._watchdog_thread or self._watchdog_process
        return runner is not None and runner.is_alive()

    @property
    def watchdog_pid(self) -> int | None:
        """The PID of the watchdog process, when started with ``process=True``."""
        return self._watchdog_process.pid if self._watchdog_process else None

    def start(self, *, process: bool = False, mp_context: BaseContext | str | None = None) -> None:
        """Start watching; return once clients can reach the server.

        With ``process=True`` the watchdog runs in a new process (created with
        ``mp_context``, by default ``spawn``), which keeps working while every
        thread of this process is wedged. On a running server it does
        nothing (see :meth:`_already_running`).
        """
        if self._already_running(process):
            return
        self._stop_signaled = False
        if not process:
            self._prepare()
            self._watchdog_thread = threading.Thread(
                target=self._run_thread, name=f"{type(self).__name__}-watchdog", daemon=self._daemon
            )
            self._watchdog_thread.start()
            return
        if mp_context is None:
            context = self._default_mp_context()
        elif isinstance(mp_context, str):
            import multiprocessing

            context = multiprocessing.get_context(mp_context)
        else:
            context = mp_context
        self._start_process(context)

    def _already_running(self, process: bool) -> bool:
        """Whether a watchdog runs already, in the mode asked for (``start()`` then does nothing).

        torch's servers accept a second ``start()``, and code written for them
        calls it; a watchdog of the other mode cannot be switched to: RuntimeError.
        """
        if not self.is_running:
            return False
        if process != (self._watchdog_process is not None):
            mode = "a process" if self._watchdog_process is not None else "a thread"
            raise RuntimeError(f"{type(self).__name__} is already running in {mode}")
        logger.info("%s is already running; start() does nothing", type(self).__name__)
        return True

    def stop(self) -> None:
        """Stop watching and release the server's resources; return promptly."""
        self._stop_signaled = True
        thread, self._watchdog_thread = self._watchdog_thread, None
        process, self._watchdog_process = self._watchdog_process, None
        if thread is not None:
            self._wake()
            thread.join(self._stop_join_timeout())
            if thread.is_alive():
                logger.warning("%s watchdog thread did not stop in time", type(self).__name__)
        if process is not None:
            process.terminate()
            process.join(WATCHDOG_STOP_TIMEOUT)
            if process.is_alive():
                logger.warning("%s watchdog process did not stop, killing it", type(self).__name__)
                process.kill()
                process.join()
            process.close()

    def _run_thread(self) -> None:
        try:
            self._watchdog_loop()
        finally:
            self._cleanup()

    def _start_process(self, context: BaseContext) -> None:
        ready_reader, ready_writer = context.Pipe(duplex=False)
        process = context.Process(  # type: ignore[attr-defined]
            target=_serve_in_process,
            args=(self, ready_writer, os.getpid()),
            name=f"{type(self).__name__}-watchdog",
            daemon=self._daemon,
        )
        process.start()
        ready_writer.close()
        try:
            message = ready_reader.recv() if ready_reader.poll(WATCHDOG_READY_TIMEOUT) else None
        except EOFError:
            message = None
        finally:
            ready_reader.close()
        if message != "ready":
            process.kill()
            process.join()
            reason = message or "it exited or did not answer in time"
            raise RuntimeError(f"{type(self).__name__} watchdog process failed to start: {reason}")
        self._watchdog_process = process

    def __getstate__(self) -> dict[str, Any]:
        # What runs the watchdog belongs to the process that started it.
        state = self.__dict__.copy()
        state["_watchdog_thread"] = None
        state["_watchdog_process"] = None
        return state


def _serve_in_process(
    server: Watchdog, ready: multiprocessing.connection.Connection, parent_pid: int
) -> None:
    """The body of a watchdog process: run the loop until SIGTERM or the parent dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    die_with_parent(parent_pid, signal.SIGTERM)
    try:
        server._prepare()
    except BaseException as exc:
        ready.send(f"{type(exc).__name__}: {exc}")
        raise
    ready.send("ready")
    ready.close()
    try:
        server._watchdog_loop()
    except SystemExit:
        pass
    finally:
        server._cleanup()
    # Skip the interpreter's teardown (joining threads, atexit handlers of
    # multiprocessing): it would make stop() wait tens of milliseconds more.
    logging.shutdown()
    os._exit(0)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(0)
