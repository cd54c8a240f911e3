"""Interrupting a test from outside its process, and never the wrong test.

The watchdog interrupts an expired test by sending :data:`INTERRUPT_SIGNAL`
to its process. The handler raises :class:`Expired` in the main thread, so
the test fails where it hangs, with that frame in its traceback, and its
fixtures tear down. A signal makes blocking calls (sleep, lock and queue
waits, socket reads) return to Python, so this works for every hang that
Python code can still notice. A real-time signal is used (see ``signals``)
because tests replace the handlers of SIGINT, SIGALRM and SIGTERM.

The handler acts only while a test phase runs (it finds the phase on the
stack, so tracking it costs a test nothing) and only on the watchdog's word
that the running test's own deadline has passed (``verdict``): an interrupt
that arrives as a test finishes finds the next test armed with another
token, or nothing armed, and does nothing; and no clock the test patched is
asked. A test found in a debugger (one attached from an IDE, say, which
pytest does not announce as it does its own ``--pdb`` and ``breakpoint()``)
loses its deadline instead. Nor does it raise in the middle of pytest's own
code (its setup stack, say, is not safe against an exception at any point):
while the expired test is between phases or inside pytest, pluggy or this
plugin, the interrupt is sent again a moment later, until it lands in the
test's own code or the test ends.
"""

from __future__ import annotations

import bdb
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from pytest import CallInfo

from pytest_expire.pytest_internals import Failed
from pytest_expire.report import headline
from pytest_expire.signals import INTERRUPT_SIGNAL
from pytest_expire.verdict import VerdictPage

if TYPE_CHECKING:
    from pytest_expire.session_deadline import SessionDeadline

# Code an exception must not cut in two: the interrupt waits until it is left.
_INTERNAL_MODULES = ("_pytest.", "pluggy.", "pytest_expire.")
_RETRY_DELAY = 0.01
# pytest runs each phase of a test (setup, call, teardown) inside this
# function, whose ``when`` names the phase.
_PHASE_CODE = vars(CallInfo)["from_call"].__func__.__code__
# Debuggers that are not built on bdb (pdb, ipdb, pudb are): PyCharm's and VS Code's.
_DEBUGGER_MODULES = ("pydevd", "_pydevd_bundle", "_pydevd_frame_eval", "debugpy")


class Expired(Failed):
    """A test ran past its deadline.

    One of pytest's outcome exceptions (a ``BaseException``), so that a
    test's ``except Exception`` does not swallow it while pytest's teardown
    treats it as any failure and still runs every other finalizer.
    """


class Deadline:
    """An armed deadline of a test this process runs (one object per test: no dataclass,
    whose default factories cost every test a little)."""

    __slots__ = (
        "expired_in",
        "nodeid",
        "notes",
        "paused",
        "seconds",
        "session",
        "setup_ended",
        "spent",
        "started",
        "token",
        "yields_to_debugger",
    )

    def __init__(self, nodeid: str, seconds: float | None, session: SessionDeadline | None) -> None:
        self.nodeid = nodeid
        #: The test's own deadline (None: it has only the session's).
        self.seconds = seconds
        #: The session's deadline, which the one armed never passes (``session_deadline``).
        self.session = session
        #: Its expiration time as armed, and its name in the watchdog's word (``verdict``):
        #: set by ``client.Link`` as it arms it.
        self.token = 0.0
        #: When its test (the attempt at it, with reruns) started (``verdict.wall_clock``).
        self.started = 0.0
        self.paused = False
        #: The phase it expired in, once the test was found expired (interrupted or not).
        self.expired_in: str | None = None
        #: Stacks of what the thread dumps do not show (asyncio tasks).
        self.notes: list[str] = []
        #: Its test's teardown ended: a rerun of the test needs a deadline of its own.
        self.spent = False
        #: When its test's setup ended (``verdict.boot_ticks``): a process started
        #: before may belong to a fixture of a wider scope.
        self.setup_ended = 0
        #: Whether a debugger found attached to its test stops its clock (not with
        #: --expire-disable-debugger-detection: then the debugged test is interrupted).
        self.yields_to_debugger = True

    def said(self) -> tuple[float | None, str | None]:
        """What its report says: the seconds it had, and the session's deadline if that
        is the one armed (it came before the test's own): then the time its test had
        until it."""
        session = self.session
        if session is not None and self.token >= session.end:
            return max(0.0, session.end - self.started), session.label
        return self.seconds, None

    def message(self) -> str:
        seconds, session = self.said()
        return headline(self.nodeid, seconds, self.expired_in or "test", session)


#: The deadlines armed in this process, innermost last: a pytest session run
#: inside a test (pytester's in-process runs) arms its tests' deadlines
#: inside the outer test's.
armed: list[Deadline] = []
_page: VerdictPage | None = None
_previous_handler: signal.Handlers | Callable[[int, FrameType | None], object] | int | None = None
# Held while an interrupt is sent again and while the handler is removed.
_sending = threading.Lock()
#: Told (from the handler) that a debugger is attached to the expired test,
#: which from then on has no deadline: someone is looking at it.
on_debugger: Callable[[Deadline], None] | None = None


def install(page: VerdictPage) -> None:
    """Install the handler, reading the watchdog's word from ``page``; from the main thread."""
    global _page, _previous_handler
    _page = page
    _previous_handler = signal.signal(INTERRUPT_SIGNAL, _on_interrupt)


def uninstall() -> None:
    """Put back the disposition found at :func:`install`.

    The watchdog sends the signal only to a process that handles it (see
    ``signals.handles``), and :func:`_send_again_later` only while a
    deadline is armed, so no interrupt comes after this.
    """
    global _page
    with _sending:
        armed.clear()
        _page = None
        signal.signal(INTERRUPT_SIGNAL, _previous_handler or signal.SIG_DFL)


def expired_deadline() -> Deadline | None:
    """The armed deadline the watchdog found passed, if any (the outermost first)."""
    page = _page
    if page is None:
        return None
    return next((deadline for deadline in armed if page.expired(deadline.token)), None)


def _on_interrupt(signum: int, frame: FrameType | None) -> None:
    __tracebackhide__ = True
    deadline = expired_deadline()
    if deadline is None or deadline.paused or deadline.spent or deadline.expired_in is not None:
        return
    if deadline.yields_to_debugger and _debugger_attached():
        deadline.paused = True
        if on_debugger is not None:
            on_debugger(deadline)
        return
    phase = None if _is_internal(frame) else _phase_of(frame)
    if phase is None:
        _send_again_later(deadline)
        return
    deadline.expired_in = phase
    tasks = _asyncio_task_stacks()
    if tasks:
        deadline.notes.append(tasks)
    raise Expired(deadline.message())


def _debugger_attached() -> bool:
    """Whether a debugger traces this thread (pytest's own, or one attached from an IDE)."""
    monitoring = getattr(sys, "monitoring", None)  # Python 3.12+: pdb from 3.14 uses it
    if monitoring is not None and monitoring.get_tool(monitoring.DEBUGGER_ID) is not None:
        return True
    tracer = sys.gettrace()
    if tracer is None:
        return False
    if isinstance(getattr(tracer, "__self__", None), bdb.Bdb):
        return True
    module = getattr(tracer, "__module__", None) or type(tracer).__module__
    return isinstance(module, str) and module.startswith(_DEBUGGER_MODULES)


def _is_internal(frame: FrameType | None) -> bool:
    module = frame.f_globals.get("__name__", "") if frame is not None else ""
    return isinstance(module, str) and module.startswith(_INTERNAL_MODULES)


def _phase_of(frame: FrameType | None) -> str | None:
    """The test phase ``frame`` runs in, if any: found on the stack, at no cost before."""
    while frame is not None:
        if frame.f_code is _PHASE_CODE:
            when = frame.f_locals.get("when")
            return when if isinstance(when, str) else "test"
        frame = frame.f_back
    return None


def _send_again_later(deadline: Deadline) -> None:
    """Interrupt the main thread again shortly, if it still runs the test of ``deadline``."""
    main = threading.main_thread().ident
    assert main is not None

    def send() -> None:
        with _sending:
            if deadline in armed:
                signal.pthread_kill(main, INTERRUPT_SIGNAL)

    timer = threading.Timer(_RETRY_DELAY, send)
    timer.daemon = True
    timer.start()


def _asyncio_task_stacks() -> str:
    """The stacks of the tasks of an event loop running in this thread, if any.

    A hung coroutine is suspended, so it is on no thread's stack: a thread
    dump shows only the event loop's ``select``. Its task still knows where
    it waits: down the chain of awaits (``cr_await``), from the task's
    coroutine to the innermost one, and what that one waits for (a future,
    an event's waiter). asyncio's own ``Task.print_stack`` shows only the
    task's outermost coroutine.
    """
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return ""  # never imported: no event loop runs (and no need to import it here)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return ""
    out = []
    for task in asyncio.all_tasks(loop):
        out.append(f"Task {task.get_name()!r} (outermost await first):")
        awaited: object = task.get_coro()
        while awaited is not None:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
            if frame is None:  # not a coroutine: what the innermost one waits for
                # The future itself, which the task keeps, says more than its iterator.
                out.append(f"  awaiting {getattr(task, '_fut_waiter', None) or awaited!r}")
                break
            code = frame.f_code
            out.append(f'  File "{code.co_filename}", line {frame.f_lineno} in {code.co_name}')
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return "\n".join(out) + "\n" if out else ""
