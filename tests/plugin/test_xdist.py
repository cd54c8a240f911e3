"""Under pytest-xdist: workers share the controller's watchdog; xdist replaces a killed one."""

from __future__ import annotations

import textwrap

import pytest

pytest.importorskip("xdist")


def test_hangs_in_xdist_workers_are_interrupted_or_killed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_suite=textwrap.dedent(
            """
            import ctypes, os, time
            import pytest

            def test_sleeps():
                time.sleep(3600)

            def test_holds_the_gil():
                libc = ctypes.PyDLL(None)
                mutex = ctypes.create_string_buffer(64)
                libc.pthread_mutex_lock(mutex)
                libc.pthread_mutex_lock(mutex)

            @pytest.mark.parametrize("i", range(4))
            def test_passes(i):
                assert os.environ["PYTEST_EXPIRE_ADDRESS"]
            """
        )
    )
    result = pytester.runpytest_subprocess(
        "-n", "2", "--expire-default=0.5", "--expire-grace=0.5", timeout=120
    )
    result.assert_outcomes(passed=4, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*test_suite.py::test_holds_the_gil expired; it did not stop when interrupted and "
            "the watchdog killed its worker*",
            "*expired: test_suite.py::test_holds_the_gil*",
        ]
    )
    result.stdout.fnmatch_lines(["*test_sleeps expired after 0.5 s (in call)*"])
    # The stacks of the killed worker were taken while it held the GIL.
    assert "in test_holds_the_gil" in result.stdout.str()
