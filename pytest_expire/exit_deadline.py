"""A process that does not exit once its session is over: said, dumped, and ended.

The session is over (summary and reports written, exit status known), but
the process that ran its tests does not exit: a test leaked a thread that is
not a daemon (interpreter exit waits for it), a ``multiprocessing`` child
that is not one either (``multiprocessing`` joins it at exit), or an exit
handler that blocks. Bare pytest would hang there until the CI job is
cancelled. Here, its watcher gives it ``--expire-exit`` seconds (ini
``expire_exit``; 10 by default, as long as pytest-xdist gives its workers;
0 waits for ever), then says on stderr what still runs, naming the test
during which each leftover thread, process or exit handler started (from the
process's note, ``exit_notes``, and the session's registry, ``offspring``),
with the stacks of the process and of its leftover processes; then kills
them all. The session's exit status is the one its session ended with.

Who watches:

- a supervised session: the supervisor (``supervisor``), in the wait it
  does anyway; the worker leaves its note in a memory file the supervisor
  made (nothing on disk), and the note's appearance starts the clock;
- under pytest-xdist: the controller. A worker exits once the controller
  tears the workers down, after the session; each worker tells the
  controller its PID with its session's end and leaves its note in the
  session's directory as the last thing its session does (a slow plugin's
  ``pytest_unconfigure`` is not charged to its exit). The controller gives
  each the time from the later of its note and the start of the teardown,
  from a thread (its main thread is in execnet's teardown then). xdist's
  own limit (it kills, without a word, a worker that has not exited 10 s
  after the teardown began) is put past this one, so that the stacks come
  first. Killing a worker's children with it also ends execnet's wait for
  the worker's output pipe, which a leaked child holds.

- an unsupervised serial session (see "The session goes on" in
  ``docs/plugin.md``: a thread ran when pytest started), run as the command
  (``pytest``, ``python -m pytest``): the process the user started runs the
  tests, and nothing outside it watches; so a daemon thread of its own,
  armed as the very last thing its session does, waits out the deadline,
  then says what still runs with the stacks, kills the processes it left,
  and ends the process with the session's exit status (``os._exit``). Not
  under ``pytest.main()`` called by a program: that process is the
  program's, which goes on after pytest returns, and may run for as long
  as it likes. Nor can a thread of the process do anything while another
  holds the GIL (an exit handler stuck in C code that never releases it).
"""

from __future__ import annotations

import atexit
import contextlib
import faulthandler
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Collection, Generator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from pytest_expire import dumps, exit_notes, json_report, native_stacks, offspring, reaper, stacks
from pytest_expire.pytest_internals import TerminalReporter, entry_points
from pytest_expire.report import notice
from pytest_expire.session_directory import DIRECTORY_ENV
from pytest_expire.signals import DUMP_SIGNAL, handles, send
from pytest_expire.verdict import sleep
from pytest_expire.watchdog import SessionWatchdog
from pytest_expire.xdist_support import is_controller

#: Where an xdist worker tells the controller its PID, with its session's end.
WORKEROUTPUT_KEY = "pytest_expire_exit_pid"
# How long a dump may take to appear, and how long the note must stay unchanged
# to count as complete (as ``stacks.collect`` waits).
_DUMP_TIMEOUT = 1.0
_DUMP_SETTLE = 0.05
# How often an xdist controller looks at the workers it waits for.
_POLL = 0.1
# What xdist's own limit is put past ours by: time to take the stacks (py-spy
# reads some processes for up to 3 s) and to kill.
_XDIST_MARGIN = 10.0


#: The name under which the supervisor says a session runs unsupervised.
UNSUPERVISED = "expire-unsupervised"


def register(
    config: pytest.Config, seconds: float | None, watchdog: SessionWatchdog | None
) -> None:
    """From ``pytest_configure``: the part of an xdist session this process plays, or its
    own watcher in an unsupervised session run as the command, if any (a supervised
    worker records from ``worker.run``)."""
    if seconds is None:
        return
    if config.pluginmanager.has_plugin(UNSUPERVISED) and _run_as_the_command():
        exit_notes.record()
        config.pluginmanager.register(UnsupervisedExit(seconds), "expire-exit")
        return
    if is_controller(config) and watchdog is not None:
        config.pluginmanager.register(
            ControllerExit(config, watchdog.directory, seconds), "expire-exit"
        )
    elif hasattr(config, "workerinput") and os.environ.get(DIRECTORY_ENV):
        exit_notes.record()
        config.pluginmanager.register(
            WorkerExit(config, Path(os.environ[DIRECTORY_ENV])), "expire-exit"
        )


def note_path(directory: Path, pid: int) -> Path:
    """Where xdist worker ``pid`` leaves its note."""
    return directory / f"exit-{pid}.txt"


class SupervisedExit:
    """In a supervisor: gives its worker ``seconds`` to exit once its session ended."""

    def __init__(self, seconds: float | None, report: Path | None = None) -> None:
        self.seconds = seconds
        #: The session's ``--expire-report`` file, if any: what ended the worker goes there.
        self.report = report
        #: Where the worker leaves its note: a memory file this process shares with it.
        self.note: Path | None = None
        #: Whether this watcher ended the worker.
        self.ended_it = False
        self._memory: int | None = None
        self._due: float | None = None
        if seconds is not None:
            self._memory = os.memfd_create("pytest-expire-exit", os.MFD_CLOEXEC)
            self.note = Path(f"/proc/self/fd/{self._memory}")

    def check(self, pid: int, watchdog: SessionWatchdog | None, timeout: float) -> float:
        """How long the supervisor may wait for worker ``pid`` before it calls again
        (``timeout`` at most); once the worker is overdue, end it first."""
        if self.seconds is None or self._memory is None or self.ended_it:
            return timeout
        now = time.monotonic()
        if self._due is None:
            if os.fstat(self._memory).st_size == 0:
                return timeout  # its session goes on
            self._due = now + self.seconds
        if now < self._due:
            return min(timeout, self._due - now)
        self.ended_it = True
        keep = {pid} if watchdog is None else {pid, watchdog.pid}
        overdue = end_overdue(
            pid,
            f"the process that ran the session (process {pid})",
            self.note,
            watchdog.directory if watchdog is not None else None,
            self.seconds,
            adopted=[child for child in reaper.children() if child not in keep],
        )
        if overdue is not None and self.report is not None:
            # The worker wrote the report as its session ended, before its note.
            error = json_report.add_leftovers(self.report, [overdue.as_json()])
            if error is not None:
                notice(f"could not add what ran after the session to {self.report}: {error}")
        return timeout

    def close(self) -> None:
        if self._memory is not None:
            os.close(self._memory)
            self._memory = None


class WorkerExit:
    """In an xdist worker: tells the controller its PID, and leaves its note as late as
    the session lets it."""

    def __init__(self, config: pytest.Config, directory: Path) -> None:
        self.config = config
        self.directory = directory

    def pytest_sessionfinish(self) -> None:
        # Inside xdist's wrapper, which sends the output with the session's end.
        self.config.workeroutput[WORKEROUTPUT_KEY] = os.getpid()  # type: ignore[attr-defined]

    @pytest.hookimpl(trylast=True)
    def pytest_unconfigure(self) -> None:
        # Without its status: a worker's is not the session's.
        with contextlib.suppress(OSError):  # the directory is gone: the session is over
            exit_notes.leave_note(note_path(self.directory, os.getpid()), None)


def _run_as_the_command() -> bool:
    """Whether pytest runs as the command (``pytest``, ``python -m pytest``: both call
    ``console_main``, ``_console_main`` since pytest 9.1, whose process ends when it
    returns), not under ``pytest.main()`` called by a program, whose process goes on
    after it."""
    entries = {
        entry.__code__
        for entry in (
            getattr(entry_points, "_console_main", None),
            getattr(entry_points, "console_main", None),
        )
        if entry is not None
    }
    frame: FrameType | None = sys._getframe()
    while frame is not None:
        if frame.f_code in entries:
            return True
        frame = frame.f_back
    return False


class UnsupervisedExit:
    """In an unsupervised session run as the command: gives the process ``seconds`` to
    exit once its session is over, from a daemon thread armed as the session's last
    act; then says what still runs, with the stacks, kills the processes it left, and
    ends the process with the session's exit status."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._status: int = pytest.ExitCode.OK
        self._handlers_running = False

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self._status = int(session.exitstatus)

    @pytest.hookimpl(trylast=True)
    def pytest_unconfigure(self, config: pytest.Config) -> None:
        report = config.pluginmanager.get_plugin(json_report.PLUGIN_NAME)
        session = config.pluginmanager.get_plugin("session")
        if isinstance(session, pytest.Session):
            self._status = int(session.exitstatus)
        # Exit handlers run last registered first: this one before the others.
        atexit.register(self._exit_handlers_begin)
        threading.Thread(
            target=self._watch,
            args=(report if isinstance(report, json_report.JsonReport) else None,),
            name="pytest-expire-exit",
            daemon=True,
        ).start()

    def _exit_handlers_begin(self) -> None:
        self._handlers_running = True

    def _watch(self, report: json_report.JsonReport | None) -> None:
        sleep(self.seconds)
        try:
            self._say_and_end_the_rest(report)
        finally:
            # Whatever that met: the process does not outlive its deadline.
            os._exit(self._status)

    def _say_and_end_the_rest(self, report: json_report.JsonReport | None) -> None:
        """Say what still runs of this process, with the stacks; kill the processes it
        left; add it all to the ``report``, if any."""
        pid = os.getpid()
        contents = exit_notes.contents(self._status)
        note = _Note(
            self._handlers_running,
            self._status,
            contents["threads"],
            contents["handlers"],
            contents["children"],
            0,
        )
        with tempfile.TemporaryFile("w+", encoding="utf-8") as dump:
            faulthandler.dump_traceback(dump, all_threads=True)
            dump.seek(0)
            own = dump.read()
        left = [child for child in offspring.of_pids([pid]) if child.process.pid != pid]
        overdue = Overdue.found(
            pid,
            f"the process that ran the session (process {pid})",
            self.seconds,
            note,
            own,
            left,
            None,
            ends_itself=True,
        )
        # Its own threads all tell their names.
        dumps.name_threads(
            overdue.processes,
            pid,
            {thread.ident or 0: thread.name for thread in threading.enumerate()},
        )
        sys.stderr.write(overdue.notice())
        sys.stderr.flush()
        # The report first: a killed child ends the main thread's wait for it,
        # and the process may then exit before this thread's next line.
        if report is not None:
            report.add_leftovers([overdue.as_json()])
        offspring.kill(left)


@dataclass
class _Worker:
    """An xdist worker whose session ended, as the controller knows it."""

    pid: int
    started: int
    workerid: str
    #: When the controller found the worker's note (its session over), if it did.
    noted: float | None = None

    def runs(self) -> bool:
        """Whether it still runs (not a zombie, its PID not reused)."""
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as stat:
                line = stat.read()
        except OSError:
            return False
        fields = line[line.rindex(b")") + 2 :].split()
        return fields[0] != b"Z" and int(fields[19]) == self.started


class ControllerExit:
    """In an xdist controller: gives each worker ``seconds`` to exit once its session is
    over (it left its note) and the teardown began; ends, with its stacks, one that did
    not. A worker that never leaves its note (stuck in its session's end) is left to
    xdist's own limit."""

    def __init__(self, config: pytest.Config, directory: Path, seconds: float) -> None:
        self.config = config
        self.directory = directory
        self.seconds = seconds
        #: The workers whose session ended, as they said.
        self._workers: list[_Worker] = []

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any) -> None:
        output = getattr(node, "workeroutput", None)
        pid = output.get(WORKEROUTPUT_KEY) if isinstance(output, dict) else None
        if isinstance(pid, int):
            found = offspring.of_pids([pid])
            if found and found[0].process.pid == pid:
                workerid = str(node.workerinput.get("workerid", "?"))
                self._workers.append(_Worker(pid, found[0].started, workerid))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_sessionfinish(self) -> Generator[None, object, object]:
        # Around xdist's, which tears the workers down and waits for them to exit.
        dsession = self.config.pluginmanager.get_plugin("dsession")
        nodemanager = getattr(dsession, "nodemanager", None)
        if nodemanager is not None:
            nodemanager.EXIT_TIMEOUT = max(nodemanager.EXIT_TIMEOUT, self.seconds + _XDIST_MARGIN)
        done = threading.Event()
        watch = threading.Thread(
            target=self._watch, args=(done,), name="pytest-expire-exit", daemon=True
        )
        watch.start()
        try:
            return (yield)
        finally:
            done.set()
            watch.join()

    def _watch(self, done: threading.Event) -> None:
        """Until the teardown is over: end each worker that is overdue."""
        began = time.monotonic()
        waiting = list(self._workers)
        said = False
        while waiting and not done.wait(_POLL):
            now = time.monotonic()
            for worker in list(waiting):
                if not worker.runs():
                    waiting.remove(worker)
                    continue
                note = note_path(self.directory, worker.pid)
                if worker.noted is None and _size(note):
                    worker.noted = now
                if worker.noted is None or now < max(worker.noted, began) + self.seconds:
                    continue
                waiting.remove(worker)
                if not said:
                    self._below_the_progress()
                    said = True
                overdue = end_overdue(
                    worker.pid,
                    f"xdist worker {worker.workerid} (process {worker.pid})",
                    note,
                    self.directory,
                    self.seconds,
                )
                report = self.config.pluginmanager.get_plugin(json_report.PLUGIN_NAME)
                if overdue is not None and isinstance(report, json_report.JsonReport):
                    report.add_leftovers([overdue.as_json(worker.workerid)])

    def _below_the_progress(self) -> None:
        """The notices go to stderr, below the progress line (the terminal ends it later)."""
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if isinstance(reporter, TerminalReporter):
            reporter.write_line("")
            reporter.flush()


@dataclass
class _Note:
    """What a process left as its session ended (``exit_notes``), and where its dumps begin."""

    handlers_running: bool
    status: int | None
    threads: list[dict[str, Any]]
    handlers: list[dict[str, Any]]
    #: The children it forked during a test (those it did not, it does not know).
    children: list[dict[str, Any]]
    size: int


def _read_note(path: Path | None) -> _Note | None:
    if path is None:
        return None
    try:
        data = path.read_bytes()
        line, _, _ = data[1:].partition(b"\n")
        note = json.loads(line)
    except (OSError, ValueError):
        return None
    return _Note(
        data[:1] == exit_notes.RUNNING_HANDLERS,
        note.get("status"),
        note.get("threads", []),
        note.get("handlers", []),
        note.get("children", []),
        len(data),
    )


def end_overdue(
    pid: int,
    what: str,
    note_file: Path | None,
    directory: Path | None,
    seconds: float,
    adopted: Collection[int] = (),
) -> Overdue | None:
    """Say on stderr what still runs of process ``pid`` (``what``), which did not exit
    ``seconds`` after its session ended, with the stacks; then kill it and the processes
    its tests left (``directory``: the session's, if it has one; ``adopted``: the
    orphans the caller adopted). What it found, for the JSON report; None if the
    process was gone already."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    try:
        note = _read_note(note_file)
        own = _dump(pidfd, pid, note_file, note) or native_stacks.dump([pid]).get(pid, "")
        # Stopped: it starts nothing more while the rest is read and killed.
        send(pidfd, signal.SIGSTOP)
        if directory is not None:
            left = offspring.of_session(directory, pid)
        else:
            left = [
                child for child in offspring.of_pids([pid, *adopted]) if child.process.pid != pid
            ]
        overdue = Overdue.found(pid, what, seconds, note, own, left, directory)
        sys.stderr.write(overdue.notice())
        sys.stderr.flush()
        offspring.kill(left)
        send(pidfd, signal.SIGKILL)
    finally:
        os.close(pidfd)
    return overdue


def _dump(pidfd: int, pid: int, path: Path | None, note: _Note | None) -> str:
    """The stacks of all threads of process ``pid``, which faulthandler appends to its
    note on the dump signal; "" if it left no note or does not handle the signal."""
    if path is None or note is None or not handles(pid, DUMP_SIGNAL):
        return ""
    send(pidfd, DUMP_SIGNAL)
    size = note.size
    deadline = time.monotonic() + _DUMP_TIMEOUT
    while time.monotonic() < deadline:
        time.sleep(_DUMP_SETTLE)
        now = path.stat().st_size
        if note.size < size == now:
            break
        size = now
    with open(path, "rb") as stream:
        stream.seek(note.size)
        return stream.read().decode("utf-8", "replace")


@dataclass
class Overdue:
    """What still ran of a process that did not exit in time, and the stacks."""

    pid: int
    #: How the notice names it: "the process that ran the session (process 4135)".
    what: str
    seconds: float
    note: _Note | None
    #: The stacks of the process and of the processes it left, parsed.
    processes: list[dumps.Process]
    #: The threads worth a line (see ``_leftover_threads``), as its note lists them.
    threads: list[dict[str, Any]]
    #: The processes its tests left, each with its test.
    left: list[offspring.Offspring]
    #: Whether the process ends itself (an unsupervised session's), not its watcher.
    ends_itself: bool = False

    @classmethod
    def found(
        cls,
        pid: int,
        what: str,
        seconds: float,
        note: _Note | None,
        own: str,
        left: list[offspring.Offspring],
        directory: Path | None,
        ends_itself: bool = False,
    ) -> Overdue:
        """From process ``pid``'s ``note`` and stacks (``own``), and the processes it
        ``left``, whose stacks are read now."""
        left = _named(left, note)
        processes = dumps.parse(_stacks(pid, own, left, directory))
        threads = _leftover_threads(note, processes, pid)
        dumps.name_threads(processes, pid, {thread["ident"]: thread["name"] for thread in threads})
        return cls(pid, what, seconds, note, processes, threads, left, ends_itself)

    @property
    def status(self) -> int | None:
        return self.note.status if self.note is not None else None

    @property
    def handlers_running(self) -> bool:
        return self.note is not None and self.note.handlers_running

    def notice(self) -> str:
        """What still runs and during which test it started, the stacks, the end."""
        where = (
            "it is running its exit handlers (atexit)"
            if self.handlers_running
            else "it has not run its exit handlers yet (exit waits for threads that are not "
            "daemons)"
        )
        status = self.status
        lines = [
            f"pytest-expire: {self.what} did not exit within {self.seconds:g} s of the end of "
            "its session"
            + (f" (exit status {status})" if status is not None else "")
            + f"; {where}. What still runs:"
        ]
        lines += [
            f'  thread "{thread["name"]}" ({"a daemon" if thread["daemon"] else "not a daemon"}), '
            + (
                f"started during {thread['test']}"
                if thread["test"]
                else "started outside the tests"
            )
            for thread in self.threads
        ]
        lines += [f"  {child.describe()}" for child in self.left]
        lines += [
            f"  exit handler {handler['handler']}, registered during {handler['test']}"
            for handler in self._handlers()
        ]
        lines.append(dumps.render(self.processes).rstrip("\n"))
        kept = f"; the session's exit status stands: {status}" if status is not None else ""
        if self.ends_itself:
            lines.append(
                f"pytest-expire: killed the processes it left; process {self.pid} ends now{kept}"
            )
        else:
            lines.append(
                f"pytest-expire: killed process {self.pid} and the processes it left{kept}"
            )
        return "".join(f"{line}\n" for line in lines)

    def _handlers(self) -> list[dict[str, Any]]:
        """The exit handlers the tests registered, when the process is running them."""
        return self.note.handlers if self.note is not None and self.handlers_running else []

    def as_json(self, xdist_worker: str | None = None) -> dict[str, Any]:
        """Its entry in the ``--expire-report`` file's ``leftovers`` (``json_report``)."""
        own = next((process for process in self.processes if process.pid == self.pid), None)
        # Faulthandler's idents are the threads' (py-spy's are native ids).
        threads = {int(t.ident, 16): t for t in own.threads if not t.spied} if own else {}
        found: list[dict[str, Any]] = []
        for thread in self.threads:
            dumped = threads.get(thread["ident"])
            found.append(
                _leftover(
                    "thread",
                    thread["test"],
                    name=thread["name"],
                    daemon=thread["daemon"],
                    thread=dumped.ident if dumped is not None else None,
                    frames=[frame.as_json() for frame in dumped.frames] if dumped else [],
                )
            )
        for child in self.left:
            dump = next((p for p in self.processes if p.pid == child.process.pid), None)
            found.append(
                _leftover(
                    "process",
                    child.test,
                    pid=child.process.pid,
                    command=child.command,
                    threads=[thread.as_json() for thread in dump.threads] if dump else [],
                    notes=[part for part in dump.parts if isinstance(part, str)] if dump else [],
                )
            )
        found += [
            _leftover("exit handler", handler["test"], name=handler["handler"])
            for handler in self._handlers()
        ]
        return {
            "pid": self.pid,
            "command": own.command if own is not None else _command(self.pid),
            "xdist_worker": xdist_worker,
            "exit_deadline": self.seconds,
            "exit_status": self.status,
            "stage": "running exit handlers" if self.handlers_running else "joining threads",
            "found": found,
            "threads": [thread.as_json() for thread in own.threads] if own is not None else [],
        }


def _leftover(kind: str, test: str, **fields: Any) -> dict[str, Any]:
    """An entry of a report's ``found``: every field, those of another kind empty."""
    nodeid, phase = _test_and_phase(test)
    entry: dict[str, Any] = {
        "kind": kind,
        "nodeid": nodeid,
        "phase": phase,
        "name": None,
        "daemon": None,
        "thread": None,
        "frames": [],
        "pid": None,
        "command": None,
        "threads": [],
        "notes": [],
    }
    entry.update(fields)
    return entry


def _test_and_phase(test: str) -> tuple[str | None, str | None]:
    """A test as ``PYTEST_CURRENT_TEST`` names it, "NODEID (PHASE)": its node id and phase."""
    if not test:
        return None, None
    nodeid, _, phase = test.rpartition(" (")
    phase = phase.removesuffix(")")
    if nodeid and phase in ("setup", "call", "teardown"):
        return nodeid, phase
    return test, None


def _named(left: list[offspring.Offspring], note: _Note | None) -> list[offspring.Offspring]:
    """``left``, with the test named for each child its note says was forked during one:
    a forked child's environment is the one its parent was started with, which names
    no test of this session (or one of a session around it)."""
    forked = (
        {(child["pid"], child["started"]): child["test"] for child in note.children} if note else {}
    )
    return [
        child._replace(test=forked.get((child.process.pid, child.started)) or child.test)
        for child in left
    ]


def _stacks(pid: int, own: str, left: list[offspring.Offspring], directory: Path | None) -> str:
    """The stacks of process ``pid`` (``own``) and of the processes it ``left``, each under
    a header that ``dumps`` parses: their dumps where they registered for them
    (``directory``), else what py-spy reads."""
    pids = [child.process.pid for child in left]
    texts = stacks.collect(directory, pids) if directory is not None else {}
    texts |= native_stacks.dump([child for child in pids if child not in texts])
    texts[pid] = own
    unread = "(no stacks: it did not register for dumps, and py-spy did not read it)\n"
    return "\n".join(
        f"--- process {process}: {command} ---\n{texts.get(process) or unread}"
        for process, command in [(pid, _command(pid)), *((c.process.pid, c.command) for c in left)]
    )


def _leftover_threads(
    note: _Note | None, processes: list[dumps.Process], pid: int
) -> list[dict[str, Any]]:
    """The threads of process ``pid`` worth a line: those its note lists that still run
    (as its dump shows, if it was dumped) and that started during a test or keep it from
    exiting (not daemons)."""
    if note is None:
        return []
    running = {
        int(thread.ident, 16)
        for process in processes
        if process.pid == pid
        for thread in process.threads
        if not thread.spied
    }
    return [
        thread
        for thread in note.threads
        if (not running or thread["ident"] in running) and (thread["test"] or not thread["daemon"])
    ]


def _size(path: Path) -> int:
    """The size of the file at ``path``; 0 if there is none."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"
