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
from collections.abc import Callable, Generator
from pathlib import Path

import pytest

from pytest_expire import interrupt, stacks
from pytest_expire.settings import (
    ENV_DEFAULT,
    MARKER,
    Settings,
    argparse_seconds,
    deadline_for,
    format_seconds,
    from_config,
)
from pytest_expire.supervisor import Supervisor
from pytest_expire.timer.unix_socket_timer import ADDRESS_ENV
from pytest_expire.watchdog import (
    DIRECTORY_ENV,
    OWNER_ENV,
    SessionWatchdog,
    WatchdogClient,
    read_diagnosis,
)
from pytest_expire.worker import WorkerPlugin, is_worker
from pytest_expire.xdist_support import CrashReporter, is_controller

PLUGIN_NAME = "expire-session"
# A test's deadline in seconds (None: no deadline), found at collection.
_DEADLINE = pytest.StashKey[float | None]()


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
    if is_worker():
        worker = WorkerPlugin(config)
        plugin.on_armed = worker.armed
        config.pluginmanager.register(worker, "expire-worker")
    elif is_controller(config) and settings.default is not None:
        # Started here, so that every worker inherits its address.
        plugin.watchdog = SessionWatchdog(supervised=True)
        config.pluginmanager.register(CrashReporter(plugin.watchdog.directory), "expire-xdist")
    elif _should_supervise(config, settings):
        plugin.watchdog = SessionWatchdog(supervised=True)
        config.pluginmanager.register(
            Supervisor(config, plugin.watchdog, settings.grace), "expire-supervisor"
        )


def _should_supervise(config: pytest.Config, settings: Settings) -> bool:
    """Whether tests run in a worker process that the watchdog may kill, this one surviving.

    Only with a default deadline: a session with none runs as plain pytest
    does. Not under xdist (which replaces its own killed workers), not when
    only collecting or debugging, and not when pytest was given plugin
    objects in-process (``pytest.main(plugins=...)``), which a worker process
    could not have.
    """
    return (
        settings.default is not None
        and not hasattr(config, "workerinput")
        and not config.getoption("collectonly")
        and not config.getoption("usepdb")
        and not config.getoption("trace")
        and not config.invocation_params.plugins
    )


class ExpirePlugin:
    """The per-session state: settings, the watchdog, the running test's deadline."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        # Owned by this process: its watchdog, when this process started one.
        self.watchdog: SessionWatchdog | None = None
        # Told of each test's deadline (a worker tells its supervisor).
        self.on_armed: Callable[[str, float], None] | None = None
        self._client: WatchdogClient | None = None
        self._directory: Path | None = None

    def pytest_report_header(self) -> str:
        return self.settings.describe()

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        # Once per test, here: a bad marker is a usage error before any test runs.
        for item in items:
            item.stash[_DEADLINE] = deadline_for(item, self.settings)

    def pytest_unconfigure(self) -> None:
        if self._client is not None:
            self._client.close()
            interrupt.uninstall()
        if self.watchdog is not None:
            self.watchdog.stop()

    def _connect(self) -> WatchdogClient:
        """The session's watchdog: its process's, or one started at the first test needing it."""
        if self._client is None:
            address = os.environ.get(ADDRESS_ENV)
            directory = os.environ.get(DIRECTORY_ENV)
            # Only a worker uses its parent's watchdog: a pytest run inside a
            # test (pytester, say) inherits the environment but is a session
            # of its own.
            if not (address and directory and str(os.getppid()) == os.environ.get(OWNER_ENV)):
                self.watchdog = SessionWatchdog(supervised=False)
                address, directory = self.watchdog.address, str(self.watchdog.directory)
            self._client = WatchdogClient(address)
            self._directory = Path(directory)
            stacks.register(self._directory)
            interrupt.install()
        return self._client

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        try:
            seconds = item.stash[_DEADLINE]
        except KeyError:  # an item that no collection hook saw
            seconds = deadline_for(item, self.settings)
        if seconds is None:
            return (yield)
        client = self._connect()
        if self.on_armed is not None:
            self.on_armed(item.nodeid, seconds)
        expiration = time.time() + seconds
        interrupt.current = interrupt.Deadline(item.nodeid, seconds, expiration)
        client.arm(item.nodeid, expiration, self.settings.grace)
        try:
            return (yield)
        finally:
            client.disarm(item.nodeid)
            interrupt.current = None

    def pytest_enter_pdb(self) -> None:
        """A test in the debugger has no deadline: someone is looking at it."""
        deadline = interrupt.current
        if deadline is not None and self._client is not None and not deadline.paused:
            deadline.paused = True
            self._client.disarm(deadline.nodeid)

    def pytest_leave_pdb(self) -> None:
        """Back from the debugger, the test gets its whole deadline again."""
        deadline = interrupt.current
        if deadline is not None and self._client is not None and deadline.paused:
            deadline.expiration_time = time.time() + deadline.seconds
            deadline.paused = False
            self._client.arm(deadline.nodeid, deadline.expiration_time, self.settings.grace)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_setup(self) -> Generator[None, None, None]:
        return (yield from _in_phase("setup"))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_call(self) -> Generator[None, None, None]:
        return (yield from _in_phase("call"))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self) -> Generator[None, None, None]:
        return (yield from _in_phase("teardown"))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        deadline = interrupt.current
        if deadline is not None and deadline.expired_in == call.when and self._directory:
            report.sections.append(
                (
                    f"expired: {item.nodeid} after {format_seconds(deadline.seconds)}",
                    self._diagnosis(deadline),
                )
            )
        return report

    def _diagnosis(self, deadline: interrupt.Deadline) -> str:
        assert self._directory is not None
        parts = [read_diagnosis(self._directory, deadline.nodeid)]
        parts.extend(f"asyncio tasks:\n{note}" for note in deadline.notes)
        return "\n".join(part for part in parts if part)


def _in_phase(phase: str) -> Generator[None, None, None]:
    """Let the interrupt land only while ``phase`` of the armed test runs."""
    deadline = interrupt.current
    if deadline is None:
        return (yield)
    deadline.phase = phase
    try:
        return (yield)
    finally:
        deadline.phase = None
