"""One test per kind of hang, each under a 1 s deadline, and tests that pass around them.

Run through ``examples/hang_demo.py``; on its own these tests hang forever.
"""

import asyncio
import ctypes
import queue
import signal
import socket
import threading
import time

import pytest


def test_sleeps():
    time.sleep(3600)


def test_spins_in_python():
    while True:
        pass


def test_deadlocks_on_a_lock():
    lock = threading.Lock()
    lock.acquire()
    lock.acquire()


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


async def wait_for_nothing():
    await asyncio.Event().wait()


def test_awaits_a_hung_coroutine():
    asyncio.run(wait_for_nothing())


def test_holds_the_gil_in_c_code_forever():
    # A second lock of a non-recursive mutex through ctypes.PyDLL, which keeps
    # the GIL: no thread of this process runs Python again.
    libc = ctypes.PyDLL(None)
    mutex = ctypes.create_string_buffer(64)
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)


@pytest.fixture
def stuck_in_setup():
    time.sleep(3600)


def test_hangs_in_fixture_setup(stuck_in_setup):
    pass


@pytest.fixture
def stuck_in_teardown():
    yield
    time.sleep(3600)


def test_hangs_in_fixture_teardown(stuck_in_teardown):
    pass


def test_passes_after_all_of_them():
    assert True
