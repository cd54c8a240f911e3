#!/usr/bin/env python3
"""What the plugin costs a suite run with pytest-xdist (``-n 2`` by default).

Run::

    python benchmarks/xdist_overhead.py [--tests N] [--rounds N] [--workers N] [--no-warm-up]

It generates a suite of trivial tests (``def test_N(): pass``, modules of
500) and runs it with ``python -m pytest -q -p no:cacheprovider -n WORKERS``
under each variant, the variants in a row in each round, once untimed
first (bytecode caches; ``--no-warm-up`` skips it, for a quick check that
the script runs): ``bare`` (the plugin blocked with ``-p no:expire``),
``expire-idle`` (loaded, no deadline: the controller still starts the
watchdog, see docs/plugin.md), ``expire`` (``--expire-default=60``), and
``timeout-signal`` (pytest-timeout's signal method, when installed). It
prints a Markdown table of the median wall time of each variant, its ratio
to ``bare``, and the cost per test. Third-party plugins other than xdist
and the variant's own are blocked, as in ``suite_overhead.py``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {
    "bare": ((), ()),
    "expire-idle": ((), ("expire",)),
    "expire": (("--expire-default=60",), ("expire",)),
    "timeout-signal": (("--timeout=60", "--timeout-method=signal"), ("timeout",)),
}


def entry_points() -> list[str]:
    return sorted({ep.name for ep in importlib.metadata.entry_points(group="pytest11")})


def make_suite(directory: Path, tests: int) -> None:
    (directory / "pytest.ini").write_text("[pytest]\n")
    for module in range(0, tests, 500):
        body = "".join(f"def test_{n}():\n    pass\n\n" for n in range(min(500, tests - module)))
        (directory / f"test_m{module // 500}.py").write_text(body)


def run(directory: Path, args: list[str]) -> float:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    started = time.perf_counter()
    subprocess.run(command, cwd=directory, check=True, capture_output=True, timeout=600)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--tests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--warm-up",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run each variant once untimed first (default: yes)",
    )
    options = parser.parse_args()
    installed = entry_points()
    variants = {
        key: value
        for key, value in VARIANTS.items()
        if all(plugin in installed for plugin in value[1])
    }
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        make_suite(directory, options.tests)
        commands = {}
        for key, (args, keep) in variants.items():
            blocked = [f"-p no:{p}".split() for p in installed if p not in (*keep, "xdist")]
            flat = [word for pair in blocked for word in pair]
            commands[key] = [*flat, "-n", str(options.workers), *args]
        times: dict[str, list[float]] = {key: [] for key in commands}
        if options.warm_up:
            for command in commands.values():
                run(directory, command)  # bytecode caches
        for round_ in range(options.rounds):
            for key, command in commands.items():
                times[key].append(run(directory, command))
            print(f"round {round_ + 1}/{options.rounds} done", file=sys.stderr)
    bare = statistics.median(times["bare"])
    print(f"{options.tests} trivial tests, -n {options.workers}, {options.rounds} rounds\n")
    print("| variant | median wall (s) | ratio to bare | per test (µs) |")
    print("| --- | ---: | ---: | ---: |")
    for key, samples in times.items():
        wall = statistics.median(samples)
        per_test = (wall - bare) / options.tests * 1e6
        print(f"| {key} | {wall:.3f} | {wall / bare:.3f} | {per_test:+.1f} |")


if __name__ == "__main__":
    main()
