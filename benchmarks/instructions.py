#!/usr/bin/env python3
"""What the plugin costs a suite in instructions: a figure that no load on the machine moves.

Run::

    python benchmarks/instructions.py [--sizes SMALL BIG] [--only VARIANT...]

Wall-time figures (``suite_overhead.py``) need an idle machine, and a
2-core CI runner or a laptop rarely is one. This counts the user-space
instructions that the processes running the tests execute, under
valgrind's callgrind (``valgrind`` must be on the PATH): the same count for
the same code and inputs whatever else the machine does. It generates the
plain suites of ``suite_overhead.py`` (``def test_N(): pass``) in two sizes
and runs each variant once per size under callgrind, which follows forks: the
process started here and, for a supervised session, the worker it forks are
counted (each instruction once: a forked child would otherwise start with
its parent's counts); the watchdog process (a program of its own, started
with ``exec``) is not, as it runs beside the tests on another core. Third-party plugins
other than the variant's own are blocked, as in ``suite_overhead.py``.

It prints a Markdown table: per test (the slope between the two sizes),
its difference from bare pytest and the ratio, and the fixed cost (the
intercept's difference: start-up, the fork, the end of the session).
Instructions are not time (a system call costs far more time than its few
user-space instructions, and callgrind counts none of the kernel's), so
this shows where the plugin's own Python code grows or shrinks, and
``suite_overhead.py`` says what that is in seconds. About 4 minutes with
the default sizes.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from suite_overhead import VARIANTS, Variant, write_suite

MEASURED = ("bare", "expire-idle", "expire", "timeout-signal")
RUN_TIMEOUT = 900.0  # seconds: valgrind runs Python some 50 times slower


def installed(distribution: str | None) -> bool:
    if distribution is None:
        return True
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def blocked(keep: tuple[str, ...]) -> list[str]:
    """``-p no:NAME`` for every third-party plugin but those the variant keeps."""
    names = sorted({ep.name for ep in importlib.metadata.entry_points(group="pytest11")})
    args: list[str] = []
    for name in names:
        if name not in keep:
            args += ["-p", f"no:{name}"]
    return args


def instructions(suite: Path, variant: Variant, output: Path) -> int:
    """The instructions that the run of ``suite`` under ``variant`` executed, in all the
    processes callgrind followed."""
    output.mkdir()
    command = [
        shutil.which("valgrind") or "valgrind",
        "-q",
        "--tool=callgrind",
        # A forked child inherits its parent's counts: dumped (and zeroed) before
        # each fork, every instruction is counted once, in some part file.
        "--dump-before=fork",
        f"--callgrind-out-file={output}/callgrind.%p",
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        *blocked(variant.plugins),
        *variant.args,
    ]
    environment = {"PYTHONHASHSEED": "0", "PATH": "/usr/bin:/bin", "TMPDIR": str(output)}
    run = subprocess.run(
        command,
        cwd=suite,
        env=environment,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    if run.returncode != 0:
        raise RuntimeError(f"{variant.key} in {suite.name} failed:\n{run.stdout}\n{run.stderr}")
    total = 0
    for path in output.glob("callgrind.*"):
        for line in path.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                total += int(line.split()[1])
                break
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs=2, type=int, default=(200, 1200), metavar=("SMALL", "BIG"))
    parser.add_argument("--only", nargs="+", default=MEASURED, choices=MEASURED, metavar="VARIANT")
    options = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: nothing to measure", file=sys.stderr)
        return 1
    small, big = options.sizes
    variants = [
        variant
        for variant in VARIANTS
        if variant.key in options.only and variant.key in MEASURED and installed(variant.needs)
    ]
    skipped = sorted(set(options.only) - {variant.key for variant in variants})
    counts: dict[str, tuple[int, int]] = {}
    with tempfile.TemporaryDirectory(prefix="instructions-") as root_name:
        root = Path(root_name)
        for size in (small, big):
            write_suite(root / f"plain-{size}", "plain", size)
            # Compiled once, so that no counted run compiles the suite.
            subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:expire"],
                cwd=root / f"plain-{size}",
                capture_output=True,
                check=True,
            )
        for variant in variants:
            print(f"counting {variant.key}", file=sys.stderr)
            counts[variant.key] = (
                instructions(root / f"plain-{small}", variant, root / f"{variant.key}-{small}"),
                instructions(root / f"plain-{big}", variant, root / f"{variant.key}-{big}"),
            )
    bare_slope = (counts["bare"][1] - counts["bare"][0]) / (big - small)
    bare_fixed = counts["bare"][0] - bare_slope * small
    print(f"Plain suites of {small} and {big} tests, Python {sys.version.split()[0]}.\n")
    print("| variant | instructions per test | Δ bare | / bare | fixed Δ bare (millions) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for variant in variants:
        low, high = counts[variant.key]
        slope = (high - low) / (big - small)
        fixed = low - slope * small
        print(
            f"| {variant.key} | {slope:,.0f} | {slope - bare_slope:+,.0f} | "
            f"{slope / bare_slope:.3f} | {(fixed - bare_fixed) / 1e6:+,.0f} |"
        )
    if skipped:
        print(f"\nNot installed, not measured: {', '.join(skipped)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
