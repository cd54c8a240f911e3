#!/usr/bin/env python3
"""What the plugin costs a whole test suite, and how fast a hung test is reported.

Run::

    python benchmarks/suite_overhead.py [--quick] [--rounds N] [--sizes SMALL BIG]
                                        [--kinds plain fixture] [--only VARIANT...]
                                        [--samples N] [--json PATH]

It prints Markdown tables: the overhead of runs of trivial tests under each
variant below (whole run; per test and fixed), per-test times measured inside
the processes, and the time from a test's deadline to its failed report;
then the targets met or missed, and notes (failed runs, leftovers, skipped
variants). Progress goes to stderr. The full run takes about 10 minutes on a
2-core machine; ``--quick`` (about 40 s) only shows that everything works:
its figures are too few to mean anything, so it judges no target.

The variants
------------
Every variant is ``python -m pytest -q -p no:cacheprovider`` run as a
subprocess in the directory of a generated suite (which has a ``pytest.ini``
of its own, so no project configuration applies), plus:

- ``bare``: nothing more;
- ``expire-idle``: the ``expire`` plugin loaded, no deadline set (what having
  the package installed costs a session that does not use it);
- ``expire-marker``: every test marked ``expires(60)`` (by a generated
  ``-p`` plugin, at collection) and no default: the watchdog starts after
  collection instead of during it;
- ``expire``: ``--expire-default=60``: every test under a deadline. Both
  are supervised: the process started here collects, then forks a worker
  that runs and reports the tests, and waits; a watchdog process runs
  beside them;
- ``timeout-signal``, ``timeout-thread``: pytest-timeout ``--timeout=60`` with
  ``--timeout-method=signal`` / ``thread`` (skipped, with a note, when
  pytest-timeout is not installed; it is never a dependency of this project);
- ``faulthandler``: pytest's own ``-o faulthandler_timeout=60``.

Third-party plugins that are installed but not measured by a variant (every
entry point of the ``pytest11`` group other than the variant's own: in this
project's venv xdist and hypothesis, from the test extras, and whichever of
expire and pytest-timeout is not measured) are blocked with ``-p no:NAME``:
xdist and hypothesis add about a second of imports to each process, which
would dilute every ratio.

Suites
------
``plain``: ``def test_N(): pass``; ``fixture``: the same tests taking a
function-scoped yield fixture from ``conftest.py``. Modules of 500 tests.
Each suite exists in two sizes (``--sizes``, default 500 and 5,000 tests;
``--quick``: 30 and 300, plain only). Every suite is run once, untimed,
before the measurements, so that its bytecode is compiled and cached; the
runs never see ``PYTHONDONTWRITEBYTECODE`` (some CI images set it), which
would have every run compile the suite and the plugin anew, as no
installed package and no second run of a suite does.

Whole-run overhead
------------------
In each round every variant runs every suite once, variants in a row for one
suite (``A B C ...``), so a variant and ``bare`` are measured seconds apart;
odd rounds go through the variants in the opposite order, so that a drift of
the machine (other jobs) is not charged to the same variant every time. The
wall time of a run is taken from ``Popen`` to its exit; its CPU time is the
growth of ``RUSAGE_CHILDREN`` over the run (user + system of the pytest
process and of every process below it that was waited for: the worker and
the watchdog of a supervised run). The table gives, for the big suite, the
median wall and CPU time of each variant, the *median of the per-round
ratios* to ``bare``, and the ratio of the variant's fastest run to bare's
fastest. CPU time matters: a supervised run keeps two processes busy at
once, which two idle cores hide in the wall time and a busy machine does
not.

Noise. On a shared virtual machine a whole run can be 30-70 % slower than
the same run a minute later, in stretches of seconds to minutes, also when
no other process is busy: the host, not the guest, is contended. Each run
therefore records the *others' load*: the CPU time the whole machine was
busy (``/proc/stat``, steal included) minus the run's own, per second of the
run, in cores; the tables give its median. A slowdown with near-zero
others' load is the host's. Slowdowns only add time, so the fastest runs
are the least disturbed ones: the "fastest" columns compare those, and are
the better estimate of small differences when rounds are few; a difference
smaller than the spread between rounds is not resolved by either.

Per-test cost and fixed cost
----------------------------
A run costs ``fixed + N x per-test``. ``expire``'s fixed part is large (a
second pytest process and the watchdog process start), so the whole-run
ratio of one suite size mixes the two. Per round and variant, the per-test
cost is the slope between the two sizes, ``(T(big) - T(small)) / (big -
small)``, and the fixed cost the intercept, ``T(small) - small x slope``. The
tables give the medians over rounds of each, of their differences to
``bare`` in the same round, and of the per-test ratio to ``bare``, for wall
and for CPU time; and the difference of slopes taken between the fastest
run of each size.

Per test inside the processes
-----------------------------
A slope is the difference of two run times of several seconds, each of
which moves by tens of percent on a shared machine: it cannot resolve a few
microseconds. So, in ``--per-test-rounds`` further rounds (alternating
order again) on the small suite of the first kind, a generated ``-p`` plugin
times every test from inside: wall (``perf_counter_ns``) and CPU
(``process_time_ns``) from the entry of its ``pytest_runtest_protocol``
(``tryfirst``, outside every other wrapper) to the exit, in the process that
runs the tests; the median over the tests of a run shrugs off the moments
another job took the core, though not a host that is slow for the whole run.
A supervised run's tests run in its forked worker, which is where the
plugin measures them (the supervisor only waits). The table gives the
medians over rounds and of the per-round differences to ``bare``, and the
fastest round's median against bare's fastest. These runs carry the plugin,
so they are not the whole-run figures; collection and start-up are not in
them.

Deadline -> failed report
-------------------------
A suite of three tests: a trivial one (so that the watchdog and the
connection to it exist before the measured test starts), one that hangs, and
a trivial one after it, run with ``-p`` a timing plugin generated in the
temporary directory. In every process of the run the plugin records the wall
time (``time.time()``, the clock the watchdog uses too) at which each test's
``pytest_runtest_protocol`` is entered (``tryfirst``: before the ``expire``
plugin arms the deadline, so the figures below err on the long side by a few
microseconds) and at which each report reaches ``pytest_runtest_logreport``,
with the report's ``expired:`` section. Latency = time of the hung test's
first failed report (in the worker that reports what the user sees) - (its
protocol entry + deadline D).
Cases (D = 1 s, ``--expire-grace=0.5``):

- ``sleep``: ``time.sleep`` forever, ``--expire-default=1``: interrupted at D,
  with the stacks taken from outside first;
- ``sleep, marker only``: the same test marked ``expires(1)`` and no default
  (the watchdog starts after collection);
- ``sleep, 4 forked children``: the test forks 4 children that sleep too,
  then sleeps: the stacks of 5 processes go into the report;
- ``GIL held in C``: ``pthread_mutex_lock`` twice on one zeroed 64-byte
  buffer through ``ctypes.PyDLL`` (which keeps the GIL), ``--expire-default=1``:
  no Python code runs in that process again, so the report comes only after
  the kill at D + grace, and the latency is also given from D + grace.

``stacks in report`` says whether the report held an ``expired:`` section
whose stacks show the hung test's frame, and of how many processes ("all
dumps"); ``next test`` is the time from the failed report to the following
test's passed report (for the GIL case, a new worker process has to start).
``--samples`` sessions per case (5; quick: 1), cases alternating.

Hygiene
-------
Suites, the generated plugins and the runs' ``TMPDIR`` live in one
``tempfile.mkdtemp()`` directory that is removed at the end. Every pytest is
started in a session of its own; after it exits, anything left in its
process group is reported as a leftover and killed, and so is a
``pytest-expire-*`` directory left in its ``TMPDIR``. On an error, Ctrl-C or
SIGTERM every process group still alive is killed. ``PYTEST_*`` variables
(``PYTEST_ADDOPTS``, ``PYTEST_EXPIRE_*``, ...) are not passed to the runs.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

MODULE_SIZE = 500
DEADLINE = 1.0  # seconds: the deadline of the hung test in the latency cases
GRACE = 0.5  # seconds: --expire-grace in the latency cases
RUN_TIMEOUT = 900.0  # a run that takes longer is killed and reported
LATENCY_RUN_TIMEOUT = 60.0
LEFTOVER_WAIT = 3.0  # how long processes of a finished run may take to go away
TIMING_ENV = "SUITE_OVERHEAD_TIMING_FILE"
TIMING_PLUGIN = "suite_overhead_timing"
PER_TEST_ENV = "SUITE_OVERHEAD_PER_TEST_FILE"
PER_TEST_PLUGIN = "suite_overhead_per_test"
MARKER_PLUGIN = "suite_overhead_marker"
HUNG_TEST = "test_1_hang"

# Per-test target: at most 2 % over bare, and at most this many microseconds.
TARGET_RATIO = 1.02
TARGET_PER_TEST_US = 12.0
TARGET_LATENCY = 0.5


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    args: tuple[str, ...]
    plugins: tuple[str, ...] = ()  # entry points (group pytest11) this variant keeps
    needs: str | None = None  # distribution it needs


VARIANTS = (
    Variant("bare", "bare pytest", ()),
    Variant("expire-idle", "pytest-expire loaded, no deadline", (), ("expire",)),
    Variant(
        "expire-marker",
        "every test marked expires(60), no default",
        ("-p", MARKER_PLUGIN),
        ("expire",),
    ),
    Variant(
        "expire",
        "--expire-default=60",
        ("--expire-default=60",),
        ("expire",),
    ),
    Variant(
        "timeout-signal",
        "pytest-timeout --timeout=60 --timeout-method=signal",
        ("--timeout=60", "--timeout-method=signal"),
        ("timeout",),
        "pytest-timeout",
    ),
    Variant(
        "timeout-thread",
        "pytest-timeout --timeout=60 --timeout-method=thread",
        ("--timeout=60", "--timeout-method=thread"),
        ("timeout",),
        "pytest-timeout",
    ),
    Variant(
        "faulthandler", "pytest's -o faulthandler_timeout=60", ("-o", "faulthandler_timeout=60")
    ),
)
KINDS = ("plain", "fixture")


@dataclass
class RunResult:
    pid: int
    wall: float
    cpu: float
    returncode: int | None
    stdout: str
    stderr: str
    error: str | None = None
    others: float = float("nan")  # cores busy with other work during the run (incl. steal)


@dataclass
class LatencyCase:
    key: str
    label: str
    args: tuple[str, ...]
    grace: float | None  # the report can come only after the kill, at D + grace
    samples: list[dict[str, Any]] = field(default_factory=list)


class BenchInterrupted(Exception):
    """SIGTERM arrived."""


# ----------------------------------------------------------------------------- suites

FIXTURE_CONFTEST = """\
import pytest


@pytest.fixture
def value():
    yield 1
"""

PER_TEST_PLUGIN_SOURCE = f'''\
"""Per-test wall and CPU time inside each process; the medians go to a file at the end."""

import json
import os
import statistics
import time

import pytest

_wall = []
_cpu = []


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    wall, cpu = time.perf_counter_ns(), time.process_time_ns()
    try:
        return (yield)
    finally:
        _cpu.append(time.process_time_ns() - cpu)
        _wall.append(time.perf_counter_ns() - wall)


def _median_us(values):
    return statistics.median(values) / 1000 if values else None


def pytest_unconfigure(config):
    record = {{
        "pid": os.getpid(),
        "tests": len(_wall),
        "wall_us": _median_us(_wall),
        "cpu_us": _median_us(_cpu),
    }}
    fd = os.open(os.environ["{PER_TEST_ENV}"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(record) + "\\n").encode())
    finally:
        os.close(fd)
'''

TIMING_PLUGIN_SOURCE = f'''\
"""Records when each test starts and when each report arrives, in every process."""

import json
import os
import time

import pytest

_FILE = os.environ["{TIMING_ENV}"]


def _write(record):
    record["pid"] = os.getpid()
    fd = os.open(_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(record) + "\\n").encode())
    finally:
        os.close(fd)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    now = time.time()
    _write({{"event": "start", "nodeid": item.nodeid, "time": now}})
    return (yield)


def pytest_runtest_logreport(report):
    now = time.time()
    sections = getattr(report.longrepr, "sections", [])
    stacks = "".join(text for title, text, *_ in sections if title.startswith("expired:"))
    _write(
        {{
            "event": "report",
            "nodeid": report.nodeid,
            "when": report.when,
            "outcome": report.outcome,
            "time": now,
            "stacks_chars": len(stacks),
            "stacks_show_test": "in {HUNG_TEST}" in stacks,
            "stacks_processes": stacks.count("--- process "),
        }}
    )
'''

MARKER_PLUGIN_SOURCE = '''\
"""Marks every collected test expires(60): deadlines from markers only."""

import pytest


def pytest_collection_modifyitems(items):
    mark = pytest.mark.expires(60)
    for item in items:
        item.add_marker(mark)
'''

SLEEP_BODY = "    time.sleep(1e6)\n"
CHILDREN = 4
CHILDREN_BODY = f"""\
    parent = os.getpid()
    children = []
    for _ in range({CHILDREN}):
        pid = os.fork()
        if pid == 0:  # a child: sleeps until its parent is gone
            try:
                while os.getppid() == parent:
                    time.sleep(0.05)
            finally:
                os._exit(0)
        children.append(pid)
    try:
        time.sleep(1e6)
    finally:
        for pid in children:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
"""
GIL_BODY = """\
    lib = ctypes.PyDLL(None)  # PyDLL: the GIL stays held during the call
    mutex = ctypes.create_string_buffer(64)  # a zeroed pthread_mutex_t
    lib.pthread_mutex_lock(mutex)
    lib.pthread_mutex_lock(mutex)  # never returns
"""


def write_suite(directory: Path, kind: str, size: int) -> None:
    directory.mkdir(parents=True)
    (directory / "pytest.ini").write_text("[pytest]\n")
    argument = "value" if kind == "fixture" else ""
    if kind == "fixture":
        (directory / "conftest.py").write_text(FIXTURE_CONFTEST)
    for module, start in enumerate(range(0, size, MODULE_SIZE)):
        stop = min(start + MODULE_SIZE, size)
        body = "".join(f"def test_{i}({argument}):\n    pass\n\n\n" for i in range(start, stop))
        (directory / f"test_m{module:03d}.py").write_text(body.rstrip("\n") + "\n")


def write_latency_suite(directory: Path, body: str, marker: bool) -> None:
    directory.mkdir(parents=True)
    (directory / "pytest.ini").write_text("[pytest]\n")
    warm = "@pytest.mark.expires(60)\n" if marker else ""
    hung = f"@pytest.mark.expires({DEADLINE:g})\n" if marker else ""
    (directory / "test_deadline.py").write_text(
        "import ctypes\nimport os\nimport signal\nimport time\n\nimport pytest\n\n\n"
        f"{warm}def test_0_warm():\n    pass\n\n\n"
        f"{hung}def {HUNG_TEST}():\n{body}\n\n"
        "def test_2_after():\n    pass\n"
    )


# ---------------------------------------------------------------------- processes


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (steal included), from /proc/stat."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


class Runner:
    """Runs pytest subprocesses, one at a time, and leaves nothing behind."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.tmp.mkdir()
        # The generated plugins (-p NAME), importable in every run and its worker.
        self.plugins = root / "plugins"
        self.plugins.mkdir()
        (self.plugins / f"{MARKER_PLUGIN}.py").write_text(MARKER_PLUGIN_SOURCE)
        (self.plugins / f"{TIMING_PLUGIN}.py").write_text(TIMING_PLUGIN_SOURCE)
        (self.plugins / f"{PER_TEST_PLUGIN}.py").write_text(PER_TEST_PLUGIN_SOURCE)
        self.notes: list[str] = []
        self._groups: set[int] = set()
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("PYTEST_")  # PYTEST_ADDOPTS, PYTEST_EXPIRE_*, ...
            and key not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE", TIMING_ENV, PER_TEST_ENV)
        }
        self.env["TMPDIR"] = str(self.tmp)
        self.env["PYTHONPATH"] = str(self.plugins)
        self.entry_points = sorted({ep.name for ep in metadata.entry_points(group="pytest11")})

    def blocked(self, keep: Sequence[str]) -> list[str]:
        args: list[str] = []
        for name in self.entry_points:
            if name not in keep:
                args += ["-p", f"no:{name}"]
        return args

    def run(
        self,
        cwd: Path,
        args: Sequence[str],
        timeout: float,
        extra_env: dict[str, str] | None = None,
        label: str = "",
    ) -> RunResult:
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
        env = {**self.env, **(extra_env or {})}
        out_path, err_path = self.root / "stdout.txt", self.root / "stderr.txt"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            busy_before = machine_busy()
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            process = subprocess.Popen(
                command, cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True
            )
            self._groups.add(process.pid)
            error = None
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                error = f"timed out after {timeout:g} s"
                self._kill_group(process.pid)
                process.wait()
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            busy = machine_busy() - busy_before
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        self._check_leftovers(process.pid, label)
        result = RunResult(
            pid=process.pid,
            wall=wall,
            cpu=cpu,
            others=max(0.0, busy - cpu) / wall,
            returncode=process.returncode,
            stdout=out_path.read_text(errors="replace"),
            stderr=err_path.read_text(errors="replace"),
            error=error,
        )
        return result

    def _check_leftovers(self, group: int, label: str) -> None:
        """Note (and kill) what a finished run left: processes and watchdog directories."""
        deadline = time.monotonic() + LEFTOVER_WAIT
        alive = self._members(group)
        while alive and time.monotonic() < deadline:
            time.sleep(0.05)
            alive = self._members(group)
        if alive:
            described = "; ".join(f"{p.pid} {self._cmdline(p)}" for p in alive)
            self.notes.append(
                f"{label}: {len(alive)} process(es) still running {LEFTOVER_WAIT:g} s after "
                f"pytest exited (killed): {described}"
            )
        self._kill_group(group)
        self._groups.discard(group)
        for entry in sorted(self.tmp.iterdir()):
            if entry.name.startswith("pytest-expire-"):
                contents = sorted(p.name for p in entry.iterdir()) if entry.is_dir() else []
                self.notes.append(f"{label}: left {entry.name} in TMPDIR ({', '.join(contents)})")
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    @staticmethod
    def _members(group: int) -> list[psutil.Process]:
        members = []
        for process in psutil.process_iter():
            try:
                if os.getpgid(process.pid) == group and process.status() != psutil.STATUS_ZOMBIE:
                    members.append(process)
            except (OSError, psutil.Error):
                continue
        return members

    @staticmethod
    def _cmdline(process: psutil.Process) -> str:
        try:
            return " ".join(process.cmdline())[:160]
        except psutil.Error:
            return "?"

    @staticmethod
    def _kill_group(group: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)

    def kill_all(self) -> None:
        for group in list(self._groups):
            self._kill_group(group)
        self._groups.clear()


# ------------------------------------------------------------------- measurements


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def passed_count(stdout: str) -> int | None:
    for line in reversed(stdout.splitlines()):
        words = line.replace(",", " ").split()
        for before, word in itertools.pairwise(words):
            if word == "passed" and before.isdigit():
                return int(before)
    return None


Series = dict[tuple[str, int, str], dict[int, float]]  # (kind, size, variant) -> round -> s


@dataclass
class Overhead:
    """Wall and CPU seconds per (kind, size, variant) and round."""

    wall: Series = field(default_factory=dict)
    cpu: Series = field(default_factory=dict)
    others: Series = field(default_factory=dict)  # cores busy with other work

    def add(self, key: tuple[str, int, str], number: int, result: RunResult) -> None:
        self.wall.setdefault(key, {})[number] = result.wall
        self.cpu.setdefault(key, {})[number] = result.cpu
        self.others.setdefault(key, {})[number] = result.others


def measure_overhead(
    runner: Runner,
    suites: dict[tuple[str, int], Path],
    variants: Sequence[Variant],
    rounds: int,
    sizes: tuple[int, int],
    kinds: Sequence[str],
) -> Overhead:
    data = Overhead()
    total = rounds * len(suites) * len(variants)
    done = 0
    for suite in suites.values():  # compile and cache the suites' bytecode, untimed
        runner.run(suite, runner.blocked(()), RUN_TIMEOUT, label="warm-up")
    for number in range(rounds):
        order = list(variants) if number % 2 == 0 else list(reversed(variants))
        for kind in kinds:
            for size in sizes:
                for variant in order:
                    label = f"round {number + 1}, {kind}-{size}, {variant.key}"
                    args = [*runner.blocked(variant.plugins), *variant.args]
                    result = runner.run(suites[kind, size], args, RUN_TIMEOUT, label=label)
                    done += 1
                    passed = passed_count(result.stdout)
                    ok = result.error is None and result.returncode == 0 and passed == size
                    print(
                        f"[{done}/{total}] {label}: {result.wall:.2f} s wall, "
                        f"{result.cpu:.2f} s CPU, others {result.others:.2f} cores"
                        f"{'' if ok else '  FAILED'}",
                        file=sys.stderr,
                        flush=True,
                    )
                    if not ok:
                        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
                        runner.notes.append(
                            f"{label}: run failed ({result.error or result.returncode}, "
                            f"{passed} passed): {' | '.join(tail)}"
                        )
                        continue
                    data.add((kind, size, variant.key), number, result)
    return data


def paired(values: Series, kind: str, size: int, key: str) -> list[tuple[float, float]]:
    """(variant, bare) per round, for the rounds in which both ran."""
    mine, bare = values.get((kind, size, key), {}), values.get((kind, size, "bare"), {})
    return [(mine[number], bare[number]) for number in sorted(mine.keys() & bare.keys())]


def slopes(values: Series, kind: str, key: str, sizes: tuple[int, int]) -> dict[int, float]:
    """Seconds per test, per round: the slope between the two sizes."""
    small, big = sizes
    t_small, t_big = values.get((kind, small, key), {}), values.get((kind, big, key), {})
    return {n: (t_big[n] - t_small[n]) / (big - small) for n in t_small.keys() & t_big.keys()}


def fastest_slope(values: Series, kind: str, key: str, sizes: tuple[int, int]) -> float:
    """Seconds per test between the fastest run of each size."""
    small, big = sizes
    t_small, t_big = values.get((kind, small, key), {}), values.get((kind, big, key), {})
    if not (t_small and t_big):
        return float("nan")
    return (min(t_big.values()) - min(t_small.values())) / (big - small)


def intercepts(values: Series, kind: str, key: str, sizes: tuple[int, int]) -> dict[int, float]:
    """Fixed seconds per run, per round: the intercept at zero tests."""
    small = sizes[0]
    t_small = values.get((kind, small, key), {})
    return {n: t_small[n] - small * slope for n, slope in slopes(values, kind, key, sizes).items()}


def per_round(mine: dict[int, float], bare: dict[int, float], how: str) -> list[float]:
    """Difference or ratio to bare, per round in which both ran."""
    common = sorted(mine.keys() & bare.keys())
    if how == "ratio":
        return [mine[n] / bare[n] for n in common]
    return [mine[n] - bare[n] for n in common]


PerTest = dict[str, dict[int, dict[str, float]]]  # variant -> round -> figure -> µs


def measure_per_test(
    runner: Runner, suite: Path, variants: Sequence[Variant], rounds: int
) -> PerTest:
    """Rounds of one run per variant with the per-test plugin: its medians, per round."""
    out: PerTest = {}
    records_file = runner.root / "per-test.jsonl"
    for number in range(rounds):
        order = list(variants) if number % 2 == 0 else list(reversed(variants))
        for variant in order:
            records_file.unlink(missing_ok=True)
            label = f"per-test medians, round {number + 1}, {suite.name}, {variant.key}"
            args = [*runner.blocked(variant.plugins), "-p", PER_TEST_PLUGIN, *variant.args]
            env = {PER_TEST_ENV: str(records_file)}
            result = runner.run(suite, args, RUN_TIMEOUT, env, label=label)
            try:
                records = [json.loads(line) for line in records_file.read_text().splitlines()]
            except (OSError, ValueError):
                records = []
            tests = next((r for r in records if r["tests"]), None)
            if result.error is not None or result.returncode != 0 or tests is None:
                runner.notes.append(f"{label}: failed ({result.error or result.returncode})")
                continue
            figures = {"wall": tests["wall_us"], "cpu": tests["cpu_us"], "others": result.others}
            out.setdefault(variant.key, {})[number] = figures
            print(f"{label}: {json.dumps(figures)}", file=sys.stderr, flush=True)
    return out


def per_test_table(per_test: PerTest, variants: Sequence[Variant], suite: str) -> list[str]:
    lines = [
        f"### {suite}: per test inside the processes (medians over the tests of a run)",
        "",
        "| variant | wall µs | Δ bare | fastest wall µs | Δ bare's fastest | CPU µs | Δ bare "
        "| others' load | rounds |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    bare = per_test.get("bare", {})
    for variant in variants:
        runs = per_test.get(variant.key, {})
        if not runs:
            continue

        def figure(name: str, runs: dict[int, dict[str, float]] = runs) -> dict[int, float]:
            return {n: f[name] for n, f in runs.items() if name in f}

        wall, cpu = figure("wall"), figure("cpu")
        others = figure("others")
        bare_wall = {n: f["wall"] for n, f in bare.items()}
        bare_cpu = {n: f["cpu"] for n, f in bare.items()}
        fastest = min(wall.values()) if wall else None
        fastest_delta = fastest - min(bare_wall.values()) if fastest and bare_wall else None
        lines.append(
            f"| {variant.key} | {fmt(median(list(wall.values())), 1)} | "
            f"{fmt(median(per_round(wall, bare_wall, 'difference')), 1)} | "
            f"{fmt(fastest, 1)} | {fmt(fastest_delta, 1)} | "
            f"{fmt(median(list(cpu.values())), 1)} | "
            f"{fmt(median(per_round(cpu, bare_cpu, 'difference')), 1)} | "
            f"{fmt(median(list(others.values())))} | {len(runs)} |"
        )
    lines.append("")
    return lines


def measure_latency(runner: Runner, root: Path, samples: int) -> list[LatencyCase]:
    supervised = (f"--expire-default={DEADLINE:g}", f"--expire-grace={GRACE:g}")
    cases = [
        LatencyCase("sleep", "sleep, --expire-default=1", supervised, None),
        LatencyCase(
            "sleep-marker",
            "sleep, marker expires(1) only",
            (f"--expire-grace={GRACE:g}",),
            None,
        ),
        LatencyCase(
            "sleep-children",
            f"sleep, {CHILDREN} forked children, --expire-default=1",
            supervised,
            None,
        ),
        LatencyCase(
            "gil", "GIL held in C, --expire-default=1 --expire-grace=0.5", supervised, GRACE
        ),
    ]
    bodies = {
        "sleep": SLEEP_BODY,
        "sleep-marker": SLEEP_BODY,
        "sleep-children": CHILDREN_BODY,
        "gil": GIL_BODY,
    }
    for case in cases:
        write_latency_suite(
            root / f"latency-{case.key}", bodies[case.key], case.key.endswith("marker")
        )
    timing_file = root / "timing.jsonl"
    for number in range(samples):
        for case in cases:
            timing_file.unlink(missing_ok=True)
            label = f"latency sample {number + 1}, {case.key}"
            args = [*runner.blocked(("expire",)), "-p", TIMING_PLUGIN, *case.args]
            env = {TIMING_ENV: str(timing_file)}
            started = time.time()
            result = runner.run(
                root / f"latency-{case.key}", args, LATENCY_RUN_TIMEOUT, env, label=label
            )
            sample = latency_sample(case, result, timing_file, started)
            print(f"{label}: {json.dumps(sample)}", file=sys.stderr, flush=True)
            if sample.get("error"):
                runner.notes.append(f"{label}: {sample['error']}")
            else:
                case.samples.append(sample)
    return cases


def latency_sample(
    case: LatencyCase, result: RunResult, timing_file: Path, started: float
) -> dict[str, Any]:
    if result.error is not None:
        return {"error": result.error}
    try:
        records = [json.loads(line) for line in timing_file.read_text().splitlines()]
    except (OSError, ValueError) as exc:
        return {"error": f"no timing records ({exc}); stdout: {result.stdout[-300:]!r}"}
    hung = f"test_deadline.py::{HUNG_TEST}"
    after = "test_deadline.py::test_2_after"
    pids = {record["pid"] for record in records if record["event"] == "start"}
    starts = [r for r in records if r["event"] == "start" and r["nodeid"] == hung]
    # In time order: a worker after a kill replays the earlier reports again.
    reports = sorted((r for r in records if r["event"] == "report"), key=lambda r: r["time"])
    failed = [r for r in reports if r["nodeid"] == hung and r["outcome"] == "failed"]
    next_passed = [
        r
        for r in reports
        if r["nodeid"] == after and r["when"] == "call" and r["outcome"] == "passed"
    ]
    if not (starts and failed):
        return {
            "error": f"no start or no failed report of {hung}; stdout: {result.stdout[-300:]!r}"
        }
    deadline = starts[0]["time"] + DEADLINE
    report = failed[0]
    sample: dict[str, Any] = {
        "after_deadline": report["time"] - deadline,
        "after_grace": report["time"] - deadline - case.grace if case.grace is not None else None,
        "stacks_chars": report["stacks_chars"],
        "stacks_show_test": report["stacks_show_test"],
        "stacks_processes": report["stacks_processes"],
        "next_test": next_passed[0]["time"] - report["time"] if next_passed else None,
        "test_processes": len(pids),
        "session": time.time() - started,
        "returncode": result.returncode,
    }
    return sample


# ------------------------------------------------------------------------- output


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or value != value:
        return "n/a"
    return f"{value:.{digits}f}"


def machine() -> dict[str, str]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        timeout_version = metadata.version("pytest-timeout")
    except metadata.PackageNotFoundError:
        timeout_version = "not installed"
    return {
        "checkout": checkout(),
        "cpus": str(os.cpu_count()),
        "cpu": model,
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "python": platform.python_version(),
        "kernel": platform.release(),
        "pytest": metadata.version("pytest"),
        "pytest-timeout": timeout_version,
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def checkout() -> str:
    """The commit of this checkout, and whether the plugin's sources differ from it."""
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "pytest_expire"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return f"{commit}{' + uncommitted changes in pytest_expire/' if changed else ''}"


def overhead_tables(
    data: Overhead, variants: Sequence[Variant], sizes: tuple[int, int], kinds: Sequence[str]
) -> tuple[list[str], dict[str, Any]]:
    small, big = sizes
    lines: list[str] = []
    summary: dict[str, Any] = {}
    for kind in kinds:
        lines += [
            f"### {kind}: {big:,} tests, whole run",
            "",
            "| variant | wall s | wall / bare | fastest / bare's | CPU s | CPU / bare "
            "| others' load | rounds |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for variant in variants:
            walls = list(data.wall.get((kind, big, variant.key), {}).values())
            cpus = list(data.cpu.get((kind, big, variant.key), {}).values())
            others = list(data.others.get((kind, big, variant.key), {}).values())
            wall_ratio = median([v / b for v, b in paired(data.wall, kind, big, variant.key)])
            bare_walls = list(data.wall.get((kind, big, "bare"), {}).values())
            fastest = min(walls) / min(bare_walls) if walls and bare_walls else None
            cpu_ratio = median([v / b for v, b in paired(data.cpu, kind, big, variant.key)])
            summary[f"{kind}/{variant.key}/whole_wall_ratio"] = wall_ratio
            summary[f"{kind}/{variant.key}/whole_cpu_ratio"] = cpu_ratio
            lines.append(
                f"| {variant.key} | {fmt(median(walls))} | {fmt(wall_ratio, 3)} | "
                f"{fmt(fastest, 3)} | {fmt(median(cpus))} | {fmt(cpu_ratio, 3)} | "
                f"{fmt(median(others))} | "
                f"{len(walls)} |"
            )
        lines += [
            "",
            f"### {kind}: per test (slope {small:,} -> {big:,} tests) and fixed cost",
            "",
            "| variant | per test µs | Δ bare µs | / bare | Δ bare µs, fastest runs "
            "| fixed s | Δ bare s | CPU per test µs | Δ bare µs | / bare |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        bare_wall = slopes(data.wall, kind, "bare", sizes)
        bare_cpu = slopes(data.cpu, kind, "bare", sizes)
        bare_fixed = intercepts(data.wall, kind, "bare", sizes)
        for variant in variants:
            wall = slopes(data.wall, kind, variant.key, sizes)
            cpu = slopes(data.cpu, kind, variant.key, sizes)
            fixed = intercepts(data.wall, kind, variant.key, sizes)
            per_test = median(list(wall.values())) * 1e6
            delta = median(per_round(wall, bare_wall, "difference")) * 1e6
            ratio = median(per_round(wall, bare_wall, "ratio"))
            fixed_delta = median(per_round(fixed, bare_fixed, "difference"))
            cpu_per_test = median(list(cpu.values())) * 1e6
            cpu_delta = median(per_round(cpu, bare_cpu, "difference")) * 1e6
            cpu_ratio = median(per_round(cpu, bare_cpu, "ratio"))
            fastest_delta = fastest_slope(data.wall, kind, variant.key, sizes)
            fastest_delta -= fastest_slope(data.wall, kind, "bare", sizes)
            summary[f"{kind}/{variant.key}/per_test_us"] = per_test
            summary[f"{kind}/{variant.key}/per_test_delta_us"] = delta
            summary[f"{kind}/{variant.key}/per_test_ratio"] = ratio
            summary[f"{kind}/{variant.key}/cpu_per_test_delta_us"] = cpu_delta
            summary[f"{kind}/{variant.key}/fixed_delta_s"] = fixed_delta
            lines.append(
                f"| {variant.key} | {fmt(per_test, 0)} | {fmt(delta, 0)} | {fmt(ratio, 3)} | "
                f"{fmt(fastest_delta * 1e6, 0)} | "
                f"{fmt(median(list(fixed.values())))} | {fmt(fixed_delta)} | "
                f"{fmt(cpu_per_test, 0)} | {fmt(cpu_delta, 0)} | {fmt(cpu_ratio, 3)} |"
            )
        lines.append("")
    return lines, summary


def latency_table(cases: Sequence[LatencyCase]) -> tuple[list[str], dict[str, Any]]:
    lines = [
        f"### Deadline -> failed report (D = {DEADLINE:g} s, grace {GRACE:g} s)",
        "",
        "| case | n | after D p50 / max s | after D + grace p50 / max s | stacks in report "
        "| next test after report p50 s |",
        "| --- | ---: | ---: | ---: | --- | ---: |",
    ]
    summary: dict[str, Any] = {}
    for case in cases:
        after = [s["after_deadline"] for s in case.samples]
        grace = [s["after_grace"] for s in case.samples if s["after_grace"] is not None]
        nexts = [s["next_test"] for s in case.samples if s["next_test"] is not None]
        shown = sum(1 for s in case.samples if s["stacks_show_test"])
        processes = sorted({s["stacks_processes"] for s in case.samples})
        dumped = "/".join(str(n) for n in processes) or "?"
        summary[case.key] = {"after_deadline": after, "after_grace": grace}
        grace_cell = f"{fmt(median(grace), 3)} / {fmt(max(grace), 3)}" if grace else "-"
        lines.append(
            f"| {case.label} | {len(case.samples)} | "
            f"{fmt(median(after), 3)} / {fmt(max(after) if after else None, 3)} | {grace_cell} | "
            f"{shown}/{len(case.samples)} show the test, {dumped} process(es) | "
            f"{fmt(median(nexts), 3)} |"
        )
    lines.append("")
    return lines, summary


def verdicts(
    summary: dict[str, Any],
    latency: dict[str, Any],
    have_timeout: bool,
    sizes: tuple[int, int],
    kinds: Sequence[str],
) -> list[str]:
    lines = ["### Targets", ""]
    for kind in kinds:
        if f"{kind}/expire/whole_wall_ratio" not in summary:
            continue
        whole = summary.get(f"{kind}/expire/whole_wall_ratio", float("nan"))
        delta = summary.get(f"{kind}/expire/per_test_delta_us", float("nan"))
        ratio = summary.get(f"{kind}/expire/per_test_ratio", float("nan"))
        lines.append(
            f"- {kind}, whole run of {sizes[1]:,} tests: expire {fmt(whole, 3)}x bare "
            f"(target <= {TARGET_RATIO}x): {'met' if whole <= TARGET_RATIO else 'MISSED'}"
        )
        met = delta <= TARGET_PER_TEST_US and ratio <= TARGET_RATIO
        lines.append(
            f"- {kind}, per test: expire {delta:+.1f} µs, {fmt(ratio, 3)}x bare "
            f"(target <= {TARGET_PER_TEST_US:g} µs and <= {TARGET_RATIO}x): "
            f"{'met' if met else 'MISSED'}"
        )
        if have_timeout:
            signal_whole = summary.get(f"{kind}/timeout-signal/whole_wall_ratio", float("nan"))
            signal_delta = summary.get(f"{kind}/timeout-signal/per_test_delta_us", float("nan"))
            lines.append(
                f"- {kind}, below pytest-timeout signal in the same run: whole run "
                f"{fmt(whole, 3)} vs {fmt(signal_whole, 3)} "
                f"({'met' if whole < signal_whole else 'MISSED'}), per test "
                f"{delta:+.1f} vs {signal_delta:+.1f} µs "
                f"({'met' if delta < signal_delta else 'MISSED'})"
            )
    for key, values in latency.items():
        figures = values["after_grace"] or values["after_deadline"]
        if not figures:
            continue
        reference = "D + grace" if values["after_grace"] else "D"
        worst = max(figures)
        lines.append(
            f"- deadline -> failed report, {key}: max {fmt(worst, 3)} s after {reference} "
            f"(target <= {TARGET_LATENCY:g} s): {'met' if worst <= TARGET_LATENCY else 'MISSED'}"
        )
    lines.append("")
    return lines


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0] if __doc__ else None,
    )
    parser.add_argument(
        "--quick", action="store_true", help="small suites, one round, one latency sample"
    )
    parser.add_argument("--rounds", type=int, help="rounds of every variant (3; quick: 1)")
    parser.add_argument(
        "--sizes", type=int, nargs=2, metavar=("SMALL", "BIG"), help="suite sizes (500 5000)"
    )
    parser.add_argument(
        "--per-test-rounds",
        type=int,
        help="rounds of in-process per-test timing (small suite, first kind; 8; quick: 1)",
    )
    parser.add_argument("--samples", type=int, help="latency sessions per case (5; quick: 1)")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="VARIANT",
        choices=[v.key for v in VARIANTS],
        help="measure these variants (and bare) only",
    )
    parser.add_argument(
        "--kinds", nargs="+", choices=KINDS, help="suites to run (both; quick: plain)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write every sample as JSON")
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.sizes is None:
        args.sizes = [30, 300] if args.quick else [500, 5000]
    if args.kinds is None:
        args.kinds = ["plain"] if args.quick else list(KINDS)
    if args.samples is None:
        args.samples = 1 if args.quick else 5
    if args.per_test_rounds is None:
        args.per_test_rounds = 1 if args.quick else 8
    small, big = args.sizes
    if not 0 < small < big:
        parser.error("--sizes: need 0 < SMALL < BIG")
    if args.rounds < 1 or args.samples < 0 or args.per_test_rounds < 0:
        parser.error("--rounds must be >= 1, --samples and --per-test-rounds >= 0")
    return args


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise BenchInterrupted("SIGTERM")


def installed(distribution: str) -> bool:
    try:
        metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes: tuple[int, int] = (args.sizes[0], args.sizes[1])
    signal.signal(signal.SIGTERM, _on_sigterm)
    began = time.monotonic()
    info = machine()
    root = Path(tempfile.mkdtemp(prefix="suite-overhead-"))
    runner = Runner(root)
    try:
        wanted = [v for v in VARIANTS if not args.only or v.key in ("bare", *args.only)]
        variants = [v for v in wanted if v.needs is None or installed(v.needs)]
        skipped = [v for v in wanted if v not in variants]
        for variant in skipped:
            runner.notes.append(
                f"{variant.key}: skipped, {variant.needs} is not installed "
                f"(`pip install {variant.needs}` to measure it; it is not a dependency)"
            )
        suites: dict[tuple[str, int], Path] = {}
        for kind in args.kinds:
            for size in sizes:
                suites[kind, size] = root / f"{kind}-{size}"
                write_suite(suites[kind, size], kind, size)
        data = measure_overhead(runner, suites, variants, args.rounds, sizes, args.kinds)
        per_test_suite = suites[args.kinds[0], sizes[0]]
        per_test = measure_per_test(runner, per_test_suite, variants, args.per_test_rounds)
        cases = measure_latency(runner, root, args.samples)
    except (KeyboardInterrupt, BenchInterrupted):
        print("interrupted; killing what was started", file=sys.stderr)
        return 130
    finally:
        runner.kill_all()
        shutil.rmtree(root, ignore_errors=True)
    info["load after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    info["duration"] = f"{time.monotonic() - began:.0f} s"

    lines = ["## Machine", ""]
    lines += [f"- {key}: {value}" for key, value in info.items()]
    blocked = ", ".join(runner.entry_points)
    lines += [f"- pytest11 entry points (blocked unless measured): {blocked}", ""]
    lines += [
        f"Rounds: {args.rounds}; sizes {sizes[0]:,} and {sizes[1]:,}; "
        f"ratios are medians of per-round ratios to bare. Variants:",
        "",
    ]
    lines += [f"- {v.key}: {v.label}" for v in variants]
    lines.append("")
    table, summary = overhead_tables(data, variants, sizes, args.kinds)
    lines += table
    if per_test:
        lines += per_test_table(per_test, variants, per_test_suite.name)
    table, latency = latency_table(cases)
    if args.samples:
        lines += table
    have_timeout = any(v.key == "timeout-signal" for v in variants)
    if args.quick:
        lines += ["### Targets", "", "Not judged with --quick: too few tests and rounds.", ""]
    else:
        lines += verdicts(summary, latency, have_timeout, sizes, args.kinds)
    lines += ["### Notes", ""]
    lines += [f"- {note}" for note in runner.notes] or ["- none: no leftovers, no failed run"]
    print("\n".join(lines))

    if args.json:
        payload = {
            "machine": info,
            "sizes": sizes,
            "rounds": args.rounds,
            "wall": {"/".join(map(str, k)): v for k, v in data.wall.items()},
            "cpu": {"/".join(map(str, k)): v for k, v in data.cpu.items()},
            "others": {"/".join(map(str, k)): v for k, v in data.others.items()},
            "per_test": per_test,
            "version": info.get("checkout"),
            "summary": summary,
            "latency": {case.key: case.samples for case in cases},
            "notes": runner.notes,
        }
        Path(args.json).write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
