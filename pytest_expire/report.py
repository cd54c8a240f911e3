"""How an expired or killed test is told to the user, whoever tells it: one wording, one shape.

Every path an expiry takes ends here:

- the test's own process, when its interrupt landed or it ended past its
  deadline (``plugin``, and the interrupt's message: ``interrupt``);
- a supervisor's next worker, after the watchdog killed the one that ran
  the test, or after that one died of something else (``replay``);
- an xdist controller, after the watchdog killed a worker
  (``xdist_support``);
- the watchdog, which says on stderr what it kills, and which processes'
  own timers expired (``escalation``); the supervisor, which says when the
  session's deadline passes outside the tests (``session_overrun``).

Each report goes through :func:`fail_as_expired` (or :func:`fail_as_killed`),
so that it reads the same serially and under xdist, in the terminal and in
JUnit XML:

- the short summary line and JUnit's ``message`` say ``expired after 2 s
  (in call)`` (the node id is on the line already);
- the failure points at the line where the test hung (the innermost frame
  of the test's thread that is not pytest's, as the stacks show it);
- the stacks follow the failure, in the failure itself (so that they reach
  JUnit's ``<failure>`` too), rendered to be read (``dumps``);
- :data:`RECORD` on the report carries what a program reads (the
  ``--expire-report`` file, ``json_report``): the phase, the deadline, what
  was done, the raw stacks, and the same stacks parsed (with the names of
  the threads of the test's process, which only that process knows). It
  survives xdist's and the supervisor's serialization of reports, being
  plain data.

The watchdog process uses these words too, and imports no pytest (it
starts while pytest collects): pytest's classes are imported where a
report is made, in a pytest process.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pytest_expire import dumps
from pytest_expire.signals import name as signal_name

if TYPE_CHECKING:
    import pluggy
    import pytest

    from pytest_expire.pytest_internals import ExceptionChainRepr
    from pytest_expire.session_deadline import SessionDeadline

#: The attribute of an expired test's report that holds its record (a dict).
RECORD = "pytest_expire"
#: What the watchdog did, as a record says it.
INTERRUPTED = "interrupted"
KILLED = "killed"
#: The test ended past its deadline before its interrupt landed (or swallowed it).
ENDED_LATE = "ended late"


def notice(text: str) -> None:
    """Tell the user something on stderr, at once, in one line that names the plugin.

    On a line of its own: pytest's progress line (``test_suite.py ..F``) is
    still open when a deadline passes, and neither this process nor the
    watchdog knows its column; an empty line at worst.
    """
    sys.stderr.write(f"\npytest-expire: {text}\n")
    sys.stderr.flush()


def format_seconds(seconds: float) -> str:
    """``2 s``, ``0.5 s``: a duration as every message writes it."""
    return f"{seconds:g} s"


def summary(seconds: float | None, phase: str, session: str | None = None) -> str:
    """``expired after 2 s (in call)``: the short summary's words.

    ``session`` names the session's deadline (``--expire-session=600``) when it,
    not the test's own, is the one that passed: then ``seconds`` are the time
    the test had until it, which no one chose, so shown to a tenth of a second.
    """
    words = f"expired after {_after(seconds, session)} (in {phase})"
    return f"{words}: the session's deadline ({session}) passed" if session else words


def headline(nodeid: str, seconds: float | None, phase: str, session: str | None = None) -> str:
    """The first line of the failure (and the message of the interrupt's exception)."""
    return f"{nodeid} {summary(seconds, phase, session)}"


def stacks_title(nodeid: str, seconds: float | None, session: str | None = None) -> str:
    """The heading of the stacks: it keeps the deadline, as it is read alone too."""
    return f"expired: {nodeid} after {_after(seconds, session)}"


def killed(
    nodeid: str, seconds: float | None, phase: str, grace: float, session: str | None = None
) -> str:
    """The first line of the failure of a test whose process the watchdog killed."""
    return (
        f"{headline(nodeid, seconds, phase, session)}; it did not stop when interrupted and "
        f"its process was killed {format_seconds(grace)} later"
    )


def killing(pid: int, grace: float, stacks: str | None = None) -> str:
    """What the watchdog says (on stderr, in its log) as it kills a test's process; with
    the ``stacks`` it took, where no report will show them."""
    words = (
        f"the test running in process {pid} did not end {format_seconds(grace)} after its "
        "interrupt; killing it"
    )
    return words if stacks is None else f"{words}. Its stacks:\n{stacks}"


def died(nodeid: str, status: int, phase: str | None) -> str:
    """The failure of a test whose process died of something else than the watchdog's kill:
    in ``phase``, or (None) after the test ended, before its session did."""
    if phase is None:
        return (
            f"{nodeid}: its process {how_it_ended(status, 'after this test ended')}"
            ", before its session ended; the session went on in a new one"
        )
    return (
        f"{nodeid}: its process {how_it_ended(status, f'in {phase}')}; "
        "the session went on in a new one"
    )


def how_it_ended(status: int, when: str) -> str:
    """A process's wait status in words, ``when`` it happened.

    ``died in call (SIGKILL)``, ``exited with status 0 in call``. Every
    signal gets a name, whatever its number (``signals.name``): a process
    killed by a real-time signal (whose default action is to terminate)
    must still end in a report, not in a ``ValueError`` from
    ``signal.Signals``.
    """
    if os.WIFSIGNALED(status):
        return f"died {when} ({signal_name(os.WTERMSIG(status))})"
    return f"exited with status {os.waitstatus_to_exitcode(status)} {when}"


def child_expired(pid: int, scopes: str, owner: int | None = None, nodeid: str = "") -> str:
    """What the watchdog says when process ``pid``'s own timers (``scopes``) expired: a
    process that uses the timer library, started by the test ``nodeid`` that process
    ``owner`` runs, if known."""
    words = f"the timers {scopes} of process {pid} expired"
    if owner is None:
        return words
    test = nodeid or f"the test running in process {owner}"
    return f"{words}, started by {test}: its stacks are in that test's report"


def child_expired_heading(pid: int, scopes: str) -> str:
    """The heading of the stacks of process ``pid`` whose timers expired, in the report of
    the test that started it."""
    return f"--- process {pid}: its timers {scopes} expired ---"


def child_expiries_title(nodeid: str) -> str:
    """The title of the section of ``nodeid``'s report that holds those stacks."""
    return f"expired timers of processes {nodeid} started (found at teardown)"


def session_interrupting(session: str, where: str, stacks: str) -> str:
    """What the supervisor says as it interrupts its worker at the session's deadline,
    ``where`` no test's deadline holds (collecting, or past its last test)."""
    return (
        f"the session's deadline ({session}) passed while it was {where}, "
        f"where no test's deadline holds; interrupting it (SIGINT). Its stacks:\n{stacks}"
    )


def session_killing(pid: int, patience: float, session: str, stacks: str) -> str:
    """What the supervisor says as it kills its worker, which did not end ``patience``
    seconds after that interrupt."""
    return (
        f"the process running the session (process {pid}) did not end "
        f"{format_seconds(patience)} after its interrupt at the session's deadline "
        f"({session}); killing it and the processes it started. Its stacks:\n{stacks}"
    )


def session_stopped(session: str, not_run: int | None) -> str:
    """Why the session stopped before its last test (``session.shouldstop``), which pytest
    shows above the summary's last line: how many tests did not run, where that is known
    (``None``: in an xdist worker, whose controller counts them)."""
    words = f"pytest-expire: the session's deadline ({session}) passed"
    if not_run is None:
        return f"{words}: no test starts after it"
    return f"{words}: {not_run} {'test' if not_run == 1 else 'tests'} not run"


def _after(seconds: float | None, session: str | None) -> str:
    if seconds is None:
        return "its deadline"
    if session:
        seconds = round(seconds, 1) if seconds >= 1 else round(seconds, 2)
    return format_seconds(seconds)


def fail_as_killed(
    report: pytest.TestReport,
    hook: pluggy.HookRelay,
    *,
    seconds: float | None,
    phase: str,
    grace: float,
    stacks: str,
    killed_at: float,
    started: float | None,
    session: SessionDeadline | None,
) -> None:
    """Make ``report`` the failure of a test whose process the watchdog killed ``grace``
    seconds after its interrupt, with the ``stacks`` it took then.

    Made in another process than the killed one (a supervisor's next worker,
    an xdist controller), which knows nothing of that process's threads.
    ``killed_at`` is the token of the deadline the kill was about: if it is
    the run's (``session``, armed when it came first: ``client.Link``), the
    report names it, with the time the test had until it from its start
    (``started``, a ``verdict.wall_clock`` time; None if unknown) instead of
    the test's own ``seconds``.
    """
    label = None
    if session is not None and killed_at >= session.end:
        label = session.label
        seconds = None if started is None else max(0.0, session.end - started)
    fail_as_expired(
        report,
        hook,
        seconds=seconds,
        phase=phase,
        action=KILLED,
        stacks=stacks,
        message=killed(report.nodeid, seconds, phase, grace, label),
        session=label,
    )


def fail_as_expired(
    report: pytest.TestReport,
    hook: pluggy.HookRelay,
    *,
    seconds: float | None,
    phase: str,
    action: str,
    stacks: str,
    message: str | None = None,
    thread_names: tuple[int, dict[int, str]] | None = None,
    notes: Sequence[str] = (),
    session: str | None = None,
) -> None:
    """Make ``report`` the failure of a test that expired in ``phase``, with its ``stacks``.

    A report of the interrupt itself keeps its traceback (it points where
    the test was interrupted); any other (the test swallowed the interrupt
    or ended past its deadline on its own, or it was killed) gets a failure
    of its own, ``message`` first (by default the headline), what else it
    said after. ``thread_names``, from the test's own process (its PID and
    thread names by ident), names that process's threads in the stacks;
    ``notes`` (its asyncio tasks' stacks) follow them. ``session`` names the
    session's deadline when it is the one that passed (see :func:`summary`).
    Last, other plugins add what they know (``hook``'s
    ``pytest_expire_expired``: ``newhooks``).
    """
    # Imported here: the watchdog process imports this module, and no pytest.
    from pytest_expire.pytest_internals import ExceptionChainRepr

    message = message or headline(report.nodeid, seconds, phase, session)
    processes = dumps.parse(stacks)
    if thread_names is not None:
        dumps.name_threads(processes, *thread_names)
    longrepr = report.longrepr
    if not (isinstance(longrepr, ExceptionChainRepr) and message in str(longrepr)):
        longrepr = _failure(report, message, dumps.where_it_hung(processes))
    assert longrepr.reprcrash is not None
    longrepr.reprcrash.message = summary(seconds, phase, session)
    if action == KILLED:
        longrepr.reprcrash.message += "; killed"
    text = "\n".join([dumps.render(processes), *notes]).rstrip()
    longrepr.addsection(stacks_title(report.nodeid, seconds, session), text)
    report.longrepr = longrepr
    report.outcome = "failed"
    if hasattr(report, "wasxfail"):
        del report.wasxfail
    record: dict[str, Any] = {
        "phase": phase,
        "deadline": seconds,
        "action": action,
        "stacks": stacks,
        "processes": [process.as_json() for process in processes],
        "session_deadline": session,
    }
    setattr(report, RECORD, record)
    try:
        sections = hook.pytest_expire_expired(report=report, expiry=record)
    except Exception as error:  # another plugin's fault must not lose this report
        sections = [("pytest_expire_expired failed", f"{type(error).__name__}: {error}")]
    for title, content in sections:
        longrepr.addsection(str(title), str(content))


def _failure(
    report: pytest.TestReport, message: str, hung: dumps.Frame | None
) -> ExceptionChainRepr:
    """A failure shaped as pytest's own (what every reporter and xdist know how to
    carry), saying ``message`` and what else ``report`` said, and pointing where the
    test hung (else at the test)."""
    from pytest_expire.pytest_internals import (
        ExceptionChainRepr,
        ReprEntryNative,
        ReprFileLocation,
        ReprTraceback,
    )

    lines = [f"{message}\n"]
    if report.failed and report.longrepr:
        lines.append(f"\nIt also failed:\n{report.longrepr}\n")
    if hung is not None:
        path, lineno = hung.file, hung.line or 0
        lines.append(f'\nwhere it was:\n  File "{path}", line {lineno} in {hung.function}\n')
    else:
        path, line, _ = report.location
        lineno = (line or 0) + 1
    traceback = ReprTraceback([ReprEntryNative(lines)], None, "native")
    return ExceptionChainRepr([(traceback, ReprFileLocation(path, lineno, message), None)])
