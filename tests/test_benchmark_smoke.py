"""The timer-server benchmark still runs: one pair, its quickest mode, no timing checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil

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
