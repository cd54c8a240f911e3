"""How a worker process ended, in words: a test's report and the supervisor's notes say it.

Every signal gets a name, whatever its number (``signals.name``): a worker
killed by a real-time signal (whose default action is to terminate) must
still end in a report, not in a ``ValueError`` from ``signal.Signals``.
"""

from __future__ import annotations

import os

from pytest_expire.signals import name as signal_name


def how_it_ended(status: int, when: str) -> str:
    """A wait status in words, ``when`` it happened.

    ``died in call (SIGKILL)``, ``exited with status 0 in call``.
    """
    if os.WIFSIGNALED(status):
        return f"died {when} ({signal_name(os.WTERMSIG(status))})"
    return f"exited with status {os.waitstatus_to_exitcode(status)} {when}"
