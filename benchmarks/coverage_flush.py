"""What writing a test's coverage data costs each test (``coverage_data.test_ended``).

Under coverage.py, every test with a deadline ends with a write of what
coverage.py measured since the last one to the process's data file, so that
a kill loses at most the test it hit. This measures that write for a "test"
that runs code in a few modules of a measured package, and for one that runs
none of it, beside coverage.py's public ``Coverage.get_data()``, which
writes the same and then walks the source tree for files never run, and
beside what the test's own run costs under coverage.py's tracer.

The package is made in a temporary directory: ``--modules`` modules of 20
functions each; a test calls every function of ``--touched`` of them (the
same ones each time, then others: both a test that runs lines already
written and one that runs new ones are timed). Prints one table (Markdown),
each figure the median of ``--tests`` tests, in microseconds.

    .venv/bin/python benchmarks/coverage_flush.py
    .venv/bin/python benchmarks/coverage_flush.py --quick
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import coverage

from pytest_expire import coverage_data

FUNCTIONS = 20


def make_package(root: Path, modules: int) -> None:
    package = root / "measured"
    package.mkdir()
    (package / "__init__.py").write_text("")
    body = "".join(
        f"def f{n}(x):\n    if x > {n}:\n        return x - {n}\n    return x + {n}\n\n"
        for n in range(FUNCTIONS)
    )
    for m in range(modules):
        (package / f"m{m}.py").write_text(body)


def run_test(module: ModuleType) -> None:
    for n in range(FUNCTIONS):
        getattr(module, f"f{n}")(n)


def median_us(
    write: Callable[[], object], tests: int, pick: Callable[[int], list[ModuleType]]
) -> float:
    samples = []
    for number in range(tests):
        for module in pick(number):
            run_test(module)
        start = time.perf_counter()
        write()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", type=int, default=500)
    parser.add_argument("--touched", type=int, default=5)
    parser.add_argument("--tests", type=int, default=None, help="300, or 50 with --quick")
    parser.add_argument("--quick", action="store_true", help="50 modules")
    options = parser.parse_args()
    if options.quick:
        options.modules = 50
    if options.tests is None:
        options.tests = 50 if options.quick else 300
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        make_package(root, options.modules)
        sys.path.insert(0, str(root))
        measurement = coverage.Coverage(
            source=[str(root / "measured")], data_file=str(root / ".coverage"), data_suffix=True
        )
        measurement.start()
        try:
            modules = [importlib.import_module(f"measured.m{m}") for m in range(options.modules)]
            touched = options.touched

            def same(number: int) -> list[ModuleType]:
                return modules[:touched]

            def others(number: int) -> list[ModuleType]:
                first = (number * touched) % len(modules)
                return modules[first : first + touched]

            def none(number: int) -> list[ModuleType]:
                return []

            # For scale: what the test's own run costs under coverage.py's tracer.
            own = median_us(lambda: [run_test(m) for m in same(0)], options.tests, none)
            rows = []
            for name, write in (
                ("test_ended()", coverage_data.test_ended),
                ("Coverage.get_data()", measurement.get_data),
            ):
                rows.append(
                    (
                        name,
                        median_us(write, options.tests, none),
                        median_us(write, options.tests, same),
                        median_us(write, options.tests, others),
                    )
                )
        finally:
            measurement.stop()
    print(
        f"coverage.py {coverage.__version__}, {options.modules} measured modules of "
        f"{FUNCTIONS} functions; a test runs every function of {options.touched} of them; "
        f"median of {options.tests} tests, µs"
    )
    print()
    print("| write | a test that runs none | the same modules again | other modules |")
    print("|---|---|---|---|")
    for name, nothing, again, new in rows:
        print(f"| {name} | {nothing:.0f} | {again:.0f} | {new:.0f} |")
    print()
    print(f"The test's own run, measured: {own:.0f} µs.")


if __name__ == "__main__":
    main()
