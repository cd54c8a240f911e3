"""What each process of a session imports: every process pays for its imports at every run."""

from __future__ import annotations

import subprocess
import sys


def modules_after(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``statement``."""
    code = f"{statement}\nimport sys\nprint(' '.join(sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(result.stdout.split())


def test_the_watchdog_process_does_not_import_pytest() -> None:
    # It starts while pytest collects, and a session's first test waits for it.
    modules = modules_after("import pytest_expire.watchdog_main")
    assert "pytest_expire.diagnose" in modules
    assert not {name for name in modules if name.split(".")[0] in ("pytest", "_pytest")}


def test_the_plugin_leaves_the_watchdogs_needs_to_the_watchdog() -> None:
    # psutil, multiprocessing and ctypes serve the watchdog and the timer
    # servers; a pytest process only arms timers.
    modules = modules_after("import pytest_expire.plugin")
    assert "pytest_expire.timer.unix_socket_timer" in modules
    assert not modules & {"psutil", "multiprocessing", "ctypes", "pytest_expire.diagnose"}
