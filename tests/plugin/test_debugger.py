"""A test stopped in the debugger is neither interrupted nor killed while it is there."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("pexpect")


@pytest.mark.parametrize("default", ["--expire-default=0.5", ""])
def test_breakpoint_is_not_interrupted(pytester: pytest.Pytester, default: str) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.expires(0.5)
        def test_debugged():
            breakpoint()
            assert True
        """
    )
    args = "--expire-grace=0.5 -p no:cacheprovider" + (f" {default}" if default else "")
    child = pytester.spawn_pytest(args, expect_timeout=30)
    try:
        child.expect(r"\(Pdb\)")
        time.sleep(1.5)  # past the deadline and the grace period
        child.sendline("c")
        child.expect("1 passed")
    finally:
        child.terminate(force=True)


def test_a_test_under_an_attached_debugger_is_neither_interrupted_nor_killed(
    pytester: pytest.Pytester,
) -> None:
    # A debugger pytest does not know of (an IDE's, attached to the process)
    # stops at a line while someone reads, past the deadline and the grace:
    # the test goes on to its end, and fails for having ended late (a
    # tracer that only looks like a debugger must not make a late test pass).
    ended = pytester.path / "ended"
    pytester.makepyfile(
        f"""
        import bdb
        import time
        import pytest

        class SomeoneReading(bdb.Bdb):
            def user_line(self, frame):
                time.sleep(1.5)
                self.set_continue()

        @pytest.mark.expires(0.5)
        def test_debugged():
            SomeoneReading().set_trace()
            open({str(ended)!r}, "w").close()

        @pytest.mark.expires(0.5)
        def test_not_debugged_still_expires():
            time.sleep(30)
        """
    )
    result = pytester.runpytest_subprocess("--expire-grace=0.5", "-p", "no:randomly", timeout=60)
    result.assert_outcomes(failed=2)
    assert ended.exists()
    result.stdout.fnmatch_lines(
        [
            "*test_debugged expired after 0.5 s (in call)*",
            "*test_not_debugged_still_expires expired after 0.5 s*",
        ]
    )
    result.stdout.no_fnmatch_line("*did not stop when interrupted*")
