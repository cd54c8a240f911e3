"""The two signals the watchdog sends a test's process, besides the kill.

Real-time signals, because tests replace the handlers of SIGINT, SIGALRM,
SIGTERM and SIGUSR1/2, but hardly ever touch these. Their default action is
to terminate, so each is sent only to a process that installed a handler:
:data:`DUMP_SIGNAL` to a process registered for dumps (``stacks``),
:data:`INTERRUPT_SIGNAL` to a process that armed a test's timer
(``interrupt``). Kept apart from both, so that the watchdog process knows
them without importing pytest.
"""

from __future__ import annotations

import signal

#: faulthandler writes the stacks of every thread of the process to its dump file.
DUMP_SIGNAL = signal.SIGRTMIN + 6
#: The expired test fails where it is (see ``interrupt``).
INTERRUPT_SIGNAL = signal.SIGRTMIN + 7
