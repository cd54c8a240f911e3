"""Coverage measured in a supervised session is the coverage bare pytest measures.

Each session here is real (a subprocess), measured by coverage.py as a user
measures one: by pytest-cov, by ``coverage run`` (with or without ``-p``, with
``[run] patch = fork``), by ``coverage.process_startup()``. The suite under
measurement has a test that holds the GIL in C code until its worker is
killed, between two tests whose lines must be counted: the one before ran
in the worker that was killed.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from snippets import ARGS, HOLD_THE_GIL_FOREVER

from pytest_expire import coverage_data

#: coverage.py before 7.18 (the last that runs on Python 3.10 is 7.16) does not
#: restart its measurement in a fork under ``patch = fork`` alone: a fork, and so
#: a supervised session's worker, measures nothing (docs/plugin.md, "Coverage").
PATCH_FORK_RESTARTS = tuple(
    int(part) for part in importlib.metadata.version("coverage").split(".")[:2]
) >= (7, 18)
needs_patch_fork = pytest.mark.skipif(
    not PATCH_FORK_RESTARTS, reason="this coverage.py does not measure a fork under patch = fork"
)

coverage = pytest.importorskip("coverage")

MOD = """\
def first():
    return 1


def second():
    return 2


def third():
    return 3
"""

#: The lines of mod.py the suite runs: its definitions, first() and third().
RUN_OF_MOD = [1, 2, 5, 9, 10]

SUITE_WITH_A_KILL = (
    "import mod\n"
    + HOLD_THE_GIL_FOREVER
    + textwrap.dedent(
        """

        def test_a():
            assert mod.first() == 1

        def test_hangs():
            hold_the_gil_forever()

        def test_c():
            assert mod.third() == 3
        """
    )
)

SUITE = textwrap.dedent(
    """
    import mod

    def test_a():
        assert mod.first() == 1

    def test_c():
        assert mod.third() == 3
    """
)


def _line_of(text: str, suite: str = SUITE_WITH_A_KILL) -> int:
    """The number of the first line of ``suite`` that holds ``text``."""
    return next(n for n, line in enumerate(suite.splitlines(), 1) if text in line)


def _project(directory: Path, suite: str) -> None:
    (directory / "mod.py").write_text(MOD)
    (directory / "test_suite.py").write_text(suite)


def _run(directory: Path, *command: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, *command],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.stdout + result.stderr


def _executed(directory: Path, *report: str) -> dict[str, list[int]]:
    """The lines the data file in ``directory`` counts as run, by file (coverage json)."""
    _run(directory, "-m", "coverage", "json", "-q", "-o", "coverage.json", *report)
    files = json.loads((directory / "coverage.json").read_text())["files"]
    return {name: sorted(file["executed_lines"]) for name, file in files.items()}


def _data_files(directory: Path) -> list[str]:
    """The coverage data files in ``directory``: ``.coverage`` and parallel ones."""
    return sorted(
        path.name
        for path in directory.glob(".coverage*")
        if path.name == ".coverage" or path.name.startswith(".coverage.")
    )


def _session(directory: Path, *measured: str, pytest_args: tuple[str, ...] = ARGS) -> str:
    """A session of pytest in ``directory`` under ``measured`` (a coverage command line)."""
    return _run(directory, *measured, "-m", "pytest", "-p", "no:randomly", *pytest_args)


def test_pytest_cov_counts_the_tests_before_a_kill(pytester: pytest.Pytester) -> None:
    pytest.importorskip("pytest_cov")
    _project(pytester.path, SUITE_WITH_A_KILL)
    result = pytester.runpytest_subprocess(
        *ARGS, "-p", "no:randomly", "--cov=mod", "--cov-report=json:cov.json", timeout=120
    )
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*test_hangs - expired after 0.5 s (in call); killed*"])
    report = json.loads((pytester.path / "cov.json").read_text())["files"]
    assert sorted(report["mod.py"]["executed_lines"]) == RUN_OF_MOD
    # The killed worker's data file went into the report, and from the disk.
    assert _data_files(pytester.path) == [".coverage"]


def test_pytest_cov_under_xdist_counts_the_tests_before_a_kill(pytester: pytest.Pytester) -> None:
    """xdist replaces the killed worker, and pytest-cov's replacement erases the data
    files it finds as it starts: the killed one's is set aside until the combine."""
    pytest.importorskip("pytest_cov")
    pytest.importorskip("xdist")
    _project(pytester.path, SUITE_WITH_A_KILL)
    result = pytester.runpytest_subprocess(
        *ARGS,
        *("-p", "no:randomly", "-n", "2", "--dist", "loadfile"),
        *("--cov=mod", "--cov-report=json:cov.json"),
        timeout=120,
    )
    result.assert_outcomes(passed=2, failed=1)
    report = json.loads((pytester.path / "cov.json").read_text())["files"]
    assert sorted(report["mod.py"]["executed_lines"]) == RUN_OF_MOD
    assert _data_files(pytester.path) == [".coverage"]


def test_an_interrupted_pytest_cov_session_leaves_no_data_files(
    pytester: pytest.Pytester,
) -> None:
    """pytest-cov saves nothing of a session interrupted before its report; the data
    files of its workers would count in the next session's report."""
    pytest.importorskip("pytest_cov")
    _project(pytester.path, SUITE_WITH_A_KILL + "\ndef test_z():\n    raise KeyboardInterrupt\n")
    result = pytester.runpytest_subprocess(*ARGS, "-p", "no:randomly", "--cov=mod", timeout=120)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*test_hangs*expired after 0.5 s*"])
    assert _data_files(pytester.path) == []


@pytest.mark.parametrize(
    "rc",
    ["", pytest.param("[run]\npatch = fork\n", marks=needs_patch_fork)],
    ids=["", "patch = fork"],
)
def test_pytest_cov_without_a_kill_measures_as_bare_pytest(
    pytester: pytest.Pytester, rc: str
) -> None:
    """With patch = fork, coverage.py stops pytest-cov's measurement in the worker and
    starts one of its own, which pytest-cov's report counts all the same."""
    pytest.importorskip("pytest_cov")
    _project(pytester.path, SUITE)
    (pytester.path / ".coveragerc").write_text(rc)
    runs = {}
    for name, plugin in (("supervised", "expire"), ("bare", "no:expire")):
        result = pytester.runpytest_subprocess(
            "-p", plugin, "--cov=.", f"--cov-report=json:{name}.json", timeout=120
        )
        result.assert_outcomes(passed=2)
        files = json.loads((pytester.path / f"{name}.json").read_text())["files"]
        runs[name] = {file: sorted(data["executed_lines"]) for file, data in files.items()}
    assert runs["supervised"] == runs["bare"]
    assert runs["bare"]["mod.py"] == RUN_OF_MOD


@pytest.mark.parametrize("kill", [False, True], ids=["no deadline", "a kill"])
def test_coverage_run_measures_as_bare_pytest(pytester: pytest.Pytester, kill: bool) -> None:
    """Without -p: one data file, which the supervisor and its workers once erased
    in turn (0 %, without any kill). Without a deadline, the worker writes its
    data only as it ends: what ran after the tests too."""
    _project(pytester.path, SUITE_WITH_A_KILL if kill else SUITE)
    if not kill:
        (pytester.path / "conftest.py").write_text(
            "import mod\n\ndef pytest_unconfigure():\n    mod.second()\n"
        )
    _session(pytester.path, "-m", "coverage", "run", "--source=.", pytest_args=ARGS if kill else ())
    measured = _executed(pytester.path)
    assert _data_files(pytester.path) == [".coverage"]
    assert measured["mod.py"] == (RUN_OF_MOD if kill else [1, 2, 5, 6, 9, 10])
    if kill:
        suite = measured["test_suite.py"]
        assert {_line_of("mod.first()"), _line_of("mod.third()")} <= set(suite)
        # Only what the killed test ran itself is lost, with its worker.
        assert _line_of("libc.pthread_mutex_lock(mutex)") not in suite
    else:
        (pytester.path / ".coverage").unlink()
        _session(
            pytester.path, "-m", "coverage", "run", "--source=.", pytest_args=("-p", "no:expire")
        )
        assert _executed(pytester.path) == measured


def test_coverage_run_parallel_then_combine(pytester: pytest.Pytester) -> None:
    _project(pytester.path, SUITE_WITH_A_KILL)
    _session(pytester.path, "-m", "coverage", "run", "-p", "--source=.")
    # The supervisor's, and those of its two workers: the killed one and the next.
    assert len(_data_files(pytester.path)) == 3
    _run(pytester.path, "-m", "coverage", "combine", "-q")
    assert _data_files(pytester.path) == [".coverage"]
    assert _executed(pytester.path)["mod.py"] == RUN_OF_MOD


@needs_patch_fork
def test_coverage_patch_fork(pytester: pytest.Pytester) -> None:
    """coverage.py starts a measurement of its own in each fork: each worker's is
    combined into the data file as the others'."""
    _project(pytester.path, SUITE_WITH_A_KILL)
    (pytester.path / ".coveragerc").write_text("[run]\nsource = .\npatch = fork\n")
    _session(pytester.path, "-m", "coverage", "run")
    assert _data_files(pytester.path) == [".coverage"]
    assert _executed(pytester.path)["mod.py"] == RUN_OF_MOD


@pytest.mark.parametrize("parallel", [False, True], ids=["one data file", "parallel"])
def test_coverage_started_at_process_start(pytester: pytest.Pytester, parallel: bool) -> None:
    """As a .pth file starts it, where COVERAGE_PROCESS_START names a configuration."""
    _project(pytester.path, SUITE_WITH_A_KILL)
    rc = pytester.path / "measure.rc"
    rc.write_text(f"[run]\nsource = .\nparallel = {parallel}\n")
    start = "import coverage, pytest; coverage.process_startup(); raise SystemExit(pytest.main())"
    env = {**os.environ, "COVERAGE_PROCESS_START": str(rc)}
    _run(pytester.path, "-c", start, "-p", "no:randomly", *ARGS, env=env)
    if parallel:
        _run(pytester.path, "-m", "coverage", "combine", "-q", f"--rcfile={rc}")
    assert _data_files(pytester.path) == [".coverage"]
    assert _executed(pytester.path, f"--rcfile={rc}")["mod.py"] == RUN_OF_MOD


def test_coverage_in_memory_only_is_said_once_per_session(pytester: pytest.Pytester) -> None:
    """A program that measures without a data file (data_file=None) cannot have its
    workers' data: said once, before the first worker, not once per worker."""
    _project(pytester.path, SUITE_WITH_A_KILL)
    program = (
        "import coverage, pytest\n"
        "measurement = coverage.Coverage(data_file=None, source=['.'])\n"
        "measurement.start()\n"
        "status = pytest.main()\n"
        "measurement.stop()\n"
        "raise SystemExit(status)\n"
    )
    output = _run(pytester.path, "-c", program, "-p", "no:randomly", *ARGS)
    assert "1 failed, 2 passed" in output
    assert output.count("pytest-expire: coverage.py") == 1, output
    assert "kept in memory only" in output


def test_an_unknown_coverage_is_said_once(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """coverage.py's internals that the module uses changed: the user is told what is
    lost and what to do, once, and the plugin does nothing more."""
    monkeypatch.setattr(coverage_data, "_told", False)
    unknown = coverage.Coverage()  # never started: neither its data nor its collector exist
    assert coverage_data._internals(unknown) is None
    assert coverage_data._internals(unknown) is None
    err = capsys.readouterr().err
    assert err.count("pytest-expire: coverage.py") == 1
    assert "coverage run -p" in err


def test_a_session_without_coverage_does_not_import_it() -> None:
    code = (
        "import pytest_expire.coverage_data as c, sys\n"
        "c.test_ended(); c.worker_started()\n"
        "print('coverage' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"
