"""The processes a session's tests started, wherever they went: found, attributed, ended.

A test's hang often lives in a process it started, and a process a test
started may outlive it (a leaked child, a double-forked daemon, a
grandchild holding the output pipe). This module finds them, for the
watchdog at a deadline and for the test's process at the end of a test or
of the session, in three places, and a fourth at the session's end:

- the *tree* of the process that runs the tests (the *test process*);
- the *registry* (``registry``): every Python process that joined the
  session on the test process's behalf, wherever its parent went;
- the *reaper*'s children: a supervised session's supervisor is a child
  subreaper (``supervisor``), so that a process that left the tree (its
  parent died) becomes its child instead of init's, and stays in reach;
- the session's mark in the environment a program was started with
  (:func:`marked_by`): for the programs that left the tree where no
  subreaper adopted them, looked for once, when the session ends.

A process is the running test's if it started after the test did (the
verdict page holds when: ``verdict.boot_ticks``); a registered one says
which test it started in, and so does the environment any other one was
started with (pytest's ``PYTEST_CURRENT_TEST``), wherever it went.
Nothing here runs per test unless the test started processes: finding
them reads ``/proc``, which costs milliseconds.
Processes are signalled through pidfds opened while their start time was
checked, never by a PID alone, never by name. psutil is imported where it is
used: a test process imports it only once its tests start processes (and
again after pytester's in-process runs, which unload what they imported).
"""

from __future__ import annotations

import os
import select
import signal
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from pytest_expire import reaper, registry
from pytest_expire.dumps import shortened
from pytest_expire.session_directory import DIRECTORY_ENV, helpers_path, reaper_path
from pytest_expire.signals import send
from pytest_expire.verdict import monotonic_clock, page_path, start_time

if TYPE_CHECKING:
    import psutil

#: How long an ended process has between SIGTERM and SIGKILL.
TERMINATE_PATIENCE = 1.0


class Offspring(NamedTuple):
    """A process a test started, as found."""

    process: psutil.Process
    #: When it started (``verdict.start_time``).
    started: int
    #: Its command line when found (an ended process has none to read).
    command: str
    #: The test it started in, "NODEID (PHASE)", as it said when it joined the session
    #: or as its environment says; "" if neither does.
    test: str

    def describe(self) -> str:
        """One line for a report: which process, running what, started when."""
        during = f", started during {self.test}" if self.test else ""
        return f"process {self.process.pid} ({shortened(self.command)}){during}"


#: What pytest-xdist names a worker by in its environment (and so in its children's).
_XDIST_WORKER_ENV = "PYTEST_XDIST_WORKER"
_XDIST_WORKER_PREFIX = f"{_XDIST_WORKER_ENV}=".encode()


def of_test(directory: Path, pid: int, since: int) -> list[Offspring]:
    """The processes started since ``since`` by the test that process ``pid`` runs,
    parents before their children."""
    return [child for child in of_session(directory, pid) if child.started >= since]


def of_session(directory: Path, pid: int, marked: bool = False) -> list[Offspring]:
    """Every running process that the tests of process ``pid`` started, parents first.

    Those that joined on behalf of a test process that is gone (a killed
    worker's) too: its replacement, which runs the rest of its tests, finds them.
    ``marked``: also those started with the session's mark in their environment
    (:func:`marked_by`), which the test process ``pid``, this one, runs.
    """
    entries = {entry.pid: entry for entry in registry.entries(directory)}
    roots = [pid, *_orphans(directory, pid)]
    if marked:
        roots += marked_by(directory)
    roots += [
        entry.pid
        for entry in entries.values()
        if entry.owner == pid or (entry.owner and start_time(entry.owner) is None)
    ]
    excluded = {pid, os.getpid(), *helper_pids(directory)}
    return _families(roots, excluded, entries)


def helper_pids(directory: Path) -> list[int]:
    """The session's own processes (its watchdog), never diagnosed or ended."""
    return _read_pids(helpers_path(directory))


def of_pids(pids: list[int]) -> list[Offspring]:
    """The processes ``pids`` that still run and their descendants, parents first."""
    return _families(pids, set(), {})


def _families(
    roots: list[int], excluded: set[int], entries: dict[int, registry.Entry]
) -> list[Offspring]:
    """``roots`` and their descendants, less ``excluded``, each with the test its
    ``entries`` say it started in; parents first."""
    if not _any_running(roots, excluded):
        return []  # the usual case, which spares a session psutil's import
    import psutil

    found: dict[int, Offspring] = {}
    for root in roots:
        try:
            process = psutil.Process(root)
            family = [process, *process.children(recursive=True)]
        except psutil.Error:
            continue  # ended meanwhile
        for process in family:
            if process.pid in excluded or process.pid in found:
                continue
            started = start_time(process.pid)
            try:
                if started is None or process.status() == psutil.STATUS_ZOMBIE:
                    continue  # ended (a zombie waits for its parent, which it may never get)
                command = command_line(process)
            except psutil.Error:
                continue
            entry = entries.get(process.pid)
            if entry is not None and entry.started == started:
                test = entry.test
            else:
                test = _test_in_environment(process)
            found[process.pid] = Offspring(process, started, command, test)
    return sorted(found.values(), key=lambda child: child.started)


def _test_in_environment(process: psutil.Process) -> str:
    """The test a process that did not join was started in, "NODEID (PHASE)", as the
    environment it was started with says (pytest's ``PYTEST_CURRENT_TEST``, which
    every process a test starts inherits, and keeps wherever it goes); "" if none.
    """
    import psutil

    try:
        return process.environ().get(registry.CURRENT_TEST_ENV, "")
    except psutil.Error:
        return ""


def owner_of(directory: Path, pid: int) -> registry.Entry | None:
    """Which test process's test started process ``pid``, and in which test, if known:
    its registry entry, else (not joined) its nearest ancestor that runs tests."""
    import psutil

    started = start_time(pid)
    for entry in registry.entries(directory):
        if entry.pid == pid and entry.started == started and entry.owner:
            return entry
    try:
        ancestors = psutil.Process(pid).parents()
    except psutil.Error:
        return None
    for ancestor in ancestors:
        if page_path(directory, ancestor.pid).exists():
            return registry.Entry(pid, started or 0, ancestors[0].pid, ancestor.pid, "")
    return None


def _orphans(directory: Path, pid: int) -> list[int]:
    """The children of the session's reaper that are neither process ``pid`` nor helpers:
    processes that left the tree they were started in."""
    subreaper = _read_pids(reaper_path(directory))
    if not subreaper or subreaper[0] == pid:
        return []
    return reaper.children(subreaper[0])


def marked_by(directory: Path) -> list[int]:
    """The processes started with the mark of the session ``directory`` in their environment
    (``DIRECTORY_ENV``), by this process's tests, that left the session's tree: the
    second net, for a process no subreaper of the session adopted (an unsupervised
    session's double-forked daemon).

    ``/proc/PID/environ`` is the environment a program was started with: a
    process forked without ``exec`` shows the one its ancestor was started
    with, which has no mark (the registry knows the Python ones). The
    session's own processes carry the mark too (pytest-xdist's workers, and
    the workers of a session a test runs), and the tree walk finds every
    marked process still under the session's first process: only those
    outside it are listed. Under pytest-xdist the mark names the session,
    whose workers share it, so a process must also have been started under
    this process's worker (its ``PYTEST_XDIST_WORKER``). Reads the
    environment of every process this user may read: milliseconds, once, at
    the end of the session.
    """
    mark = f"{DIRECTORY_ENV}={directory}".encode()
    worker = os.environ.get(_XDIST_WORKER_ENV)
    ours = None if worker is None else f"{_XDIST_WORKER_ENV}={worker}".encode()
    first = _first_of_session(mark)
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        variables = _environment(name)
        if variables is None or mark not in variables:
            continue
        workers = [variable for variable in variables if variable.startswith(_XDIST_WORKER_PREFIX)]
        if workers == ([ours] if ours else []) and first not in _ancestors(int(name)):
            found.append(int(name))
    return found


def _first_of_session(mark: bytes) -> int:
    """The session's first process: this one if it was started without ``mark``, else
    the ancestor that set it (the closest one started without it)."""
    if mark not in (_environment("self") or []):
        return os.getpid()
    line = _ancestors(os.getpid())
    for ancestor in line:
        if mark not in (_environment(str(ancestor)) or []):
            return ancestor
    return line[-1] if line else os.getpid()


def _ancestors(pid: int) -> list[int]:
    """The parent of ``pid``, its parent, and so on up to init (none if it ended)."""
    line = []
    while pid > 1:
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                # The command name, in parentheses, may hold any byte: fields follow the last ")".
                pid = int(stat.read().rpartition(b")")[2].split()[1])
        except (OSError, IndexError, ValueError):  # ended meanwhile
            break
        line.append(pid)
    return line


def _environment(pid: str) -> list[bytes] | None:
    """The environment process ``pid`` was started with; None if it ended or is not ours
    to read."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            return environ.read().split(b"\0")
    except OSError:
        return None


def _any_running(roots: list[int], excluded: set[int]) -> bool:
    """Whether a process among ``roots`` and their descendants runs, less ``excluded``."""
    seen: set[int] = set()
    pending = list(roots)
    while pending:
        pid = pending.pop()
        if pid in seen:
            continue
        seen.add(pid)
        if pid not in excluded and os.path.exists(f"/proc/{pid}"):
            return True
        pending += reaper.children(pid)
    return False


def attribute(offspring: list[Offspring], starts: registry.TestStarts) -> list[Offspring]:
    """``offspring``, each attributed to the test that ran when it started.

    A process that joined the session says its test and phase, unless it
    was forked by a process that outlives tests (multiprocessing's
    forkserver), whose environment names the test that started it: the
    test is taken from when the process started, the phase only from a
    process that names that test.
    """
    attributed = []
    for child in offspring:
        running = starts.running_at(child.started)
        if running and child.test.rpartition(" (")[0] != running:
            child = child._replace(test=running)
        attributed.append(child)
    return attributed


def end(offspring: list[Offspring], patience: float = TERMINATE_PATIENCE) -> list[str]:
    """End each process: SIGTERM, up to ``patience`` seconds, then SIGKILL; a line
    for each saying how it ended."""
    opened: list[tuple[Offspring, int]] = []
    for child in offspring:
        pidfd = _open(child)
        if pidfd is not None:
            opened.append((child, pidfd))
    try:
        for _, pidfd in opened:
            send(pidfd, signal.SIGTERM)
        stubborn = _still_running({pidfd for _, pidfd in opened}, patience)
        for pidfd in stubborn:
            send(pidfd, signal.SIGKILL)
        # Gone before this returns: a process still dying would be found again.
        _still_running(stubborn, patience)
        return [
            f"{child.describe()}: "
            + (
                f"killed: it ignored SIGTERM for {patience:g} s"
                if pidfd in stubborn
                else "ended by SIGTERM"
            )
            for child, pidfd in opened
        ]
    finally:
        for _, pidfd in opened:
            os.close(pidfd)


def _still_running(pidfds: set[int], patience: float) -> set[int]:
    """Wait up to ``patience`` seconds for the processes of ``pidfds`` to end; those that
    did not."""
    waiting = set(pidfds)
    until = monotonic_clock() + patience
    while waiting:
        remaining = until - monotonic_clock()
        if remaining <= 0:
            break
        readable, _, _ = select.select(list(waiting), [], [], remaining)
        waiting.difference_update(readable)
    return waiting


def kill(offspring: list[Offspring]) -> None:
    """SIGKILL each process, the youngest first (children before their parents)."""
    for child in reversed(offspring):
        pidfd = _open(child)
        if pidfd is not None:
            send(pidfd, signal.SIGKILL)
            os.close(pidfd)


def kill_tree(directory: Path, pid: int, since: int) -> None:
    """SIGKILL every process ``pid`` started and every process its test started
    (``since``) wherever it went, the youngest first; none by a reused PID.

    All of ``pid``'s descendants, however old: once it is killed, a replacement
    runs its tests, and what its fixtures started is started again.
    """
    kill(
        [
            child
            for child in of_session(directory, pid)
            if child.started >= since or _descends_from(child.process, pid)
        ]
    )


def _descends_from(process: psutil.Process, pid: int) -> bool:
    import psutil

    try:
        return any(parent.pid == pid for parent in process.parents())
    except psutil.Error:
        return False


def _open(child: Offspring) -> int | None:
    """A pidfd of ``child``, if it still runs (the PID not reused meanwhile)."""
    try:
        pidfd = os.pidfd_open(child.process.pid)
    except OSError:
        return None
    if start_time(child.process.pid) != child.started:
        os.close(pidfd)
        return None
    return pidfd


def _read_pids(path: Path) -> list[int]:
    try:
        return [int(word) for word in path.read_text().split()]
    except (FileNotFoundError, ValueError):
        return []


def command_line(process: psutil.Process) -> str:
    """How ``process`` was started, as one line (its name if it has no command line):
    a ``python -c`` program's line breaks are written ``\\n``."""
    return " ".join(process.cmdline()).replace("\n", "\\n") or process.name()
