"""C code that holds the GIL and never returns: no interrupt can land.

The watchdog takes the stacks from outside (faulthandler writes them from a
signal handler, without the GIL), interrupts, waits the grace period, then
kills the test's process. The test fails with ``expired after 1 s (in call);
killed``, and the session goes on in a new process with the next test.
"""

import ctypes


def test_holds_the_gil_in_c_code_forever():
    # A second lock of a non-recursive mutex through ctypes.PyDLL, which keeps
    # the GIL: no thread of this process runs Python again.
    libc = ctypes.PyDLL(None)
    mutex = ctypes.create_string_buffer(64)
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)
