"""The benchmarks still run: their quickest modes, no timing checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "timer_servers.py"


def test_benchmark_runs_and_prints_a_row(tmp_path: Path) -> None:
    # The JSON path is unique to this test and is on the command line of every
    # process the script forks, which lets us look for leftovers afterwards.
    results = tmp_path / "bench-smoke.json"
    command = [sys.executable, str(SCRIPT), "--quick", "--only", "local"]
    command += ["--samples", "3", "--seconds", "0.2", "--no-torch", "--json", str(results)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| local |")]
    assert len(rows) == 1, done.stdout
    assert "(n=3)" in rows[0], rows[0]
    data = json.loads(results.read_text())
    (row,) = data["rows"]
    assert row["name"] == "local"
    assert row["error"] is None and row["notes"] == [], row
    assert len(row["latency_0"]) == len(row["latency_others"]) == 3

    leftovers = []
    for process in psutil.process_iter(["cmdline"]):
        if str(results) in " ".join(process.info["cmdline"] or []):
            leftovers.append(process)
    _, alive = psutil.wait_procs(leftovers, timeout=2)
    assert not alive, f"the benchmark left processes behind: {[p.pid for p in alive]}"


SUITE_SCRIPT = SCRIPT.with_name("suite_overhead.py")


def test_suite_overhead_benchmark_runs_every_part() -> None:
    command = [sys.executable, str(SUITE_SCRIPT), "--quick", "--sizes", "5", "20"]
    command += ["--only", "expire", "--rounds", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert sum(line.startswith("| expire |") for line in lines) == 3, done.stdout
    latency = [line for line in lines if line.startswith(("| sleep", "| GIL"))]
    assert len(latency) == 4, done.stdout
    # Every case produced its one sample, with the stacks of the hung test.
    assert all(" | 1 | " in line and "1/1 show the test" in line for line in latency), latency
    assert "- none: no leftovers, no failed run" in lines, done.stdout


def test_xdist_benchmark_runs_every_variant() -> None:
    script = SCRIPT.parent / "xdist_overhead.py"
    command = [sys.executable, str(script), "--tests", "20", "--rounds", "1", "--no-warm-up"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")][2:]
    assert [row.split("|")[1].strip() for row in rows][:3] == ["bare", "expire-idle", "expire"]


def test_coverage_flush_benchmark_prints_both_writes() -> None:
    pytest.importorskip("coverage")
    script = SCRIPT.parent / "coverage_flush.py"
    command = [sys.executable, str(script), "--quick", "--tests", "5"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows[1:]] == [
        "test_ended()",
        "Coverage.get_data()",
    ], done.stdout
