"""SIGINT ends a supervised session as it ends pytest's: interrupted, reported, exit status 2.

A terminal's Ctrl-C (and ``timeout -s INT``) signals the whole process
group: the worker gets it too and must not get it twice. A SIGINT sent to
the process pytest was started as, alone (``kill -INT``, ``timeout
--foreground -s INT``, several CI runners), must reach the worker.
"""

from __future__ import annotations

import os
import signal
import xml.etree.ElementTree as ET

import psutil
import pytest
from snippets import pytest_job, wait_until_exists


@pytest.mark.parametrize("to_the_group", [True, False], ids=["process group", "pytest alone"])
def test_sigint_ends_the_session_as_interrupted(
    pytester: pytest.Pytester, to_the_group: bool
) -> None:
    started = pytester.path / "started"
    pytester.makepyfile(
        test_suite=f"""
        import time

        def test_passes():
            pass

        def test_waits():
            open({str(started)!r}, "w").close()
            time.sleep(3600)
        """
    )
    with pytest_job(
        pytester.path,
        "--expire-default=600",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        "--junitxml=report.xml",
        output=True,
    ) as session:
        wait_until_exists(started, 60)
        descendants = psutil.Process(session.pid).children(recursive=True)
        if to_the_group:
            os.killpg(session.pid, signal.SIGINT)
        else:
            os.kill(session.pid, signal.SIGINT)
        output, _ = session.communicate(timeout=60)
    assert session.returncode == pytest.ExitCode.INTERRUPTED, output
    assert output.count("!!! KeyboardInterrupt !!!") == 1, output  # interrupted once
    assert "1 passed" in output
    cases = ET.parse(pytester.path / "report.xml").getroot().iter("testcase")
    assert "test_passes" in {case.get("name") for case in cases}
    _, alive = psutil.wait_procs(descendants, timeout=10)
    assert not alive
