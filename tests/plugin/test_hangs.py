"""Each kind of hang, in a real pytest session: caught, reported, and the session goes on.

Every test here runs pytest in a subprocess on a small suite: a test that
hangs under a short deadline, then a test that must still run and pass.
"""

from __future__ import annotations

import textwrap

import pytest

DEADLINE = 0.5

HANGS = {
    "sleep": """
        import time

        def test_hangs():
            time.sleep(3600)
    """,
    "busy_loop": """
        def test_hangs():
            while True:
                pass
    """,
    "lock_deadlock": """
        import threading

        def test_hangs():
            lock = threading.Lock()
            lock.acquire()
            lock.acquire()
    """,
    "queue_deadlock": """
        import queue

        def test_hangs():
            queue.Queue().get()
    """,
    "socket_read": """
        import socket

        def test_hangs():
            left, right = socket.socketpair()
            with left, right:
                left.recv(1)
    """,
    "ignores_sigint_and_sigalrm": """
        import signal, time

        def test_hangs():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGALRM, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(3600)
    """,
    "joins_a_hung_thread": """
        import threading

        def test_hangs():
            event = threading.Event()
            thread = threading.Thread(target=event.wait, daemon=True)
            thread.start()
            thread.join()
    """,
    "asyncio_coroutine": """
        import asyncio

        async def wait_for_nothing():
            await asyncio.Event().wait()

        def test_hangs():
            asyncio.run(wait_for_nothing())
    """,
}

# Where the report must show the test was when it expired.
HANG_FRAMES = {
    "sleep": "time.sleep(3600)",
    "busy_loop": "while True",
    "lock_deadlock": "lock.acquire()",
    "queue_deadlock": "queue.Queue().get()",
    "socket_read": "left.recv(1)",
    "ignores_sigint_and_sigalrm": "time.sleep(3600)",
    "joins_a_hung_thread": "thread.join()",
    "asyncio_coroutine": "wait_for_nothing",
}

FOLLOWER = """

def test_still_runs():
    assert True
"""


@pytest.mark.parametrize("kind", sorted(HANGS))
def test_a_hang_is_interrupted_and_the_session_goes_on(
    pytester: pytest.Pytester, kind: str
) -> None:
    pytester.makepyfile(test_suite=textwrap.dedent(HANGS[kind]) + FOLLOWER)
    result = pytester.runpytest_subprocess(f"--expire-default={DEADLINE}", timeout=60)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [f"*test_suite.py::test_hangs expired after {DEADLINE:g} s (in call)*"]
    )
    assert HANG_FRAMES[kind] in result.stdout.str()
    result.stdout.fnmatch_lines([f"*expired: test_suite.py::test_hangs after {DEADLINE:g} s*"])


def test_a_hang_in_fixture_setup(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_suite=textwrap.dedent(
            """
            import time
            import pytest

            @pytest.fixture
            def stuck():
                time.sleep(3600)

            def test_hangs(stuck):
                pass
            """
        )
        + FOLLOWER
    )
    result = pytester.runpytest_subprocess(f"--expire-default={DEADLINE}", timeout=60)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*test_hangs expired after 0.5 s (in setup)*"])


def test_a_hang_in_fixture_teardown_after_the_fixture_ran(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_suite=textwrap.dedent(
            """
            import time
            import pytest

            @pytest.fixture
            def stuck_at_the_end():
                yield
                time.sleep(3600)

            def test_hangs(stuck_at_the_end):
                pass
            """
        )
        + FOLLOWER
    )
    result = pytester.runpytest_subprocess(f"--expire-default={DEADLINE}", timeout=60)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*test_hangs expired after 0.5 s (in teardown)*"])
