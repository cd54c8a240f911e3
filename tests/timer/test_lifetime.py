"""die_with_parent: a process that must not outlive its parent, with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest
from processes import read_line, wait_until

from pytest_expire.timer import die_with_parent
from pytest_expire.timer.lifetime import die_with_parent as in_its_module

# A parent that starts a child calling die_with_parent, prints the child's PID,
# then sleeps until it is killed; the child prints "armed" once it called it.
PARENT = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid())])
    print(child.pid, flush=True)
    time.sleep(60)
    """
)
CHILD = textwrap.dedent(
    """
    import signal, sys, time
    from pytest_expire.timer import die_with_parent
    die_with_parent(int(sys.argv[1]), signal.SIGKILL)
    print("armed", flush=True)
    time.sleep(60)
    """
)


def test_is_public_in_the_package_and_its_module() -> None:
    assert die_with_parent is in_its_module


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_the_child_dies_when_its_parent_is_killed(
    procs: list[subprocess.Popen[bytes]],
) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD], stdout=subprocess.PIPE, stdin=subprocess.PIPE
    )
    procs.append(parent)
    child = psutil.Process(int(read_line(parent)))
    assert read_line(parent) == "armed"
    os.kill(parent.pid, signal.SIGKILL)  # no cleanup code of the parent runs
    parent.wait(10)
    # The child was reparented; it is gone (or a zombie of its new parent).
    wait_until(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, timeout=10)


def test_a_parent_already_gone_ends_the_caller_at_once() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(10)
    # In a process of its own: the call changes its caller's parent-death signal.
    code = (
        "import signal, sys\n"
        "from pytest_expire.timer import die_with_parent\n"
        f"die_with_parent({gone.pid}, signal.SIGKILL)\n"
        "print('still here')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30
    )
    assert (result.returncode, result.stdout) == (0, "")
