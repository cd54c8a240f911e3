"""Tests that pass, and the last, which leaves behind what keeps the process from exiting.

A thread that is not a daemon: the interpreter's exit waits for it, so bare
pytest would print its summary and then hang until the CI job is cancelled.
Here the process that ran the tests has ``--expire-exit`` seconds to exit
once the session is over; then what still runs is said on stderr, with the
test that started it, and killed. The session's exit status stands.
(``zz``: pytest runs the files in order, and this one last.)
"""

import threading


def test_passes_after_all_of_them():
    assert True


def test_leaks_a_thread_that_blocks_the_exit():
    threading.Thread(target=threading.Event().wait, name="never-ends").start()
