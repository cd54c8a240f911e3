"""The test matrix: ``nox`` runs every session, ``nox -s NAME`` one (``nox -l`` lists them).

- ``tests``: the whole suite on each Python from 3.10 to 3.13. A Python that
  is not installed is reported as skipped, and that holds on CI too (see
  ``error_on_missing_interpreters`` below).
- ``pytest_versions``: the oldest pytest that the project supports (7.4, with
  the oldest pluggy, 1.2), the newest 8.x and the newest release, on nox's
  Python. Each runs ``PYTEST_SENSITIVE``, not the whole suite: the tests of
  the plugin's contact points with pytest (the private names of
  ``pytest_expire/pytest_internals.py``, the terminal, hooks, xdist, reruns,
  usage errors), in a fraction of the whole suite's time, so that ``.ci/run``
  stays within its time. The rest of the
  suite tests the plugin's own logic, or the timer library, which does not
  import pytest; ``tests`` runs all of it on the newest pytest.
- ``unprivileged``: ``AS_A_USER``, the tests whose paths depend on privileges
  (the timer servers, which check who connects and reap through pidfds; py-spy,
  stack dumps and report files), as a normal user. When root runs it, it
  creates a system user for this and runs the tests in a copy of the checkout
  that the user owns. Tests that need root skip there; the others take the
  paths that a normal user takes: no writing of ``ns_last_pid``, ptrace only
  of one's own processes (py-spy), directories that permissions really close.
- ``package``: builds the sdist and the wheel with the oldest setuptools that
  pyproject.toml accepts, checks their metadata and contents, installs the
  wheel in a clean virtual environment, and runs the hang demo from outside
  the checkout with that environment's Python.

Arguments after ``--`` replace the test selection of the session, e.g.
``nox -s pytest_versions -- tests/plugin/test_xdist.py``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
#: Every run: no cache written into the checkout, the reason of each skip shown.
PYTEST = "-p", "no:cacheprovider", "-rs"

# nox turns a missing interpreter into an error when CI is set. The matrix
# names every Python that the project supports, and a machine need not have all
# of them, so a missing one is skipped, which nox reports, on CI too.
nox.options.error_on_missing_interpreters = False

PYTEST_SENSITIVE = [
    # Replayed reports and their longrepr built by hand (pytest's private report parts).
    "tests/plugin/test_reports.py",
    # The terminal reporter, found and written to after the session, serially and in xdist.
    "tests/plugin/test_hang_at_exit.py",
    # xdist's hooks; pytest-rerunfailures' reports, which pytest 7.4 prints differently.
    "tests/plugin/test_xdist.py",
    "tests/plugin/test_supervision_reruns.py",
    "tests/plugin/test_verdicts.py::test_each_rerun_runs_under_a_deadline_of_its_own",
    # Hook specifications of our own, usage errors, ini keys pytest warns about.
    "tests/plugin/test_timeout_compat.py::test_pytest_timeouts_hooks_in_a_conftest_load_and_are_never_called",
    "tests/plugin/test_timeout_compat.py::test_a_bad_timeout_marker_is_a_usage_error_naming_the_test",
    "tests/plugin/test_timeout_compat.py::test_without_the_opt_in_pytest_timeouts_ini_keys_are_warned_about",
    "tests/plugin/test_options.py::test_bad_markers_are_usage_errors_naming_the_test",
]
AS_A_USER = [
    "tests/timer/test_unix_socket_timer.py",
    "tests/timer/test_file_based_local_timer.py",
    "tests/plugin/test_json_report.py",
    "tests/plugin/test_native_stacks.py",
    "tests/plugin/test_dumps.py",
]
#: Where the system's interpreters are, for a user who cannot reach the one running nox.
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
#: The first release of setuptools 77, pyproject.toml's ``requires = ["setuptools>=77"]``.
OLDEST_SETUPTOOLS = "77.0.1"
#: The normal user that ``unprivileged`` creates and runs as when root runs it.
USER = "pytest-expire-ci"
#: What the copy of the checkout leaves out: environments, caches and builds.
NOT_COPIED = shutil.ignore_patterns(
    ".git", ".nox", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
)


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The whole suite."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "-n", "auto", *PYTEST, *session.posargs)


@nox.session
@nox.parametrize(
    "pytest",
    [
        # The oldest that the project supports, of pytest and of pluggy.
        nox.param(["pytest~=7.4.0", "pluggy==1.2.0"], id="7.4"),
        nox.param(["pytest~=8.0"], id="8"),
        nox.param(["pytest"], id="newest"),
    ],
)
def pytest_versions(session: nox.Session, pytest: list[str]) -> None:
    """The tests of the plugin's contact points with pytest, on one pytest release."""
    session.install("-e", ".[test]", *pytest)
    session.run("python", "-m", "pytest", "--version")
    session.run(
        "python", "-m", "pytest", "-n", "auto", *PYTEST, *(session.posargs or PYTEST_SENSITIVE)
    )


@nox.session(python=False)
def unprivileged(session: nox.Session) -> None:
    """The tests whose paths depend on privileges, as a normal user."""
    selection = session.posargs or AS_A_USER
    if os.geteuid() != 0:
        venv = Path(session.create_tmp()).resolve() / "venv"
        _run_tests(session, ROOT, venv, selection, as_user=[])
        return
    _ensure_user(session)
    home = Path(tempfile.mkdtemp(prefix="pytest-expire-unprivileged-"))
    try:
        checkout = home / "checkout"
        shutil.copytree(ROOT, checkout, ignore=NOT_COPIED)
        session.run("chown", "-R", f"{USER}:{USER}", str(home), external=True)
        as_user = ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups", "--"]
        as_user += ["env", f"HOME={home}", f"USER={USER}", f"LOGNAME={USER}"]
        _run_tests(session, checkout, home / "venv", selection, as_user)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _ensure_user(session: nox.Session) -> None:
    """Create ``USER``, a system user without a login, unless it exists."""
    try:
        pwd.getpwnam(USER)
    except KeyError:
        shell = "/usr/sbin/nologin"
        session.run("useradd", "--system", "--user-group", "--shell", shell, USER, external=True)


def _run_tests(
    session: nox.Session, checkout: Path, venv: Path, selection: list[str], as_user: list[str]
) -> None:
    """Install ``checkout`` in a fresh ``venv`` and run ``selection`` there, as ``as_user`` says."""
    python = _python_to_run(session, as_user)
    with session.chdir(checkout):
        session.run(*as_user, "id", external=True)
        session.run(*as_user, python, "-m", "venv", "--clear", str(venv), external=True)
        session.run(*as_user, venv / "bin" / "pip", "install", "-q", "-e", ".[test]", external=True)
        pytest = [str(venv / "bin" / "python"), "-m", "pytest", "-n", "auto", *PYTEST]
        session.run(*as_user, *pytest, *selection, external=True)


def _python_to_run(session: nox.Session, as_user: list[str]) -> str:
    """An interpreter of nox's Python version that ``as_user`` may run: nox's own, unless
    it lies where a normal user cannot reach (pyenv's, under root's home), else the system's.
    """
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [os.path.realpath(sys.executable), shutil.which(version, path=SYSTEM_PATH)]
    for python in filter(None, candidates):
        probe = [*as_user, python, "-c", ""]
        if subprocess.run(probe, capture_output=True, check=False).returncode == 0:
            session.log(f"{USER} runs {python}")
            return python
    session.error(f"no {version} that {USER} may run among {candidates}")


@nox.session
def package(session: nox.Session) -> None:
    """Build, check, install in a clean environment and run the demo from there."""
    session.install("build", "twine")
    work = Path(session.create_tmp()).resolve()
    dist = work / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    # With the oldest setuptools that [build-system] accepts: what it promises.
    oldest = work / "oldest-setuptools.txt"
    oldest.write_text(f"setuptools=={OLDEST_SETUPTOOLS}\n")
    build = ["python", "-m", "build", "--outdir", str(dist), str(ROOT)]
    session.run(*build, env={"PIP_CONSTRAINT": str(oldest)})
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    session.run("twine", "check", "--strict", str(sdist), str(wheel))
    _check_contents(session, sdist, wheel)

    clean = work / "clean"
    session.run("python", "-m", "venv", "--clear", str(clean))
    session.run(clean / "bin" / "pip", "install", "-q", str(wheel), external=True)
    demo = work / "examples"
    shutil.rmtree(demo, ignore_errors=True)
    shutil.copytree(ROOT / "examples", demo, ignore=NOT_COPIED)
    with session.chdir(work):
        where = "import pytest_expire; print(pytest_expire.__file__)"
        imported = session.run(clean / "bin" / "python", "-c", where, external=True, silent=True)
        if not str(imported).strip().startswith(str(clean)):
            session.error(f"pytest_expire came from {imported!r}, not the clean environment")
        session.run(clean / "bin" / "python", demo / "hang_demo.py", external=True)


def _check_contents(session: nox.Session, sdist: Path, wheel: Path) -> None:
    """The wheel holds the start-up hook at its top, the package data and the license; the
    sdist holds what builds the wheel again."""
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = set(archive.namelist())
    wanted = {
        "pytest-expire.pth",
        "pytest_expire/__init__.py",
        "pytest_expire/timer/__init__.py",
        "pytest_expire/py.typed",
        "pytest_expire/json_report.schema.json",
    }
    missing = wanted - in_wheel
    if not any(name.endswith(".dist-info/licenses/LICENSE") for name in in_wheel):
        missing.add("*.dist-info/licenses/LICENSE")
    with tarfile.open(sdist) as archive:
        in_sdist = {name.partition("/")[2] for name in archive.getnames()}
    missing |= {
        f"{name} (sdist)"
        for name in ("LICENSE", "pyproject.toml", "setup.py", "pytest-expire.pth")
        if name not in in_sdist
    }
    if missing:
        session.error(f"missing from the distributions: {', '.join(sorted(missing))}")
    session.log(f"{wheel.name}: {len(in_wheel)} files; {sdist.name}: {len(in_sdist)} entries")
