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
