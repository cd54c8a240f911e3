"""The supervising side: the pytest process the user started survives the kill of a hung test.

When a test does not stop after its interrupt, the watchdog kills the
process that runs it. So that this never ends the user's session, the
process the user started runs no test itself: it starts a worker
(``worker.py``), a pytest session with the same arguments, and replays the
worker's events into its own hooks, so the terminal, JUnit XML and every
other reporter here see the run as if it happened here. If the worker is
killed in the middle of a test, the supervisor reports that test as expired,
with the stacks the watchdog took, and starts a new worker that skips the
tests that already ran. The run ends with one summary, one JUnit XML and
one exit code. (pytest-xdist replaces crashed workers the same way.)
"""

from __future__ import annotations

import builtins
import json
import os
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Any

import pytest

from pytest_expire.settings import format_seconds
from pytest_expire.watchdog import SessionWatchdog, read_diagnosis
from pytest_expire.worker import DONE_FILE_ENV, EVENTS_FD_ENV, SUPERVISOR_PID_ENV

# Exit codes that mean the tests ran (or there were none): this process
# derives its own from the reports it replayed.
_TEST_OUTCOMES = (
    pytest.ExitCode.OK,
    pytest.ExitCode.TESTS_FAILED,
    pytest.ExitCode.NO_TESTS_COLLECTED,
)


@dataclass
class _WorkerRun:
    """What one worker did: the tests it finished, the one it was in, how it ended."""

    finished: list[str] = field(default_factory=list)
    running: tuple[str, tuple[str, int | None, str]] | None = None
    phases_reported: list[str] = field(default_factory=list)
    deadline: float | None = None
    exitstatus: int | None = None


class Supervisor:
    """Runs the session's tests in worker processes and reports them here."""

    def __init__(self, config: pytest.Config, watchdog: SessionWatchdog, grace: float) -> None:
        self.config = config
        self.watchdog = watchdog
        self.grace = grace

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection(self, session: pytest.Session) -> bool:
        return True  # the workers collect

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        done: list[str] = []
        first = True
        while True:
            run = self._run_worker(session, done, replay_collection=first)
            first = False
            done.extend(run.finished)
            if run.exitstatus is not None:
                if run.exitstatus == pytest.ExitCode.INTERRUPTED:
                    raise session.Interrupted("the worker session was interrupted")
                if run.exitstatus not in _TEST_OUTCOMES:
                    # A usage or internal error: the worker said why on stderr.
                    pytest.exit(
                        f"the worker session ended with exit code {run.exitstatus}", run.exitstatus
                    )
                return True
            if run.running is None:
                pytest.exit("the test session's worker process ended before it finished", 3)
            self._report_killed(run)
            done.append(run.running[0])

    def _run_worker(
        self, session: pytest.Session, done: list[str], replay_collection: bool
    ) -> _WorkerRun:
        read_end, write_end = os.pipe()
        with tempfile.NamedTemporaryFile(
            "w", prefix="done-", dir=self.watchdog.directory, delete=False
        ) as done_file:
            done_file.write("\n".join(done))
        env = {
            **os.environ,
            EVENTS_FD_ENV: str(write_end),
            DONE_FILE_ENV: done_file.name,
            SUPERVISOR_PID_ENV: str(os.getpid()),
        }
        args = [sys.executable, "-m", "pytest", *self.config.invocation_params.args]
        # The worker gets this process's real standard streams: what its
        # tests print uncaptured, and a debugger's prompt, reach the user.
        capture = self.config.pluginmanager.getplugin("capturemanager")
        capture.suspend_global_capture(in_=True)
        try:
            try:
                process = subprocess.Popen(
                    args, cwd=self.config.invocation_params.dir, env=env, pass_fds=[write_end]
                )
            finally:
                os.close(write_end)
            run = _WorkerRun()
            with os.fdopen(read_end, encoding="utf-8") as events:
                for line in events:
                    self._dispatch(session, json.loads(line), run, replay_collection)
            process.wait()
        finally:
            capture.resume_global_capture()
        os.unlink(done_file.name)
        return run

    def _dispatch(
        self,
        session: pytest.Session,
        event: dict[str, Any],
        run: _WorkerRun,
        replay_collection: bool,
    ) -> None:
        hook = self.config.hook
        kind = event["event"]
        if kind == "collectreport":
            if replay_collection:
                hook.pytest_collectreport(report=self._report(event["report"]))
        elif kind == "collected":
            if replay_collection:
                session.testscollected = event["count"]
                hook.pytest_collection_finish(session=session)
        elif kind == "armed":
            run.deadline = event["seconds"]
        elif kind == "logstart":
            run.running = (event["nodeid"], tuple(event["location"]))
            run.phases_reported = []
            hook.pytest_runtest_logstart(nodeid=event["nodeid"], location=tuple(event["location"]))
        elif kind == "logreport":
            report = self._report(event["report"])
            run.phases_reported.append(report.when)
            hook.pytest_runtest_logreport(report=report)
        elif kind == "logfinish":
            hook.pytest_runtest_logfinish(nodeid=event["nodeid"], location=tuple(event["location"]))
            run.finished.append(event["nodeid"])
            run.running = None
            run.deadline = None
        elif kind == "warning":
            hook.pytest_warning_recorded.call_historic(
                kwargs={
                    "warning_message": _warning_message(event),
                    "when": event["when"],
                    "nodeid": event["nodeid"],
                    "location": tuple(event["location"]) if event["location"] else None,
                }
            )
        elif kind == "sessionfinish":
            run.exitstatus = event["exitstatus"]

    def _report(self, data: dict[str, Any]) -> Any:
        return self.config.hook.pytest_report_from_serializable(config=self.config, data=data)

    def _report_killed(self, run: _WorkerRun) -> None:
        assert run.running is not None
        nodeid, location = run.running
        phase = next(
            (p for p in ("setup", "call", "teardown") if p not in run.phases_reported), "teardown"
        )
        seconds = format_seconds(run.deadline) if run.deadline is not None else "its deadline"
        message = (
            f"{nodeid} expired after {seconds} (in {phase}); it did not stop when interrupted "
            f"and its process was killed {format_seconds(self.grace)} later"
        )
        report = pytest.TestReport(
            nodeid,
            location,
            keywords={},
            outcome="failed",
            longrepr=message,
            when=phase,  # type: ignore[arg-type]
            sections=[
                (
                    f"expired: {nodeid} after {seconds}",
                    read_diagnosis(self.watchdog.directory, nodeid, killed=True),
                )
            ],
        )
        hook = self.config.hook
        hook.pytest_runtest_logreport(report=report)
        hook.pytest_runtest_logfinish(nodeid=nodeid, location=location)


def _warning_message(event: dict[str, Any]) -> warnings.WarningMessage:
    """The worker's warning, rebuilt: a built-in category by name, else UserWarning."""
    category = getattr(builtins, event["category"], None)
    if not (isinstance(category, type) and issubclass(category, Warning)):
        category = UserWarning
    return warnings.WarningMessage(
        category(event["message"]), category, event["filename"], event["lineno"]
    )
