#!/usr/bin/env python3
"""What the start-up hook (``pytest-expire.pth``) costs every Python process.

Run with the interpreter of an environment the project is installed in::

    .venv/bin/python benchmarks/startup_cost.py [--runs N]

and it prints one Markdown table. Every interpreter start reads the
``.pth`` files of site-packages, so ours runs in every ``python`` of the
environment, inside a pytest session or not. Outside a session it must cost
nothing measurable; inside one it joins the session (``pytest_expire.startup``):
some imports, a dump registration and two small files.

How it is measured. Two virtual environments are made in a temporary
directory, alike but for one file: their site-packages hold a symbolic link
to every entry of this environment's site-packages (so the same ``.pth``
files run, the editable install's and coverage's included, and the same
packages import), and only the first one holds ours. Each run is one
``python -c pass`` started with ``posix_spawn`` and awaited, its wall time
taken around both. The variants take turns, in a new random order each
round, so that a slow spell of the machine falls on all of them alike:

- ``without hook``: the second environment, no session;
- ``without hook, again``: a third environment, made as the second: how far
  apart two identical variants come out, the noise of the method itself;
- ``with hook``: the first, no session (the line looks the variable up and
  stops);
- ``with hook, session over``: the variable names a directory that does not
  exist (a process started after its session ended: the module imports,
  and does not join);
- ``with hook, in a session``: the variable names a directory, so each run
  joins it (registers for dumps, writes its registry entry).

Each row gives the median, the 10th and 90th percentiles, and the
difference of its median from ``without hook`` with a 95 % bootstrap
interval. The table is followed by what ``site`` spends on our file when no
session is there, timed in this process (``timeit`` of
``site.addpackage``: open, read, run the line): below what process timings
can resolve. CPython 3.11 reads a virtual environment's site-packages twice
per start, so there the hook's share of a start is twice that figure.
"""

from __future__ import annotations

import argparse
import os
import random
import site
import statistics
import sys
import sysconfig
import tempfile
import time
import timeit
import venv
from collections.abc import Sequence
from pathlib import Path

HOOK = "pytest-expire.pth"
DIRECTORY_ENV = "PYTEST_EXPIRE_DIRECTORY"
_BOOTSTRAP_SAMPLES = 2000


def mirror(root: Path, site_packages: Path, with_hook: bool) -> Path:
    """A virtual environment whose site-packages links to every entry of ``site_packages``
    (but the hook, unless ``with_hook``); its interpreter."""
    venv.create(root, symlinks=True, with_pip=False)
    target = Path(sysconfig.get_path("purelib", "posix_prefix", vars={"base": str(root)}))
    for entry in site_packages.iterdir():
        if entry.name != HOOK or with_hook:
            (target / entry.name).symlink_to(entry)
    return root / "bin" / "python"


def run_once(python: Path, env: dict[str, str]) -> float:
    """Seconds from spawning ``python -c pass`` to its exit."""
    started = time.perf_counter()
    pid = os.posix_spawn(python, [str(python), "-c", "pass"], env)
    _, status = os.waitpid(pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{python} -c pass failed (status {status})")
    return elapsed


def median_difference_interval(
    sample: list[float], baseline: list[float], rng: random.Random
) -> tuple[float, float]:
    """A 95 % bootstrap interval of median(sample) - median(baseline)."""
    differences = sorted(
        statistics.median(rng.choices(sample, k=len(sample)))
        - statistics.median(rng.choices(baseline, k=len(baseline)))
        for _ in range(_BOOTSTRAP_SAMPLES)
    )
    low, high = round(0.025 * _BOOTSTRAP_SAMPLES), round(0.975 * _BOOTSTRAP_SAMPLES)
    return differences[low], differences[high]


def hook_file_seconds(site_packages: Path) -> float:
    """Seconds ``site`` takes to process the hook once when no session is in the environment."""
    timer = timeit.Timer(lambda: site.addpackage(str(site_packages), HOOK, set()))
    number, _ = timer.autorange()
    return min(timer.repeat(repeat=7, number=number)) / number


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--runs", type=int, default=400, help="runs per variant (default 400)")
    args = parser.parse_args(argv)

    site_packages = Path(sysconfig.get_paths()["purelib"])
    if not (site_packages / HOOK).is_file():
        print(f"{HOOK} is not in {site_packages}: install the project first", file=sys.stderr)
        return 2
    # Outside any session (this process's own measurement of the hook included).
    os.environ.pop(DIRECTORY_ENV, None)
    base_env = dict(os.environ)
    rng = random.Random(0)
    with tempfile.TemporaryDirectory(prefix="startup-cost-") as temporary:
        root = Path(temporary)
        session = root / "session"
        session.mkdir()
        with_hook = mirror(root / "with", site_packages, with_hook=True)
        without_hook = mirror(root / "without", site_packages, with_hook=False)
        again = mirror(root / "again", site_packages, with_hook=False)
        variants = {
            "without hook": (without_hook, base_env),
            "without hook, again": (again, base_env),
            "with hook": (with_hook, base_env),
            "with hook, session over": (
                with_hook,
                {**base_env, DIRECTORY_ENV: str(root / "over")},
            ),
            "with hook, in a session": (
                with_hook,
                {**base_env, DIRECTORY_ENV: str(session), "PYTEST_CURRENT_TEST": "t.py::t (call)"},
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        names = list(variants)
        for round_ in range(args.runs + 5):
            rng.shuffle(names)
            for name in names:
                seconds = run_once(*variants[name])
                if round_ >= 5:  # the first rounds warm the caches up
                    times[name].append(seconds)
            if round_ % 50 == 0:
                print(f"round {round_}/{args.runs + 5}", file=sys.stderr)
        joined = len(list(session.glob("joined-*")))
    hook_file = hook_file_seconds(site_packages)

    baseline = times["without hook"]
    print(f"`python -c pass`, {args.runs} runs per variant, Python {sys.version.split()[0]}\n")
    print("| variant | median ms | p10 ms | p90 ms | median - without hook, ms (95 % CI) |")
    print("|---|---|---|---|---|")
    for name, sample in times.items():
        deciles = statistics.quantiles(sample, n=10)
        if name == "without hook":
            difference = "—"
        else:
            low, high = median_difference_interval(sample, baseline, rng)
            delta = statistics.median(sample) - statistics.median(baseline)
            difference = f"{delta * 1e3:+.3f} ({low * 1e3:+.3f} … {high * 1e3:+.3f})"
        print(
            f"| {name} | {statistics.median(sample) * 1e3:.3f} | {deciles[0] * 1e3:.3f} "
            f"| {deciles[-1] * 1e3:.3f} | {difference} |"
        )
    print(f"\nsite's work on {HOOK}, outside a session: {hook_file * 1e6:.1f} µs each time.")
    print(f"Runs in a session that joined it: {joined} of {args.runs + 5}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
