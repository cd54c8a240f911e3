"""The pytest plugin: every test under a deadline, watched from outside.

Registered under the entry point name ``expire`` (so ``-p no:expire`` turns it
off). This module holds the hooks; the pieces live beside it, one job each
(docs/plugin.md, "Where things are", maps them): ``settings`` (deadlines
from markers, options, environment, ini), ``client`` (this process's link
to the session's watchdog), ``interrupt`` (failing the expired test in its
process) and ``report`` (what the user reads of an expiry).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Generator
from pathlib import Path

import pytest

from pytest_expire import (
    coverage_data,
    dumps,
    exit_deadline,
    interrupt,
    json_report,
    leftovers,
    newhooks,
    offspring,
    session_deadline,
    supervisor,
    timeout_compat,
    worker,
)
from pytest_expire import report as expiry_report
from pytest_expire.client import Link, current_link, new_link
from pytest_expire.session_directory import (
    ADDRESS_ENV,
    DIRECTORY_ENV,
    OWNER_ENV,
    read_diagnosis,
    take_child_expiries,
)
from pytest_expire.settings import (
    DEADLINE,
    ENV_DEFAULT,
    ENV_SESSION,
    FUNC_ONLY,
    LEFTOVERS,
    MARKER,
    Settings,
    argparse_seconds,
    from_config,
    timing_for,
)
from pytest_expire.verdict import boot_ticks, monotonic_clock, sleep
from pytest_expire.watchdog import SessionWatchdog, begin_log
from pytest_expire.xdist_support import (
    CoverageRescue,
    CrashReporter,
    announce_worker,
    is_controller,
)

PLUGIN_NAME = "expire-session"
# How long a report waits for the stacks the watchdog is taking (it dumps for
# at most a second, py-spy for a few more), and how often it looks.
_DIAGNOSIS_WAIT = 5.0
_DIAGNOSIS_POLL = 0.02


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(newhooks)
    timeout_compat.addhooks(pluginmanager)


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
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
        "--expire-session",
        type=argparse_seconds,
        default=None,
        metavar="SECONDS",
        help=(
            "deadline of the whole run: the test running then expires, the rest do not run; "
            f"0 disables. Overrides ${ENV_SESSION} and the ini expire_session."
        ),
    )
    group.addoption(
        "--expire-grace",
        type=argparse_seconds,
        default=None,
        metavar="SECONDS",
        help="time between interrupting an expired test and killing its process (default 5).",
    )
    group.addoption(
        "--expire-leftovers",
        choices=LEFTOVERS,
        default=None,
        help=(
            "what becomes of the processes the tests started that still run when the "
            "session ends: listed and ended (end, the default), or only listed (list)."
        ),
    )
    group.addoption(
        "--expire-func-only",
        action="store_true",
        default=None,
        help=(
            "time a test's function alone: its setup, call and teardown each get the "
            "whole deadline on their own (a marker's func_only= says otherwise for its test)."
        ),
    )
    group.addoption(
        "--expire-disable-debugger-detection",
        action="store_true",
        default=None,
        help="a test in a debugger (pdb, an IDE's) keeps its deadline: it is interrupted.",
    )
    parser.addini(
        "expire_default", "default test deadline in seconds (0 or empty: none)", default=""
    )
    parser.addini(
        "expire_session", "deadline of the whole run in seconds (0 or empty: none)", default=""
    )
    parser.addini(
        "expire_leftovers",
        "end (the default) or list: the processes the tests started left running at the "
        "end of the session",
        default="end",
    )
    parser.addini(
        "expire_grace", "seconds between interrupting an expired test and killing it", default=""
    )
    parser.addini(
        worker.GC_FREEZE_INI,
        "freeze what collection made out of the garbage collections of the process that "
        "runs the tests (faster; objects made at import that become garbage in a cycle "
        "are then never collected)",
        type="bool",
        default=False,
    )
    parser.addini(
        "expire_func_only",
        "true: a test's setup, call and teardown each have its deadline on their own",
        type="bool",
        default=False,
    )
    parser.addini(
        "expire_disable_debugger_detection",
        "true: a test in a debugger keeps its deadline",
        type="bool",
        default=False,
    )
    group.addoption(
        "--expire-exit",
        type=argparse_seconds,
        default=None,
        metavar="SECONDS",
        help=(
            "time the process that ran the tests has to exit once the session is over; "
            "then what still runs is dumped and killed (default 10; 0 waits for ever)."
        ),
    )
    parser.addini(
        "expire_exit",
        "seconds the process that ran the tests has to exit once the session is over "
        "(empty: 10; 0: for ever)",
        default="",
    )
    group.addoption(
        "--expire-log",
        default=None,
        metavar="PATH",
        help=(
            "file the watchdog logs to: each expired test with the stacks of its processes "
            "(the debug-info hook), each kill, its own failures."
        ),
    )
    parser.addini(
        "expire_log",
        "file the watchdog logs to, relative to where pytest starts (empty: none)",
        default="",
    )
    timeout_compat.addoption(parser, pluginmanager)
    json_report.addoption(parser)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    """Run the session in a worker this process supervises, so that a kill does not end it.

    First, before pytest configures anything: forking is safe only while
    this process has one thread, and plugins start threads as early as
    their ``pytest_configure``. Returns the session's exit status in the
    process that was started; None where the session runs in this process.
    """
    return supervisor.main(config, sys.modules[__name__])


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(seconds): fail the test if its setup, call and teardown take longer than "
        "seconds (also expires(after=seconds)); 0 or None disables the deadline; with "
        "func_only=True, each of them has the deadline on its own.",
    )
    json_report.register(config)
    settings = from_config(config)
    timeout_compat.configure(config, active=timeout_compat.MARKER in settings.markers)
    plugin = ExpirePlugin(config, settings)
    config.pluginmanager.register(plugin, PLUGIN_NAME)
    if is_controller(config):
        # Started here, so that every worker inherits its address; whatever the
        # default, as only the workers collect the markers (see xdist_support).
        plugin.watchdog = SessionWatchdog(grace=settings.grace, log=settings.log)
        plugin.watchdog.keep_alive()
        reporter = CrashReporter(config, plugin.watchdog, settings.grace)
        config.pluginmanager.register(reporter, "expire-xdist")
        rescue = CoverageRescue(plugin.watchdog.directory)
        config.pluginmanager.register(rescue, "expire-xdist-coverage")
        sweeper = leftovers.ControllerLeftovers(plugin.watchdog.directory, settings.end_leftovers)
        config.pluginmanager.register(sweeper, "expire-xdist-leftovers")
    else:
        # In a supervised worker (see pytest_cmdline_main), its recorder.
        plugin.recorder = worker.attach(config)
    if settings.log is not None and plugin.recorder is None and not hasattr(config, "workerinput"):
        begin_log(settings.log)  # a supervisor began it already
    plugin.session_stop = session_deadline.register(config, settings, is_controller(config))
    exit_deadline.register(config, settings.exit, plugin.watchdog)


class ExpirePlugin:
    """The per-session state: settings, the watchdog, the link of this process to it."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        # Owned by this process: its watchdog, when this process started one.
        self.watchdog: SessionWatchdog | None = None
        #: This process's link to the watchdog, once a test armed a deadline.
        self.link: Link | None = None
        #: In a supervised worker: what records each test for the supervisor.
        self.recorder: worker.WorkerPlugin | None = None
        #: What became of the processes left running when the session ended.
        self.leftovers: list[str] = []
        #: Where this process runs tests of a session with a deadline of its own: what
        #: stops it there (see ``session_deadline``).
        self.session_stop: session_deadline.SessionStop | None = None
        self._per_test = _PerTest(self)

    def pytest_report_header(self) -> str:
        return self.settings.describe()

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        # Once per test, here: a bad marker is a usage error before any test runs.
        armed = self.settings.default is not None or self.session_stop is not None
        for item in items:
            seconds, item.stash[FUNC_ONLY] = timing_for(item, self.settings)
            item.stash[DEADLINE] = seconds
            armed = armed or seconds is not None
        # A session in which no test has a deadline pays nothing per test.
        if armed and not self.config.pluginmanager.is_registered(self._per_test):
            self.config.pluginmanager.register(self._per_test, f"{PLUGIN_NAME}-tests")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self) -> None:
        """After the last teardown (the session's fixtures' too): the processes the
        tests started that still run are listed, and ended unless told otherwise."""
        link = self.link
        if link is None or link.nested:
            return  # no test had a deadline; or the tests of a session around this one go on
        found = offspring.attribute(
            offspring.of_session(link.directory, os.getpid(), marked=True), link.test_starts
        )
        self.leftovers = leftovers.settle(found, self.settings.end_leftovers)
        workeroutput = getattr(self.config, "workeroutput", None)
        if workeroutput is not None:  # an xdist worker: the controller says it
            workeroutput[leftovers.WORKEROUTPUT_KEY] = self.leftovers

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        leftovers.write(terminalreporter, self.leftovers)

    def pytest_unconfigure(self) -> None:
        if self.link is not None:
            self.link.leave()
            self.link = None
        if self.watchdog is not None:
            self.watchdog.stop()

    def connect(self) -> Link:
        """This process's link to a watchdog: the one a session of this process opened
        already (this session runs inside a test of it), else a new one to this
        process's watchdog, its supervisor's or xdist controller's, or a new watchdog."""
        if self.link is None:
            link = current_link()
            if link is None:
                address, directory = self._find_watchdog()
                link = new_link(address, directory, revive=self._revive_watchdog)
                if hasattr(self.config, "workerinput"):
                    # For the controller, which learns of a kill only as a crash of this worker.
                    announce_worker(self.config, directory, self.settings.default)
            self.link = link.join()
        return self.link

    def _find_watchdog(self) -> tuple[str, Path]:
        address = os.environ.get(ADDRESS_ENV)
        directory = os.environ.get(DIRECTORY_ENV)
        # Only a worker uses its parent's watchdog: a pytest run in a process
        # a test started inherits the environment but is a session of its own.
        if self.watchdog is None and not (
            address and directory and str(os.getppid()) == os.environ.get(OWNER_ENV)
        ):
            self.watchdog = SessionWatchdog(self.settings.grace, log=self.settings.log)
        if self.watchdog is not None:
            self.watchdog.wait_ready()
            return self.watchdog.address, self.watchdog.directory
        assert address is not None and directory is not None
        return address, Path(directory)

    def _revive_watchdog(self) -> None:
        """Start a new watchdog if this process's died (another's owner revives it)."""
        if self.watchdog is not None:
            self.watchdog.revive()

    def pytest_enter_pdb(self) -> None:
        """A test in the debugger has no deadline: someone is looking at it."""
        deadline = self._per_test.deadline
        if (
            deadline is not None
            and self.link is not None
            and not deadline.paused
            and deadline.yields_to_debugger
        ):
            self.link.pause(deadline)

    def pytest_leave_pdb(self) -> None:
        """Back from the debugger, the test gets its whole deadline again."""
        deadline = self._per_test.deadline
        if deadline is not None and self.link is not None and deadline.paused:
            self.link.renew(deadline)

    def judge(self, report: pytest.TestReport, deadline: interrupt.Deadline) -> None:
        """Fail a report of a phase that ended past its test's deadline, and add the stacks.

        The watchdog's word (or this process's own clock, which the test
        cannot patch) decides, not how the phase ended: a test that
        swallowed its interrupt, or woke early from a C call the dump
        signal cut short, still ran past its deadline.
        """
        assert self.link is not None
        action = expiry_report.INTERRUPTED
        if deadline.expired_in is None:
            if not self.link.expired(deadline):
                return
            deadline.expired_in = report.when
            action = expiry_report.ENDED_LATE  # its interrupt never landed
        elif deadline.expired_in != report.when:
            return
        seconds, session = deadline.said()
        expiry_report.fail_as_expired(
            report,
            self.config.hook,
            seconds=seconds,
            phase=report.when,
            action=action,
            stacks=self.diagnosis(deadline),
            thread_names=(os.getpid(), {t.ident or 0: t.name for t in threading.enumerate()}),
            notes=[f"asyncio tasks:\n{note}" for note in deadline.notes],
            session=session,
        )

    def mind_children(self, report: pytest.TestReport, deadline: interrupt.Deadline) -> None:
        """Say which processes the test of ``deadline`` left running; end them if it expired.

        Looked for only if the test expired or a process joined the session on
        this one's behalf (``registry``): a test that started none pays a load
        from memory. What its setup started stays if the test expired later
        (a fixture of a wider scope may own it); the rest is ended. Said in a
        section of the teardown report, which pytest shows with the failure.
        """
        link = self.link
        assert link is not None
        if not link.page.take_joined() and deadline.expired_in is None:
            return
        expiries = take_child_expiries(link.directory, os.getpid())
        if expiries:
            title = expiry_report.child_expiries_title(report.nodeid)
            report.sections.append((title, dumps.render(dumps.parse(expiries))))
        children = offspring.attribute(
            offspring.of_test(link.directory, os.getpid(), link.page.test_started()),
            link.test_starts,
        )
        if not children:
            return
        title = f"processes {report.nodeid} left running after teardown"
        if deadline.expired_in is None:
            lines = [child.describe() for child in children]
        else:
            kept = [
                child
                for child in children
                if deadline.expired_in != "setup" and child.started < deadline.setup_ended
            ]
            lines = offspring.end([child for child in children if child not in kept])
            lines += [f"{child.describe()}: started by its setup, left running" for child in kept]
        report.sections.append((title, "".join(f"{line}\n" for line in lines)))

    def diagnosis(self, deadline: interrupt.Deadline) -> str:
        """The stacks the watchdog took at ``deadline``, waiting for them if it is taking them."""
        assert self.link is not None
        text = read_diagnosis(self.link.directory, os.getpid(), token=deadline.token)
        waited_until = monotonic_clock() + _DIAGNOSIS_WAIT
        while (
            text is None
            and self.link.page.expired(deadline.token)
            and monotonic_clock() < waited_until
        ):
            sleep(_DIAGNOSIS_POLL)
            text = read_diagnosis(self.link.directory, os.getpid(), token=deadline.token)
        if text is None:
            text = "(no stacks: the test ended past its deadline before the watchdog took them)\n"
        return text


class _PerTest:
    """The hooks that run for every test: registered only if some test has a deadline."""

    def __init__(self, plugin: ExpirePlugin) -> None:
        self.plugin = plugin
        #: The deadline of the test this session runs now.
        self.deadline: interrupt.Deadline | None = None
        #: Whether each phase of that test has the deadline on its own (func-only).
        self.func_only = False

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        stop = self.plugin.session_stop
        if stop is not None and stop.stops_before(item):
            return (yield)  # past the session's deadline: it does not start
        try:
            seconds, func_only = item.stash[DEADLINE], item.stash[FUNC_ONLY]
        except KeyError:  # an item that no collection hook saw
            seconds, func_only = timing_for(item, self.plugin.settings)
        recorder = self.plugin.recorder
        if recorder is not None:
            recorder.test_started(item, seconds)
        if seconds is None and stop is None:
            result = yield
        else:
            link = self.plugin.connect()
            session = None if stop is None else stop.deadline
            self.deadline = deadline = link.arm(item.nodeid, seconds, session)
            self.func_only = func_only
            if not self.plugin.settings.debugger_detection:
                deadline.yields_to_debugger = False
            try:
                result = yield
            finally:
                # Not left to the next test's arm: a worker may wait between two
                # tests (an xdist worker for its next test, say) for longer than
                # this test's deadline and grace.
                self.deadline = None
                link.disarm(deadline)
        # What coverage.py measured in the test reaches its data file, should
        # this process be killed in the next one.
        coverage_data.test_ended()
        if recorder is not None:
            recorder.test_finished()
        return result

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        # Here, as each phase ends, and before anyone reads the report: a plugin
        # that reruns failed tests (pytest-rerunfailures) decides on the verdict,
        # and every reporter sees it with the stacks.
        report = yield
        deadline = self.deadline
        if deadline is not None and deadline.nodeid == report.nodeid:
            self.plugin.judge(report, deadline)
            if report.when == "setup":
                deadline.setup_ended = boot_ticks()
            elif report.when == "teardown" and self.plugin.link is not None:
                self.plugin.link.suspend(deadline)
                self.plugin.mind_children(report, deadline)
            if (
                self.func_only
                and report.when != "teardown"
                and deadline.expired_in is None
                and self.plugin.link is not None
            ):
                # Func-only: the next phase gets the whole deadline, from now. One that
                # expired keeps it: its teardown has what is left of the grace period.
                self.plugin.link.renew(deadline)
        if self.plugin.recorder is not None:
            self.plugin.recorder.phase_ended(report)
        return report

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self) -> None:
        deadline = self.deadline
        if deadline is not None and deadline.spent and self.plugin.link is not None:
            # A plugin reruns the test (pytest-rerunfailures): the new attempt
            # runs under a deadline of its own.
            self.plugin.link.renew(deadline)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.plugin.recorder is not None:
            self.plugin.recorder.test_reported(report)
