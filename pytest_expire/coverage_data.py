"""Coverage data that survives a killed test process, and workers that coverage.py does not see.

coverage.py keeps what it measures in memory and writes it to its data file
when it saves: at the end of ``coverage run``, at exit, when pytest-cov's
session ends. A process the watchdog kills never gets there, so the tests
that passed in it before the hung one lose their coverage. And a supervised
session runs in forked workers that end with ``os._exit()``: coverage.py
notices the fork at the worker's first write and starts a data file anew,
which for a data file without a per-process suffix (``coverage run`` without
``-p``) is the very file the supervisor saves at its exit, so the two erase
each other's data (0 % coverage, no kill needed).

So, whenever coverage.py measures the process (started by ``coverage run``,
by pytest-cov, by ``COVERAGE_PROCESS_START``, by ``[run] patch = fork``):

- a supervised worker records into a data file of its own beside the
  coverage's one, ``<data file>.<host>.pid<N>.pytest-expire``
  (:func:`worker_started`), and saves it as it ends (:func:`worker_ending`);
- after each test with a deadline (the tests a kill may follow), in any
  process of the session, what was measured is written to the data file
  (:func:`test_ended`): only the lines measured since the last write;
- once its last worker ended, the supervisor combines the workers' files
  into its own data, before coverage.py saves it, where that data is a
  file a report reads as it is (no per-process suffix); where it has one
  (pytest-cov, ``coverage run -p``), the combine that reads it (pytest-cov's
  at the end of the last worker, ``coverage combine``) finds the workers'
  files beside it (:func:`workers_ended`);
- under pytest-xdist, which replaces a dead worker with one whose
  pytest-cov erases every parallel data file as it starts, the xdist
  controller sets the dead worker's data file aside and puts it back for
  the combine (:func:`set_aside`, :func:`put_back`).

coverage.py's public API has no way to write what was measured so far
without a walk of the source tree for files never run (``get_data()``, some
milliseconds per test), nor to give a forked process a data file of its
own: both use coverage.py's internals, here only, behind
:func:`_internals`. Where they are not what this module knows, the user is
told on stderr what is lost and what to do, and coverage.py runs as it
would without this module.

coverage.py is never imported here: only found in ``sys.modules``, so a
session that does not measure coverage pays nothing.
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
import shutil
import socket
import sys
import warnings
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pytest_expire.report import notice

if TYPE_CHECKING:
    from coverage import Coverage, CoverageData
    from coverage.collector import Collector

#: The end of the name of a worker's data file.
TAG = "pytest-expire"
#: The start of the name of a dead xdist worker's data file, while it is set aside.
_SET_ASIDE = "coverage"

# Whether this process said already that coverage.py's internals are not
# what this module knows: once is enough.
_told = False


class WorkerCoverage:
    """The coverage measurement of a supervised worker, in a data file of its own.

    Also a plugin of the worker's session: what was measured is written
    once the tests ran, before pytest-cov combines the data files for its
    report (which it does in the same hook), even where the measurement is
    not pytest-cov's own: ``[run] patch = fork`` stops pytest-cov's in a
    fork, and measures with one of its own.
    """

    def __init__(self, coverage: Coverage) -> None:
        self.coverage = coverage

    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_runtestloop(self) -> Generator[None, object, object]:
        try:
            return (yield)
        finally:
            test_ended()


def _current() -> Coverage | None:
    """The coverage.py measurement started in this process, if coverage.py is imported."""
    module = sys.modules.get("coverage")
    if module is None:
        return None
    return module.Coverage.current()  # type: ignore[no-any-return]


def _measured() -> tuple[Coverage, CoverageData, Collector] | None:
    """The coverage.py instance that measures this process, with its internals
    (``_internals``); None if none measures, or if its internals are not what this
    module knows."""
    coverage = _current()
    if coverage is None:
        return None
    internals = _internals(coverage)
    if internals is None:
        return None
    return coverage, *internals


def _internals(coverage: Coverage) -> tuple[CoverageData, Collector] | None:
    """coverage.py's private parts this module needs: its data and its collector.

    ``Coverage._data`` (the data file it writes) and ``Coverage._collector``
    (what the tracers measured, with ``flush_data()`` and ``use_data()``)
    are private, and have been since coverage.py 5.0. None, and the user
    told, where they are not there, or where the data lives in memory
    only (``no_disk``), which no other process can read.
    """
    global _told
    data = getattr(coverage, "_data", None)
    collector = getattr(coverage, "_collector", None)
    if (
        data is not None
        and collector is not None
        and hasattr(data, "base_filename")
        and hasattr(data, "data_filename")
        and hasattr(collector, "flush_data")
        and hasattr(collector, "use_data")
        and not getattr(coverage, "_no_disk", False)
    ):
        return data, collector
    if not _told:
        _told = True
        module = sys.modules.get("coverage")
        version = getattr(module, "__version__", "?")
        notice(
            f"coverage.py {version} is not one whose data pytest-expire can write as the "
            "tests go (its internals changed, or its data is kept in memory only): the "
            "coverage of the tests that ran in a process the watchdog kills is lost, and in "
            "a supervised session a data file without a suffix may end up empty; run "
            "coverage in parallel mode (coverage run -p, then coverage combine), or with "
            "-p no:expire, or with a coverage.py release pytest-expire knows"
        )
    return None


def _worker_file(base: str, pid: int) -> str:
    """The data file of the supervised worker ``pid`` for the coverage data file ``base``.

    Named as coverage.py names a parallel data file (``<base>.<suffix>``), so
    that ``coverage combine`` and pytest-cov's combine find it.
    """
    return f"{base}.{_suffix(pid)}"


def _suffix(pid: int) -> str:
    return f"{socket.gethostname().replace('.', '_')}.pid{pid}.{TAG}"


def workers_starting() -> None:
    """In the supervisor, before its first worker: say now, once for all its workers,
    if coverage.py measures and its internals are not what this module knows."""
    _measured()


def worker_started() -> WorkerCoverage | None:
    """In a just-forked supervised worker: measure into a data file of its own; None: no coverage.

    The measurement goes on with the coverage.py instance the worker
    inherited (the lines measured before the fork included: the supervisor
    saves them too, and a combine counts a line once), or with the one
    ``[run] patch = fork`` started in the fork.
    """
    measured = _measured()
    if measured is None:
        return None
    coverage, inherited, collector = measured
    module = sys.modules["coverage"]
    try:
        data: CoverageData = module.CoverageData(
            basename=inherited.base_filename(), suffix=_suffix(os.getpid())
        )
        # Private (see _internals): what Coverage._init_data and start() do.
        collector.use_data(data, coverage.get_option("run:context"))  # type: ignore[arg-type]
        coverage._data = data
    except Exception as error:  # the session comes first
        notice(f"process {os.getpid()} measures coverage into its supervisor's data: {error!r}")
        return None
    return WorkerCoverage(coverage)


def test_ended() -> None:
    """Write what this process measured since the last write to its data file.

    A process the watchdog kills then loses at most what its last test
    measured. Only the lines measured since the last write are written; a
    test that measured nothing costs a look at the tracers.
    """
    measured = _measured()
    if measured is None:
        return
    try:
        measured[2].flush_data()
    except Exception as error:  # the session comes first; coverage.py's own save will say it
        notice(f"the coverage data of process {os.getpid()} could not be written: {error!r}")


def worker_ending(measured: WorkerCoverage | None) -> None:
    """As a supervised worker ends: save its data, unless its owner stopped the
    measurement and saved it already (pytest-cov does, then combines)."""
    if measured is None or _current() is not measured.coverage:
        return
    try:
        measured.coverage.save()
    except Exception as error:  # the session's exit status comes first
        notice(f"the coverage data of process {os.getpid()} could not be saved: {error!r}")


def workers_ended(pids: list[int], plugins: pytest.PytestPluginManager) -> None:
    """In the supervisor, after its last worker: combine the workers' data into its own.

    Only where its data file has no per-process suffix (``coverage run``
    without ``-p``): a report reads that file as it is, and without the
    workers' data it would show only what ran in this process (pytest's
    start). Where it has one, whatever reads it combines first and finds
    the workers' files beside it (``coverage combine``), except pytest-cov's
    (among ``plugins``): pytest-cov combines them in the last worker,
    and one left means that its session ended before its report, with no
    data of its own saved either: such files are removed, or the next
    session's report would count them.
    """
    measured = _measured()
    if measured is None:
        return
    coverage, data, _ = measured
    if pids and coverage is not _pytest_cov(plugins):
        # Whatever saves this process's data (coverage run, an exit handler)
        # must not warn of what the workers did: this process imported none of
        # the tests' code, and may have measured nothing. The workers warned
        # when they saved theirs. (Private, but mere flags, which pytest-cov
        # sets in its xdist controller for the same reason.)
        coverage._warn_no_data = False
        coverage._warn_unimported_source = False
    paths = [path for pid in pids if Path(path := _worker_file(data.base_filename(), pid)).exists()]
    if not paths:
        return
    if coverage is _pytest_cov(plugins):
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        return
    if data.data_filename() != data.base_filename():
        return
    exceptions = sys.modules["coverage.exceptions"]
    # Quietly: coverage run's "Combined 2 files" on stderr, and the warnings
    # the flags above are for.
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", exceptions.CoverageWarning)
        coverage.combine(data_paths=paths)


def set_aside(pid: int, directory: Path) -> None:
    """In an xdist controller, as its worker ``pid`` is found dead: move the data files
    that worker wrote as its tests ended into ``directory``, out of its
    replacement's way.

    pytest-cov erases every parallel data file as an xdist worker starts,
    and xdist replaces a dead worker at once. The files are found by the
    name coverage.py gives a process's data file (``<data file>.<host>.pid<N>.X<random>x``).
    """
    measured = _measured()
    if measured is None:
        return
    pattern = f"{glob.escape(measured[1].base_filename())}.*.pid{pid}.*"
    for number, path in enumerate(sorted(glob.glob(pattern))):
        shutil.move(path, directory / f"{_SET_ASIDE}.pid{pid}.{number}")


def put_back(directory: Path) -> None:
    """In an xdist controller, once its workers are down: the data files set aside
    (:func:`set_aside`) go back beside the others, for the combine that follows."""
    measured = _measured()
    if measured is None:
        return
    base = measured[1].base_filename()
    host = socket.gethostname().replace(".", "_")
    for path in sorted(directory.glob(f"{_SET_ASIDE}.pid*")):
        process = path.name.removeprefix(f"{_SET_ASIDE}.")
        shutil.move(path, f"{base}.{host}.{process}.{TAG}")


def _pytest_cov(plugins: pytest.PytestPluginManager) -> object:
    """pytest-cov's measurement in this process, if it measures (what its ``cov``
    fixture returns), else None."""
    controller = getattr(plugins.get_plugin("_cov"), "cov_controller", None)
    return getattr(controller, "cov", None)
