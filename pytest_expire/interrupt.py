"""Interrupting a test from outside its process, and never the wrong test.

The watchdog interrupts an expired test by sending :data:`INTERRUPT_SIGNAL`
to its process. The handler raises :class:`Expired` in the main thread, so
the test fails where it hangs, with that frame in its traceback, and its
fixtures tear down. A signal makes blocking calls (sleep, lock and queue
waits, socket reads) return to Python, so this works for every hang that
Python code can still notice. A real-time signal is used because tests
replace the handlers of SIGINT, SIGALRM and SIGTERM, but not these.

The handler acts only while a test phase runs and only if that test's own
deadline has passed: an interrupt that arrives as a test finishes finds the
next test armed with a later deadline, or nothing armed, and does nothing.
"""

from __future__ import annotations

import asyncio
import io
import signal
import time
from dataclasses import dataclass, field
from types import FrameType

INTERRUPT_SIGNAL = signal.SIGRTMIN + 7

# The watchdog and this process read the same clock; this covers rounding.
_CLOCK_SLACK = 0.01


class Expired(BaseException):
    """A test ran past its deadline.

    A ``BaseException``, like pytest's own outcomes, so that a test's
    ``except Exception`` does not swallow it.
    """


@dataclass
class Deadline:
    """The armed deadline of the test this process runs."""

    nodeid: str
    seconds: float
    expiration_time: float
    phase: str | None = None
    paused: bool = False
    expired_in: str | None = None
    notes: list[str] = field(default_factory=list)

    def message(self) -> str:
        return f"{self.nodeid} expired after {self.seconds:g} s (in {self.expired_in})"


current: Deadline | None = None


def install() -> None:
    """Install the handler; call from the main thread."""
    signal.signal(INTERRUPT_SIGNAL, _on_interrupt)


def uninstall() -> None:
    signal.signal(INTERRUPT_SIGNAL, signal.SIG_DFL)


def _on_interrupt(signum: int, frame: FrameType | None) -> None:
    __tracebackhide__ = True
    deadline = current
    if (
        deadline is None
        or deadline.phase is None
        or deadline.paused
        or deadline.expired_in is not None
    ):
        return
    if time.time() + _CLOCK_SLACK < deadline.expiration_time:
        return
    deadline.expired_in = deadline.phase
    tasks = _asyncio_task_stacks()
    if tasks:
        deadline.notes.append(tasks)
    raise Expired(deadline.message())


def _asyncio_task_stacks() -> str:
    """The stacks of the tasks of an event loop running in this thread, if any.

    A hung coroutine is suspended, so it is on no thread's stack: a thread
    dump shows only the event loop's ``select``. Its task still knows where
    it waits.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return ""
    out = io.StringIO()
    for task in asyncio.all_tasks(loop):
        task.print_stack(file=out)
    return out.getvalue()
