"""A torch.distributed collective that never completes: its ranks are dumped and ended.

The hang the project exists for: two ranks spawned with
``torch.multiprocessing.spawn``, gloo on CPU, rank 0 in ``all_reduce`` and
rank 1 never entering it, and a test joining them. Their process group's
own timeout is 600 s, so that only the plugin ends the hang. Each scenario
is a real pytest session in a subprocess, followed by a test that must run
and pass and by one that checks the ranks were gone before it ran (not only
when the session ended). Every process of the session carries a mark in its
environment and has a temp directory of its own, so that what it leaves
behind is found wherever it went (and killed, by PID).

torch is imported here only by the tests that run (not at collection), as
its import costs a second and some 200 MB: an xdist worker that runs none
of them does not pay for it.
"""

from __future__ import annotations

import re
import shutil
import textwrap
import warnings

import pytest
from snippets import FOLLOWER

#: The deadlines a session is tried with, until the ranks reach their collective
#: before it: spawning two interpreters that import torch and join a process group
#: takes under 1 s on an idle machine, and more than 6 s on one busy with other
#: sessions (CPU-bound: both ranks import torch at once).
DEADLINES = (3, 6, 12, 24)
ARGS = ("--expire-grace=1", "-rA", "-p", "no:randomly")
#: Each scenario in one pytest process, and under pytest-xdist (where the controller hosts
#: the watchdog, and a killed worker is replaced); ``loadfile`` keeps the tests after the
#: hang after it, on one worker.
SERIALLY_AND_UNDER_XDIST = pytest.mark.parametrize(
    "mode",
    [
        pytest.param((), id="serial"),
        pytest.param(("-n", "2", "--dist", "loadfile"), id="xdist"),
    ],
)
TEST = "test_suite.py::test_collective_never_completes"

RANKS = """
import datetime, os, signal, threading
from pathlib import Path

import psutil
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

#: Each rank writes its PID here once it is where it hangs.
PIDS = Path(__file__).with_name("rank_pids")


def rank_blocked_in_all_reduce():
    dist.all_reduce(torch.ones(1))


def rank_that_never_enters():
    threading.Event().wait()


def run_rank(rank, store):
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=600),
    )
    (PIDS / str(rank)).write_text(str(os.getpid()))
    if rank == 0:
        rank_blocked_in_all_reduce()
    else:
        rank_that_never_enters()


def spawn_ranks(tmp_path):
    PIDS.mkdir()
    return mp.spawn(run_rank, args=(str(tmp_path / "store"),), nprocs=2, join=False)
"""

NOT_IN_PLACE = "not every rank was in place at the deadline"

#: After the follower: the ranks were ended with their test, not at the session's end.
RANKS_ARE_GONE = f"""

def test_the_ranks_are_gone():
    pids = {{path.name: int(path.read_text()) for path in PIDS.iterdir()}}
    assert sorted(pids) == ["0", "1"], f"{NOT_IN_PLACE}: {{pids}}"
    for rank, pid in pids.items():
        try:
            alive = psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            alive = False
        assert not alive, f"rank {{rank}} (process {{pid}}) outlived its test"
"""


@pytest.fixture(scope="module", autouse=True)
def _torch_with_gloo() -> None:
    """Skip where torch, torch.distributed or its gloo backend is missing; import it once
    here, so that each session's own imports are warm (on disk) and quick."""
    with warnings.catch_warnings():
        # torch warns at import when numpy is missing; this suite turns warnings into errors.
        warnings.simplefilter("ignore")
        pytest.importorskip("torch", reason="torch is not installed (the CPU wheel suffices)")
        import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("this torch build has no torch.distributed")
    if not dist.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")


def run(pytester: pytest.Pytester, test: str, *args: str) -> tuple[pytest.RunResult, int]:
    """A session of ``test`` (with the ranks' code at hand), the follower and the check
    that the ranks are gone, with ``args``; its result and the deadline it ran with.

    What is checked needs the ranks in their collective at the deadline: a session whose
    ranks were still starting (a busy machine) is run again with a longer deadline.
    """
    if "-n" in args:
        pytest.importorskip("xdist")
    pytester.makepyfile(
        test_suite=RANKS + textwrap.dedent(test) + FOLLOWER + textwrap.dedent(RANKS_ARE_GONE)
    )
    for deadline in DEADLINES:
        shutil.rmtree(pytester.path / "rank_pids", ignore_errors=True)
        result = pytester.runpytest_subprocess(
            f"--expire-default={deadline}", *ARGS, *args, timeout=60 + 4 * deadline
        )
        if NOT_IN_PLACE not in result.stdout.str():
            return result, deadline
    pytest.fail(f"the ranks never reached their collective, even in {deadline} s")


def expired_stacks(output: str, deadline: int) -> dict[str, str]:
    """The stacks in the expired section of ``output``, by process header
    (``--- process PID: command line ---``)."""
    sections: dict[str, str] = {}
    header = None
    inside = False
    for line in output.splitlines():
        if re.fullmatch(rf"-+ expired: {re.escape(TEST)} after {deadline} s -+", line):
            inside = True
        elif inside and line.startswith("--- process "):
            header = line
            sections[header] = ""
        elif inside and re.fullmatch(r"(-+ .* -+|=+ .* =+)", line):
            break
        elif header is not None:
            sections[header] += line + "\n"
    return sections


def the_stacks_with(stacks: dict[str, str], frame: str) -> tuple[int, str]:
    """The PID and stacks of the one process whose stacks show the function ``frame``.

    In faulthandler's format: dumped by the process itself, which joined the session
    as it started (py-spy, reading it from outside, writes ``frame (file:line)``).
    """
    found = [
        (header, text)
        for header, text in stacks.items()
        if re.search(rf", line \d+ in {frame}$", text, re.MULTILINE)
    ]
    assert len(found) == 1, f"{frame} is in the stacks of {len(found)} processes: {stacks}"
    ((header, text),) = found
    match = re.match(r"--- process (\d+): ", header)
    assert match is not None, header
    return int(match.group(1)), header + "\n" + text


def assert_ranks_dumped(result: pytest.RunResult, deadline: int) -> tuple[int, int]:
    """The expired section shows rank 0 in all_reduce, rank 1 where it waits instead, and
    the test joining them; the ranks' PIDs."""
    stacks = expired_stacks(result.stdout.str(), deadline)
    _, test = the_stacks_with(stacks, "test_collective_never_completes")
    assert re.search(r"spawn\.py\", line \d+ in join$", test, re.MULTILINE), test
    rank_0, blocked = the_stacks_with(stacks, "rank_blocked_in_all_reduce")
    assert "spawn_main" in blocked.partition("\n")[0], blocked
    assert re.search(r"distributed_c10d\.py\", line \d+ in all_reduce$", blocked, re.MULTILINE), (
        blocked
    )
    rank_1, never_entered = the_stacks_with(stacks, "rank_that_never_enters")
    assert "spawn_main" in never_entered.partition("\n")[0], never_entered
    return rank_0, rank_1


@SERIALLY_AND_UNDER_XDIST
def test_ranks_of_an_interrupted_test_are_dumped_and_ended(
    pytester: pytest.Pytester, marked: str, mode: tuple[str, ...]
) -> None:
    # The test's interrupt works: it fails, and its ranks, still hung, are
    # ended after its teardown (multiprocessing would join them at exit).
    result, deadline = run(
        pytester,
        """

        def test_collective_never_completes(tmp_path):
            ranks = spawn_ranks(tmp_path)
            while not ranks.join():
                pass
        """,
        *mode,
    )
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([f"*{TEST} expired after {deadline} s (in call)*"])
    ranks = assert_ranks_dumped(result, deadline)
    result.stdout.fnmatch_lines([f"*- processes {TEST} left running after teardown -*"])
    for pid in ranks:
        result.stdout.fnmatch_lines(
            [f"process {pid} (*spawn_main*), started during {TEST} (call): ended by SIGTERM"]
        )
    assert "processes the tests left running" not in result.stdout.str()


@SERIALLY_AND_UNDER_XDIST
def test_ranks_of_a_killed_test_are_dumped_and_killed(
    pytester: pytest.Pytester, marked: str, mode: tuple[str, ...]
) -> None:
    # The test's process blocks every signal once the ranks run (so they do not
    # inherit the mask): no interrupt lands, it is killed, and its ranks with it.
    result, deadline = run(
        pytester,
        """

        def test_collective_never_completes(tmp_path):
            ranks = spawn_ranks(tmp_path)
            signal.pthread_sigmask(signal.SIG_BLOCK, range(1, signal.NSIG))
            while not ranks.join():
                pass
        """,
        *mode,
    )
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            f"{TEST} expired after {deadline} s (in call); it did not stop when interrupted "
            "and its process was killed 1 s later"
        ]
    )
    assert_ranks_dumped(result, deadline)
    assert "processes the tests left running" not in result.stdout.str()
