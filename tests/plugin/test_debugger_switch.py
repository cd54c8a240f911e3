"""With debugger detection off, a test in a debugger keeps its deadline: it is interrupted."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    ("args", "ini"),
    [
        (["--expire-disable-debugger-detection"], ""),
        ([], "expire_disable_debugger_detection = true"),
    ],
)
def test_a_test_under_an_attached_debugger_is_interrupted(
    pytester: pytest.Pytester, args: list[str], ini: str
) -> None:
    # A debugger pytest does not know of (an IDE's) stops at a line while someone
    # reads: found at the deadline, it would stop the clock; not with the switch.
    ended = pytester.path / "ended"
    if ini:
        pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile(
        f"""
        import bdb
        import time
        import pytest

        class SomeoneReading(bdb.Bdb):
            def user_line(self, frame):
                time.sleep(5)
                self.set_continue()

        @pytest.mark.expires(0.5)
        def test_debugged():
            SomeoneReading().set_trace()
            open({str(ended)!r}, "w").close()
        """
    )
    result = pytester.runpytest_subprocess("--expire-grace=2", *args, timeout=60)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*debugger detection off*", "*test_debugged expired after 0.5 s (in call)*"]
    )
    assert not ended.exists()
    assert result.duration < 4  # interrupted at its deadline, not killed, not let run


def test_a_breakpoint_is_interrupted(pytester: pytest.Pytester) -> None:
    pytest.importorskip("pexpect")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.expires(0.5)
        def test_debugged():
            breakpoint()
        """
    )
    child = pytester.spawn_pytest(
        "--expire-disable-debugger-detection --expire-grace=5 -p no:cacheprovider",
        expect_timeout=30,
    )
    try:
        child.expect(r"\(Pdb\)")
        # Nobody answers the prompt: the deadline interrupts the test there, before the grace.
        child.expect(r"test_debugged expired after 0.5 s \(in call\)", timeout=4)
        child.expect("1 failed")
    finally:
        child.terminate(force=True)
