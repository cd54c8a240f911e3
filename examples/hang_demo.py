"""Hang demo: a suite where every test hangs in its own way, run under the plugin.

Run it with ``python examples/hang_demo.py``. It runs ``examples/hang_suite``
with a 1 s deadline for every test. Each hang is caught: the report of each
test shows where it hung (the stacks of its process), the test fails with
"expired after 1 s", a test stuck in C code that holds the GIL is killed, and
the session still runs the last test, which passes. This script prints the
session's output, then checks the outcome of every test in its JUnit XML and
exits 0 only if each came out as it should.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

SUITE = Path(__file__).parent / "hang_suite"


def main() -> int:
    with tempfile.TemporaryDirectory() as scratch:
        junit = Path(scratch) / "junit.xml"
        session = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                str(SUITE),
                "--expire-default=1",
                "--expire-grace=1",
                f"--junitxml={junit}",
                "-p",
                "no:cacheprovider",
                "-rfE",
            ],
            check=False,
        )
        cases = ET.parse(junit).getroot().iter("testcase")
        outcomes = {
            case.get("name", "?"): next(
                (child.tag for child in case if child.tag in ("failure", "error")), "passed"
            )
            for case in cases
        }
    print("\nhang demo: outcome of each test")
    ok = session.returncode == 1 and len(outcomes) == 12
    for name, outcome in outcomes.items():
        expected = "passed" if name == "test_passes_after_all_of_them" else "caught"
        caught = outcome in ("failure", "error")
        good = (expected == "caught") == caught
        ok = ok and good
        print(f"  {'ok ' if good else 'BAD'} {name}: {outcome}")
    print("every hang was caught and the session went on" if ok else "UNEXPECTED OUTCOME")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
