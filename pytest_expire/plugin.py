"""The pytest plugin: every test under a deadline, watched from outside.

Registered under the entry point name ``expire`` (so ``-p no:expire`` turns it
off). This module holds the hooks; the pieces live beside it:
``settings`` (deadlines from markers, options, environment, ini),
``watchdog`` (the session's watchdog process), ``interrupt`` (failing the
expired test in its process) and ``stacks`` (dumps taken from outside).
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator
from pathlib import Path

import pytest

from pytest_expire import interrupt, stacks
from pytest_expire.settings import (
    DEADLINE,
    ENV_DEFAULT,
    MARKER,
    Settings,
    argparse_seconds,
    deadline_for,
    format_seconds,
    from_config,
)
from pytest_expire.supervisor import Supervisor, may_supervise
from pytest_expire.timer.unix_socket_timer import ADDRESS_ENV
from pytest_expire.watchdog import (
    DIRECTORY_ENV,
    OWNER_ENV,
    SessionWatchdog,
    WatchdogClient,
    read_diagnosis,
    xdist_worker_path,
)
from pytest_expire.worker import WorkerPlugin
from pytest_expire.xdist_support import CrashReporter, is_controller

PLUGIN_NAME = "expire-session"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("expire", "test deadlines (pytest-expire)")
    group.addoption(
        "--expire-default",
        type=argparse_seconds,
        default=None,
        metavar="SECONDS",
        help=(
            "deadline of every test without an expires marker, covering its setup, call "
            f"and teardown; 0 disables. Overrides ${ENV_DEFAULT} and the ini expire_default."
        ),
    )
    group.addoption(
        "--expire-grace",
        type=argparse_seconds,
        default=None,
        metavar="SECONDS",
        help="time between interrupting an expired test and killing its process (default 5).",
    )
    parser.addini(
        "expire_default", "default test deadline in seconds (0 or empty: none)", default=""
    )
    parser.addini(
        "expire_grace", "seconds between interrupting an expired test and killing it", default=""
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(seconds): fail the test if its setup, call and teardown take longer than "
        "seconds (also expires(after=seconds)); 0 or None disables the deadline.",
    )
    settings = from_config(config)
    plugin = ExpirePlugin(config, settings)
    config.pluginmanager.register(plugin, PLUGIN_NAME)
    if is_controller(config) and settings.default is not None:
        # Started here, so that every worker inherits its address.
        plugin.watchdog = SessionWatchdog()
        config.pluginmanager.register(CrashReporter(plugin.watchdog), "expire-xdist")
    elif may_supervise(config):
        if settings.default is not None:
            # Every test has a deadline: the watchdog starts while pytest collects.
            plugin.watchdog = SessionWatchdog()
        config.pluginmanager.register(Supervisor(plugin, settings.grace), "expire-supervisor")


class ExpirePlugin:
    """The per-session state: settings, the watchdog, the running test's deadline."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        # Owned by this process: its watchdog, when this process started one.
        self.watchdog: SessionWatchdog | None = None
        self._client: WatchdogClient | None = None
        # The directory shared with the watchdog, once connected to it.
        self.directory: Path | None = None
        #: In a supervised worker: what records each test for the supervisor.
        self.recorder: WorkerPlugin | None = None
        self._per_test = _PerTest(self)

    def pytest_report_header(self) -> str:
        return self.settings.describe()

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        # Once per test, here: a bad marker is a usage error before any test runs.
        armed = self.settings.default is not None
        for item in items:
            seconds = item.stash[DEADLINE] = deadline_for(item, self.settings)
            armed = armed or seconds is not None
        # A session in which no test has a deadline pays nothing per test.
        if armed and not self.config.pluginmanager.is_registered(self._per_test):
            self.config.pluginmanager.register(self._per_test, f"{PLUGIN_NAME}-tests")

    def pytest_unconfigure(self) -> None:
        if self._client is not None:
            self._client.close()
            interrupt.uninstall()
        if self.watchdog is not None:
            self.watchdog.stop()

    def connect(self) -> WatchdogClient:
        """The watchdog: this process's (or its supervisor's), a parent's, or a new one."""
        if self._client is None:
            address = os.environ.get(ADDRESS_ENV)
            directory = os.environ.get(DIRECTORY_ENV)
            # Only a worker uses its parent's watchdog: a pytest run inside a
            # test (pytester, say) inherits the environment but is a session
            # of its own.
            if self.watchdog is None and not (
                address and directory and str(os.getppid()) == os.environ.get(OWNER_ENV)
            ):
                self.watchdog = SessionWatchdog()
            if self.watchdog is not None:
                self.watchdog.wait_ready()
                address, directory = self.watchdog.address, str(self.watchdog.directory)
            assert address is not None and directory is not None
            self._client = WatchdogClient(address)
            self.directory = Path(directory)
            workerinput = getattr(self.config, "workerinput", None)
            if workerinput is not None:
                # For the controller, which learns of a kill only as a crash of this worker.
                xdist_worker_path(self.directory, workerinput["workerid"]).write_text(
                    str(os.getpid())
                )
            stacks.register(self.directory)
            interrupt.on_debugger = self.disarm
            interrupt.install()
        return self._client

    def pytest_enter_pdb(self) -> None:
        """A test in the debugger has no deadline: someone is looking at it."""
        deadline = interrupt.current
        if deadline is not None and not deadline.paused:
            deadline.paused = True
            self.disarm()

    def disarm(self) -> None:
        """Release this process's timers, if any are armed (see ``WatchdogClient``)."""
        if self._client is not None:
            self._client.disarm()

    def pytest_leave_pdb(self) -> None:
        """Back from the debugger, the test gets its whole deadline again."""
        deadline = interrupt.current
        if deadline is not None and self._client is not None and deadline.paused:
            deadline.expiration_time = time.time() + deadline.seconds
            deadline.paused = False
            self._client.arm(deadline.expiration_time, self.settings.grace)

    def diagnosis(self, deadline: interrupt.Deadline) -> str:
        assert self.directory is not None
        parts = [read_diagnosis(self.directory, os.getpid())]
        parts.extend(f"asyncio tasks:\n{note}" for note in deadline.notes)
        return "\n".join(part for part in parts if part)


class _PerTest:
    """The hooks that run for every test: registered only if some test has a deadline."""

    def __init__(self, plugin: ExpirePlugin) -> None:
        self.plugin = plugin

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        try:
            seconds = item.stash[DEADLINE]
        except KeyError:  # an item that no collection hook saw
            seconds = deadline_for(item, self.plugin.settings)
        if self.plugin.recorder is not None:
            self.plugin.recorder.test_started(item, seconds)
        if seconds is None:
            return (yield)
        client = self.plugin.connect()
        expiration = time.time() + seconds
        interrupt.current = interrupt.Deadline(item.nodeid, seconds, expiration)
        client.arm(expiration, self.plugin.settings.grace)
        try:
            return (yield)
        finally:
            # Not left to the next test's arm: a worker may wait between two
            # tests (an xdist worker for its next test, say) for longer than
            # this test's deadline and grace.
            client.disarm()
            interrupt.current = None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # First, so that every reporter (and an xdist worker's relay, and
        # the worker's records) sees the stacks.
        deadline = interrupt.current
        if (
            deadline is not None
            and deadline.expired_in == report.when
            and deadline.nodeid == report.nodeid
            and self.plugin.directory
        ):
            report.sections.append(
                (
                    f"expired: {report.nodeid} after {format_seconds(deadline.seconds)}",
                    self.plugin.diagnosis(deadline),
                )
            )
        if self.plugin.recorder is not None:
            self.plugin.recorder.test_reported(report)
