"""What the processes of a session share: the environment that names it, and its directory.

The process that starts the session's watchdog (``watchdog``) makes a
directory for it and announces both in the environment, which every process
of the session inherits (xdist workers, a supervisor's workers, whatever a
test starts). Each file in the directory is written by one process and read
by another, so where it is and what it holds is said once, here, for those
that no single module owns:

- ``watchdog.sock``: where the watchdog listens (:func:`socket_path`);
- ``interrupted-PID.txt``, ``killed-PID.txt``: the stacks the watchdog took
  at the interrupt or the kill of process PID's test, for its report
  (:func:`write_diagnosis`, :func:`read_diagnosis`, :func:`read_kill`);
- ``child-expiries-PID.txt``: the stacks of the processes whose own timers
  expired, for the report of the test process PID runs
  (:func:`take_child_expiries`);
- ``supervised``: a process that survives a killed test reports it
  (:func:`mark_supervised`);
- ``helpers.pids``, ``reaper.pid``: the session's own processes, and its
  child subreaper (:func:`record_helpers`, :func:`helpers_path`,
  :func:`record_reaper`, :func:`reaper_path`);
- ``xdist-WORKERID.json``: what an xdist worker tells its controller of
  itself (:func:`xdist_worker_path`).

The other files belong to the module that writes and reads them:
``verdict-PID.bin`` (``verdict``), ``stacks-PID-START.txt`` (``stacks``),
the registry's entries (``registry``), ``exit-PID.txt`` (``exit_deadline``)
and coverage data set aside (``coverage_data``).

The watchdog process imports this module too: it imports nothing of pytest's.
"""

from __future__ import annotations

from pathlib import Path

#: Where the processes of a session find its watchdog's timer server (its address).
ADDRESS_ENV = "PYTEST_EXPIRE_ADDRESS"
#: Where the processes of a session find the directory they share with its watchdog.
DIRECTORY_ENV = "PYTEST_EXPIRE_DIRECTORY"
#: The PID of the process that started the watchdog: its workers are its children.
OWNER_ENV = "PYTEST_EXPIRE_OWNER"


def socket_path(directory: Path) -> Path:
    """Where the watchdog of the session with ``directory`` listens."""
    return directory / "watchdog.sock"


def diagnosis_path(directory: Path, pid: int, killed: bool = False) -> Path:
    """Where the stacks taken at the interrupt (or the kill) of process ``pid``'s test go."""
    return directory / f"{'killed' if killed else 'interrupted'}-{pid}.txt"


def write_diagnosis(
    directory: Path, pid: int, token: float, text: str, killed: bool = False
) -> None:
    """Leave the stacks of the test whose deadline is ``token`` for its report, atomically.

    The token comes first, so that a later test of the same process never
    shows an earlier one's stacks.
    """
    write_atomically(diagnosis_path(directory, pid, killed), f"{token.hex()}\n{text}")


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` at once: a reader finds the old text or the new
    one, never a file truncated and not yet written. The text is written first
    beside it, under a hidden name that no reader's pattern matches."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def read_diagnosis(
    directory: Path, pid: int, killed: bool = False, token: float | None = None
) -> str | None:
    """The stacks taken at the interrupt (or the kill) of process ``pid``'s test.

    With ``token``, only those about that deadline. None if there are none
    (yet). The file is removed once read: the next test of that process to
    expire, or a later process with the same PID, must never find it.
    """
    taken = _take_diagnosis(diagnosis_path(directory, pid, killed), token)
    return None if taken is None else taken[1]


def read_kill(directory: Path, pid: int) -> tuple[float, str] | None:
    """The token of the deadline at which the watchdog killed process ``pid``'s test (the
    session's deadline, or the test's own: ``session_deadline``), and the stacks it took
    then; None if it killed none. Removed once read, as :func:`read_diagnosis` does."""
    return _take_diagnosis(diagnosis_path(directory, pid, killed=True), None)


def _take_diagnosis(path: Path, token: float | None) -> tuple[float, str] | None:
    try:
        header, _, text = path.read_text(encoding="utf-8").partition("\n")
    except FileNotFoundError:
        return None
    if token is not None and header != token.hex():
        return None  # about another deadline: the one asked about has none yet
    path.unlink(missing_ok=True)
    return float.fromhex(header), text


def child_expiries_path(directory: Path, pid: int) -> Path:
    """Where the stacks of the processes whose own timers expired go, for the report of
    the test that process ``pid`` runs (the test that started them)."""
    return directory / f"child-expiries-{pid}.txt"


def take_child_expiries(directory: Path, pid: int) -> str:
    """The stacks written to :func:`child_expiries_path` since last taken; "" if none."""
    path = child_expiries_path(directory, pid)
    try:
        # Renamed first: the watchdog may be appending another child's stacks.
        taken = path.rename(path.with_suffix(".taken"))
    except FileNotFoundError:
        return ""
    text = taken.read_text(encoding="utf-8", errors="replace")
    taken.unlink()
    return text


def mark_supervised(directory: Path) -> None:
    """Say that a killed test is reported by a process that survives it (with its stacks)."""
    (directory / "supervised").touch()


def is_supervised(directory: Path) -> bool:
    return (directory / "supervised").exists()


def helpers_path(directory: Path) -> Path:
    """Where the session lists its own processes (the watchdog's), never diagnosed or killed."""
    return directory / "helpers.pids"


def record_helpers(directory: Path, pids: list[int]) -> None:
    """List the session's own processes at :func:`helpers_path`, atomically: while
    the watchdog is started again, a diagnosis of a test's processes that read
    an empty list would take the new watchdog for one of them."""
    write_atomically(helpers_path(directory), " ".join(map(str, pids)))


def reaper_path(directory: Path) -> Path:
    """Where the session's child subreaper (its supervisor) leaves its PID."""
    return directory / "reaper.pid"


def record_reaper(directory: Path, pid: int) -> None:
    """Leave the PID of the session's child subreaper at :func:`reaper_path`,
    atomically (it is written again for each worker, while others may read it)."""
    write_atomically(reaper_path(directory), str(pid))


def xdist_worker_path(directory: Path, workerid: str) -> Path:
    """Where xdist worker ``workerid`` tells the controller its PID and its deadlines."""
    return directory / f"xdist-{workerid}.json"
