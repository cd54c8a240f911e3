"""The deadline of the whole run (``--expire-session``): the test running then expires,
and no test starts after it.

The deadline is one moment (``verdict.wall_clock``), fixed once as the run
starts, by the process the user started: a supervisor (``supervisor``), an
xdist controller, or the pytest process itself where it runs the tests. A
worker takes it from there (the supervisor's ``worker.Worker``, xdist's
``workerinput``), so that a run that goes on in a new worker after a kill,
or whose xdist workers are replaced, still has the one deadline.

- **The test running then.** Each test's process arms the earlier of the
  test's own deadline and the session's (``client.Link``): at the session's,
  the test is diagnosed, interrupted and killed after the grace period as at
  its own, by the same watchdog (a session with no other deadline starts one
  for it), and its report says that the session's deadline passed.
- **The tests not run yet** do not start: the session stops as pytest stops
  it for ``-x`` (``session.shouldstop``), and says why and how many tests did
  not run above the summary's last line; the run ends with pytest's status
  for an interrupted session (2), never 0. They are not reported as skipped:
  a skip is a test's own verdict on itself, which CI counts as harmless, and
  a run cut short must not read as a complete one. Under xdist the
  controller stops handing out tests and counts the tests that no worker
  started; each worker refuses, too, the tests it was handed and had not
  started when the deadline passed.
- **Outside the tests** (collection, the teardown of wider fixtures after
  the stop), no test's deadline is armed: a supervisor holds its worker to
  the session's deadline there (``session_overrun``).
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_expire import report as expiry_report
from pytest_expire import worker
from pytest_expire.settings import Settings
from pytest_expire.verdict import wall_clock

#: The name under which a session's deadline plugin is registered.
PLUGIN_NAME = "expire-session-deadline"
# Where an xdist worker finds the controller's session deadline.
_WORKERINPUT_KEY = "pytest_expire_session"


class SessionDeadline:
    """The moment a run must be over, and how its reports name it."""

    __slots__ = ("end", "label")

    def __init__(self, end: float, label: str) -> None:
        #: When it passes (``verdict.wall_clock``).
        self.end = end
        #: Where it was set, with its value: ``--expire-session=600``.
        self.label = label

    @classmethod
    def from_now(cls, settings: Settings) -> SessionDeadline | None:
        """The session's deadline from ``settings``, counted from now; None if it has none."""
        if not settings.session:
            return None
        source = settings.session_source
        equals = " = " if source.startswith("ini ") else "="
        return cls(wall_clock() + settings.session, f"{source}{equals}{settings.session:g}")

    def passed(self) -> bool:
        return wall_clock() >= self.end


def register(config: pytest.Config, settings: Settings, controller: bool) -> SessionStop | None:
    """Register what stops the session at its deadline, if it has one; in a process that
    runs its tests, return that (None: no deadline, or an xdist controller).

    The deadline of a supervised worker's session is its supervisor's, that
    of an xdist worker its controller's; any other session (its supervisor's
    own, a session a test runs inside itself) counts from now.
    """
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        given = workerinput.get(_WORKERINPUT_KEY)
        deadline = None if given is None else SessionDeadline(*given)
    elif worker.current is not None and worker.current[2] is config:
        deadline = worker.current[0].session_deadline
    else:
        deadline = SessionDeadline.from_now(settings)
    if deadline is None:
        return None
    if controller:
        config.pluginmanager.register(ControllerStop(config, deadline), PLUGIN_NAME)
        return None
    stop = SessionStop(deadline)
    config.pluginmanager.register(stop, PLUGIN_NAME)
    return stop


def of(config: pytest.Config) -> SessionDeadline | None:
    """The deadline of the session of ``config``, if it has one."""
    plugin = config.pluginmanager.get_plugin(PLUGIN_NAME)
    return plugin.deadline if isinstance(plugin, (SessionStop, ControllerStop)) else None


class SessionStop:
    """In a process that runs tests: no test starts once the session's deadline passed."""

    def __init__(self, deadline: SessionDeadline) -> None:
        self.deadline = deadline
        self._stopped = False

    def stops_before(self, item: pytest.Item) -> bool:
        """Whether ``item`` must not start, its session's deadline having passed; if so,
        the session stops (``shouldstop``), unless it stops for another reason already.

        Asked first by the plugin's own hook around each test (which then arms
        nothing for it), then by :meth:`pytest_runtest_protocol`: once said, it
        stays said, so both agree.
        """
        if self._stopped:
            return True
        if not self.deadline.passed():
            return False
        self._stopped = True
        session = item.session
        if not session.shouldstop:
            not_run = None
            if not hasattr(item.config, "workerinput"):  # its controller counts under xdist
                items = session.items
                first = next((at for at, other in enumerate(items) if other is item), len(items))
                not_run = len(items) - first
            session.shouldstop = expiry_report.session_stopped(self.deadline.label, not_run)
        return True

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> bool | None:
        # First: neither pytest's runner nor another plugin's (pytest-rerunfailures) starts it.
        return True if self.stops_before(item) else None


class ControllerStop:
    """In an xdist controller: hands the deadline to each worker, and stops the session
    once it passed, saying how many tests no worker started.

    The controller hears of the deadline's passing through its workers (the
    expired test's report, a worker that refused its next test and ended), and
    looks again at each event: the count is final at the last worker's end.
    """

    def __init__(self, config: pytest.Config, deadline: SessionDeadline) -> None:
        self.config = config
        self.deadline = deadline
        self._started: set[str] = set()
        self._stopped = False

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[_WORKERINPUT_KEY] = (self.deadline.end, self.deadline.label)

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self._started.add(nodeid)
        self._look()

    def pytest_runtest_logreport(self) -> None:
        self._look()

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self) -> None:
        self._look()

    def _look(self) -> None:
        if not self.deadline.passed():
            return
        session = self.config.pluginmanager.get_plugin("session")
        dsession = self.config.pluginmanager.get_plugin("dsession")
        if session is None or dsession is None:
            return
        if dsession.shouldstop and not self._stopped:
            return  # stopped for another reason first (-x, a Ctrl-C)
        not_run = max(0, session.testscollected - len(self._started))
        # Every test started before the deadline: there is nothing to stop (a test
        # that expired at it failed, as in a serial session whose last test it was).
        if not_run or self._stopped:
            self._stopped = True
            dsession.shouldstop = expiry_report.session_stopped(self.deadline.label, not_run)
