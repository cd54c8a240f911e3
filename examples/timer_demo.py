"""Hang demo: workers that hang in different ways, each reaped at its deadline.

Run it with ``python examples/timer_demo.py``. A timer server runs in a process
of its own; four workers arm a 0.5 s timer around their work. Three hang
(sleeping, spinning in Python, wedged in C code that holds the GIL) and are
killed at their deadline; one finishes in time and exits normally.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import sys
import time
from collections.abc import Callable

from pytest_expire import timer

DEADLINE = 0.5


def sleep_forever() -> None:
    while True:
        time.sleep(3600)


def spin_forever() -> None:
    while True:
        pass


def hold_the_gil_forever() -> None:
    # Give the queue's feeder thread a moment to send the timer request: this
    # worker is about to take the GIL and never give it back.
    time.sleep(0.1)
    libc = ctypes.PyDLL(None)
    mutex = ctypes.create_string_buffer(64)
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)


def finish_in_time() -> None:
    time.sleep(0.1)


WORKLOADS: dict[str, Callable[[], None]] = {
    "sleeps forever": sleep_forever,
    "spins in Python": spin_forever,
    "C code holding the GIL": hold_the_gil_forever,
    "finishes in time": finish_in_time,
}


def worker(queue: multiprocessing.Queue[timer.TimerRequest], name: str) -> None:
    timer.configure(timer.LocalTimerClient(queue))
    with timer.expires(after=DEADLINE, scope=name):
        WORKLOADS[name]()


def main() -> int:
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[timer.TimerRequest] = context.Queue()
    server = timer.LocalTimerServer(queue)
    server.start(process=True, mp_context=context)
    try:
        started = time.monotonic()
        workers = {name: context.Process(target=worker, args=(queue, name)) for name in WORKLOADS}
        for process in workers.values():
            process.start()
        print(f"{'worker':<24} {'outcome':<18} {'ended after':>11}")
        ok = True
        for name, process in workers.items():
            process.join(timeout=30)
            elapsed = time.monotonic() - started
            if process.is_alive():
                process.kill()
                process.join()
                outcome = "NOT REAPED"
                ok = False
            elif process.exitcode == 0:
                outcome = "finished"
                ok = ok and name == "finishes in time"
            else:
                outcome = f"killed (exit {process.exitcode})"
                ok = ok and name != "finishes in time"
            print(f"{name:<24} {outcome:<18} {elapsed:>10.2f}s")
    finally:
        server.stop()
    print("every hang was reaped at its deadline" if ok else "UNEXPECTED OUTCOME")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
