"""Stack dumps as a person reads them, and as a program reads them.

The watchdog's diagnosis of a test (``diagnose``) is raw text: a header per
process, then what faulthandler wrote (each thread, most recent call first)
and what py-spy read. Raw, the frame where the test hangs hides among 40
frames of pytest and pluggy, behind the threads pytest's plugins started,
under the full command line of the test's process. Here it is parsed into
processes, threads and frames (:func:`parse`, which the JSON report keeps
whole), and rendered for the terminal and JUnit (:func:`render`): the
test's own thread first, threads by name where they are known, and each
run of frames of pytest, pluggy, this plugin, pytest-xdist and execnet
folded into one line.

Lines that are neither a header nor a frame (py-spy's notes, "no stacks"
notices) are kept as they are: nothing the watchdog wrote is dropped from
the rendering but folded frames.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePath

#: The packages whose frames are folded, by the directory they live in.
_FOLDED = {
    "_pytest": "pytest",
    "pytest": "pytest",
    "pluggy": "pluggy",
    "pytest_expire": "pytest-expire",
    "xdist": "pytest-xdist",
    "execnet": "execnet",
}
# The frames below pytest's main: how it was started.
_STARTUP_FILES = {"<frozen runpy>": "runpy", "runpy.py": "runpy"}
# The function every test phase runs in (see ``interrupt``): its thread is the test's.
_PHASE_FRAME = ("runner.py", "from_call")

_PROCESS = re.compile(
    r"^--- process (?P<pid>\d+)(?: \((?P<role>the test's process, )?parent (?P<ppid>\d+)\))?"
    r": (?P<command>.*) ---$"
)
_FAULTHANDLER_THREAD = re.compile(
    r"^(?P<current>Current thread|Thread) (?P<ident>0x[0-9a-fA-F]+) .*\(most recent call first\):$"
)
_PY_SPY_THREAD = re.compile(
    r'^Thread (?P<ident>0x[0-9a-fA-F]+|\d+) \([^)]*\)(?:: "(?P<name>.*)")?$'
)
_FAULTHANDLER_FRAME = re.compile(
    r'^  File "(?P<file>.*)", line (?P<line>\d+|\?\?\?) in (?P<function>.*)$'
)
_PY_SPY_FRAME = re.compile(r"^ {4}(?P<function>\S.*?) \((?P<file>.*):(?P<line>\d+)\)$")


@dataclass
class Frame:
    file: str
    line: int | None
    function: str
    #: The line it was read from, as its writer wrote it.
    text: str = field(default="", compare=False)

    @property
    def folded_as(self) -> str | None:
        """The package this frame is in if its frames are folded, else None."""
        path = PurePath(self.file)
        startup = _STARTUP_FILES.get(path.name)
        if startup is not None:
            return startup
        return next((_FOLDED[part] for part in reversed(path.parts[:-1]) if part in _FOLDED), None)

    def as_json(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "function": self.function}


@dataclass
class Thread:
    ident: str
    #: Its name, where known (py-spy reads it; the test's process tells its own).
    name: str | None
    #: The thread that took the dump signal.
    current: bool
    #: Its frames, innermost first, and the lines between them that are not
    #: Python frames (py-spy's native frames).
    lines: list[Frame | str] = field(default_factory=list)
    #: Written by py-spy (else by faulthandler): rendered in py-spy's format.
    spied: bool = False
    #: Its first line, as written.
    header: str = ""

    @property
    def frames(self) -> list[Frame]:
        return [line for line in self.lines if isinstance(line, Frame)]

    @property
    def runs_a_test(self) -> bool:
        return any(
            PurePath(frame.file).name == _PHASE_FRAME[0] and frame.function == _PHASE_FRAME[1]
            for frame in self.frames
        )

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.ident,
            "name": self.name,
            "current": self.current,
            "frames": [frame.as_json() for frame in self.frames],
            # py-spy's native frames, among others: kept, as they read.
            "notes": [line for line in self.lines if isinstance(line, str)],
        }


@dataclass
class Process:
    pid: int
    ppid: int | None
    command: str
    #: Whether it is the process that runs the test (not one the test started).
    test_process: bool
    #: Its threads, and its lines that are not a thread's (notes, py-spy's headers),
    #: in the order written.
    parts: list[Thread | str] = field(default_factory=list)

    @property
    def threads(self) -> list[Thread]:
        return [part for part in self.parts if isinstance(part, Thread)]

    def as_json(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "parent": self.ppid,
            "command": self.command,
            "test_process": self.test_process,
            "threads": [thread.as_json() for thread in self.threads],
            "notes": [part for part in self.parts if isinstance(part, str)],
        }


def parse(text: str) -> list[Process]:
    """The processes, threads and frames of a diagnosis written by ``diagnose``.

    Blank lines (faulthandler's between threads) are dropped: :func:`render`
    separates threads itself.
    """
    processes: list[Process] = []
    thread: Thread | None = None
    for line in text.splitlines():
        header = _PROCESS.match(line)
        if header is not None:
            processes.append(
                Process(
                    pid=int(header["pid"]),
                    ppid=int(header["ppid"]) if header["ppid"] else None,
                    command=header["command"],
                    test_process=bool(header["role"]),
                )
            )
            thread = None
        elif line.strip():
            if not processes:  # text before any header: a process of its own, unnamed
                processes.append(Process(pid=0, ppid=None, command="", test_process=False))
            thread = _add_line(processes[-1], thread, line)
        else:
            thread = None
    return processes


def _add_line(process: Process, thread: Thread | None, line: str) -> Thread | None:
    """Add ``line`` to ``process``: a new thread, a line of ``thread``, or a line of its
    own. Returns the thread that the next line may go on."""
    found = _FAULTHANDLER_THREAD.match(line)
    if found is not None:
        thread = Thread(found["ident"], None, found["current"] != "Thread")
        process.parts.append(thread)
        return thread
    found = _PY_SPY_THREAD.match(line)
    if found is not None:
        thread = Thread(found["ident"], found["name"], False, spied=True, header=line)
        process.parts.append(thread)
        return thread
    if thread is not None:
        frame = (_PY_SPY_FRAME if thread.spied else _FAULTHANDLER_FRAME).match(line)
        if frame is not None:
            number = frame["line"]
            thread.lines.append(
                Frame(
                    frame["file"],
                    int(number) if number.isdigit() else None,
                    frame["function"],
                    line,
                )
            )
            return thread
        if thread.spied and line.startswith(" "):
            thread.lines.append(line)
            return thread
    process.parts.append(line)
    return None


def name_threads(processes: list[Process], pid: int, names: dict[int, str]) -> None:
    """Name the threads of process ``pid`` from ``names`` (thread ident to name), as
    that process knows them (faulthandler writes no names)."""
    for process in processes:
        if process.pid == pid:
            for thread in process.threads:
                if thread.name is None and not thread.spied:
                    thread.name = names.get(int(thread.ident, 16))


def render(processes: list[Process]) -> str:
    """The dump as a person reads it: in each process the thread that runs the test
    first, threads named, folded frames; the test's process without its command line."""
    out: list[str] = []
    for process in processes:
        if process.pid:
            what = "the test's process" if process.test_process else shortened(process.command)
            out.append(f"--- process {process.pid}: {what} ---")
        for part in _test_thread_first(process.parts):
            out += [part] if isinstance(part, str) else [*_render_thread(part), ""]
    return "\n".join(out).rstrip("\n") + "\n" if out else ""


def _test_thread_first(parts: list[Thread | str]) -> list[Thread | str]:
    """``parts``, the thread that runs a test moved before the other threads
    (faulthandler writes the thread that took the signal last)."""
    threads = [part for part in parts if isinstance(part, Thread)]
    testing = next((thread for thread in threads if thread.runs_a_test), None)
    if testing is None or testing is threads[0]:
        return parts
    first = parts.index(threads[0])
    rest = [part for part in parts if part is not testing]
    return [*rest[:first], testing, *rest[first:]]


def _render_thread(thread: Thread) -> list[str]:
    if thread.spied:  # py-spy's own words: its header names the thread already
        lines = [thread.header]
    else:
        name = f' "{thread.name}"' if thread.name else ""
        role = ", the test's" if thread.runs_a_test else ""
        lines = [f"Thread {thread.ident}{name}{role} (most recent call first):"]
    folded: list[str] = []
    for line in thread.lines:
        package = line.folded_as if isinstance(line, Frame) else None
        if package is not None:
            folded.append(package)
            continue
        lines += _fold(folded)
        folded = []
        lines.append(line.text if isinstance(line, Frame) else line)
    return lines + _fold(folded)


def _fold(packages: list[str]) -> list[str]:
    """One line for a run of folded frames, naming their packages in order of appearance."""
    if not packages:
        return []
    frames = "frame" if len(packages) == 1 else "frames"
    return [f"  ({len(packages)} {frames} of {', '.join(dict.fromkeys(packages))})"]


def where_it_hung(processes: list[Process]) -> Frame | None:
    """The innermost frame that is not folded, of the thread that runs the test in the
    test's process (else in the first process): where a report points."""
    candidates = [p for p in processes if p.test_process] or processes[:1]
    for process in candidates:
        for thread in process.threads:
            if thread.runs_a_test:
                return next((f for f in thread.frames if f.folded_as is None), None)
    return None


def shortened(command: str, limit: int = 200) -> str:
    """``command``, cut to ``limit`` characters: a report lists many."""
    return command if len(command) <= limit else command[: limit - 3] + "..."
