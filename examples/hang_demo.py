"""Hang demo: a gallery of real hangs, run under the plugin as a CI job would run it.

Run it with ``python examples/hang_demo.py``. It runs ``examples/hang_suite``
with a 1 s deadline for every test and 1 s for the process to exit after
the session. Each file of the suite is one kind of hang (waits in Python,
deadlocks, a hung child process, a hung coroutine, C code holding the GIL,
fixtures, a thread that keeps the process from exiting), and its docstring
says what a CI user sees. Each hang is caught: the report of each test
shows where it hung (the stacks of its processes), the test fails with
"expired after 1 s", a test stuck in C code that holds the GIL is killed,
the session runs every test, and the process that is kept from exiting by
a leaked thread is ended 1 s after the summary, the leak named.

This script prints the session's output, then checks the outcome of every
test in its JUnit XML, the notice of the exit hang and the exit status, and
exits 0 only if each came out as it should.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

SUITE = Path(__file__).parent / "hang_suite"
#: The tests that pass; every other test of the suite hangs and must be caught.
PASSING = {"test_passes_after_all_of_them", "test_leaks_a_thread_that_blocks_the_exit"}
#: What the notice of the exit hang must say: the leaked thread, and the test it started in.
EXIT_NOTICE = ('thread "never-ends" (not a daemon), started during ', "test_zz_exit.py::")
#: Far longer than the demo takes (some 25 s), far shorter than a hang.
TOO_LONG = 120


def main() -> int:
    with tempfile.TemporaryDirectory() as scratch:
        junit = Path(scratch) / "junit.xml"
        began = time.monotonic()
        session = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                str(SUITE),
                "--expire-default=1",
                "--expire-grace=1",
                "--expire-exit=1",
                f"--junitxml={junit}",
                "-p",
                "no:cacheprovider",
                "-rfE",
            ],
            stderr=subprocess.PIPE,
            text=True,
            check=False,
            timeout=TOO_LONG,
        )
        took = time.monotonic() - began
        sys.stderr.write(session.stderr)
        cases = ET.parse(junit).getroot().iter("testcase")
        outcomes = {
            case.get("name", "?"): next(
                (child.tag for child in case if child.tag in ("failure", "error")), "passed"
            )
            for case in cases
        }
    print("\nhang demo: outcome of each test")
    ok = len(outcomes) == len(list(_tests_of_the_suite()))
    for name, outcome in outcomes.items():
        good = (name in PASSING) == (outcome == "passed")
        ok = ok and good
        print(f"  {'ok ' if good else 'BAD'} {name}: {outcome}")
    exit_caught = any(
        all(part in line for part in EXIT_NOTICE) for line in session.stderr.splitlines()
    )
    print(
        f"  {'ok ' if exit_caught else 'BAD'} the leaked thread was named and ended after the "
        f"session; the run took {took:.0f} s, exit status {session.returncode} (1: tests failed)"
    )
    ok = ok and exit_caught and session.returncode == 1
    print("every hang was caught and the session went on" if ok else "UNEXPECTED OUTCOME")
    return 0 if ok else 1


def _tests_of_the_suite() -> list[str]:
    """The names of the suite's tests, read from its files (not from the run)."""
    return [
        line.split("(")[0].removeprefix("def ")
        for path in sorted(SUITE.glob("test_*.py"))
        for line in path.read_text().splitlines()
        if line.startswith("def test_")
    ]


if __name__ == "__main__":
    sys.exit(main())
