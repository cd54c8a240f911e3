"""Ways for a worker to hang, importable by spawned children.

``hold_the_gil_forever`` is the hard case: a C call that holds the GIL and
never returns (a second lock of a non-recursive pthread mutex, reached through
``ctypes.PyDLL``, which keeps the GIL). No thread of that process runs Python
again and no signal handler written in Python ever runs; only a signal's
default action (SIGKILL always) ends it.
"""

from __future__ import annotations

import ctypes
import time

# Larger than sizeof(pthread_mutex_t) on every Linux ABI; all zeros is
# PTHREAD_MUTEX_INITIALIZER for glibc and musl.
_MUTEX_BYTES = 64


def hold_the_gil_forever() -> None:
    libc = ctypes.PyDLL(None)
    mutex = ctypes.create_string_buffer(_MUTEX_BYTES)
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)  # never returns, GIL held


def sleep_forever() -> None:
    while True:
        time.sleep(3600)
