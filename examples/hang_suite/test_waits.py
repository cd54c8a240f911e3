"""Tests that wait for what never comes, in Python: each is interrupted at its deadline.

What a CI user sees for each: the test fails with ``expired after 1 s (in
call)``, its report points at the line it waited on, and the stacks of its
process follow (its own thread first). Run through ``examples/hang_demo.py``;
on its own, each of these tests hangs forever.
"""

import queue
import signal
import socket
import threading
import time


def test_sleeps():
    time.sleep(3600)


def test_spins_in_python():
    while True:
        pass


def test_deadlocks_on_a_lock():
    lock = threading.Lock()
    lock.acquire()
    lock.acquire()


def test_deadlocks_two_threads():
    # Each thread holds one lock and waits for the other's: both threads'
    # stacks show where.
    first, second = threading.Lock(), threading.Lock()
    first_taken = threading.Event()

    def take_first_then_second():
        with first:
            first_taken.set()
            time.sleep(0.1)
            with second:
                pass

    other = threading.Thread(target=take_first_then_second, name="takes-first", daemon=True)
    other.start()
    with second:
        first_taken.wait()
        with first:
            pass


def test_waits_on_an_empty_queue():
    queue.Queue().get()


def test_reads_a_silent_socket():
    left, right = socket.socketpair()
    with left, right:
        left.recv(1)


def test_ignores_sigint_sigalrm_and_sigterm():
    for signum in (signal.SIGINT, signal.SIGALRM, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    time.sleep(3600)


def test_joins_a_hung_thread():
    thread = threading.Thread(target=threading.Event().wait, daemon=True)
    thread.start()
    thread.join()
