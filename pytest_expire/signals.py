"""The two signals the watchdog sends a test's process besides the kill, and who may get them.

Real-time signals, because tests replace the handlers of SIGINT, SIGALRM,
SIGTERM and SIGUSR1/2, but hardly ever touch these. Their default action is
to terminate, so each is sent only to a process that has a handler for it
at that moment (:func:`handles`): a process that exec'd keeps its PID and
start time but loses its handlers, and a test may reset a disposition.
Kept apart from the rest, so that the watchdog process knows them without
importing pytest.
"""

from __future__ import annotations

import contextlib
import os
import signal

#: faulthandler writes the stacks of every thread of the process to its dump file.
DUMP_SIGNAL = signal.SIGRTMIN + 6
#: The expired test fails where it is (see ``interrupt``).
INTERRUPT_SIGNAL = signal.SIGRTMIN + 7


def handles(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` now (its caught-signal mask).

    Read from ``SigCgt`` in ``/proc/PID/status``, which the kernel keeps for
    every process: no cooperation of the process is needed, and a process
    that exec'd or reset the disposition shows the bit cleared.
    """
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def name(signum: int) -> str:
    """A signal's name for a report, real-time signals and unknown numbers included."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        pass
    if signal.SIGRTMIN <= signum <= signal.SIGRTMAX:
        return f"SIGRTMIN+{signum - signal.SIGRTMIN}"
    return f"signal {signum}"


def interrupt_main_thread(pid: int) -> None:
    """Send SIGINT to the main thread of process ``pid``, a child of this process not
    reaped yet (so its PID names no other process).

    Sent to the whole process, the kernel may hand the signal to another
    thread (one that does not block it, when the main thread has a signal
    pending already, as a dump just asked of it): Python's handler then only
    sets its flag, and a main thread asleep in a C call (``time.sleep``, a
    blocking read) never wakes to see it. Sent to the main thread
    (``tgkill``, whose thread ID is the process's), it ends that call.
    Process-wide where the C library lacks ``tgkill`` (glibc before 2.30).
    """
    import ctypes

    tgkill = getattr(ctypes.CDLL(None, use_errno=True), "tgkill", None)
    if tgkill is None or tgkill(pid, pid, signal.SIGINT) != 0:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)


def send(pidfd: int, signum: int) -> None:
    """Send ``signum`` through ``pidfd``: to the process it was opened on, or (gone) none."""
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(pidfd, signum)
