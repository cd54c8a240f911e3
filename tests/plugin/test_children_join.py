"""Processes a test starts afresh join its session, and show their stacks without py-spy.

A forked child inherits its parent's dump registration; a process started
otherwise (a ``multiprocessing`` spawn or forkserver, ``subprocess`` running
Python) is a new interpreter, which joins the session through the start-up
hook the package installs (``pytest-expire.pth``, ``pytest_expire.startup``)
when the session's directory is in its environment. The sessions here run
with an interpreter that cannot reach py-spy, so every stack in their
reports was dumped by the process itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import uuid
import venv
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from pytest_expire import session_directory, startup
from pytest_expire.signals import DUMP_SIGNAL

HOOK = "pytest-expire.pth"
CHECKOUT = Path(__file__).resolve().parents[2]

#: Each child writes its PID to CHILD_PID once it waits in the function the report must show.
SUITE = """
import multiprocessing, os, subprocess, sys, time

CHILD_PID = {child_pid!r}

def note_pid():
    with open(CHILD_PID, "w") as file:
        file.write(str(os.getpid()))

def hang_in_a_spawn_child():
    note_pid()
    time.sleep(3600)

def hang_in_a_forkserver_child():
    note_pid()
    time.sleep(3600)

def run_child(method, target):
    child = multiprocessing.get_context(method).Process(target=target)
    child.start()
    try:
        child.join()
    finally:
        child.kill()
        child.join()

def test_spawn():
    run_child("spawn", hang_in_a_spawn_child)

def test_forkserver():
    run_child("forkserver", hang_in_a_forkserver_child)

# No blank line: the report shows it, as the child's command line, above the child's dump.
SUBPROCESS = '''import os, time
def hang_in_a_subprocess():
    with open({child_pid!r}, "w") as file:
        file.write(str(os.getpid()))
    time.sleep(3600)
hang_in_a_subprocess()
'''

def test_subprocess():
    subprocess.run([sys.executable, "-c", SUBPROCESS], check=True)
"""


@pytest.fixture(scope="module")
def venv_without_py_spy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment whose only ``.pth`` file adds this one's site-packages,
    with their ``.pth`` files (ours, the editable install's), but not py-spy's program."""
    root = tmp_path_factory.mktemp("no-py-spy")
    venv.create(root, symlinks=True, with_pip=False)
    purelib = Path(sysconfig.get_path("purelib", "posix_prefix", vars={"base": str(root)}))
    ours = sysconfig.get_paths()["purelib"]
    (purelib / "project-venv.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    return root


@pytest.fixture
def python_without_py_spy(venv_without_py_spy: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An interpreter with this environment's packages, from which py-spy is out of reach.

    native_stacks looks for py-spy beside the interpreter, then on PATH.
    """
    path = os.environ.get("PATH", "").split(os.pathsep)
    monkeypatch.setenv("PATH", os.pathsep.join(d for d in path if not Path(d, "py-spy").exists()))
    python = venv_without_py_spy / "bin" / "python"
    probe = subprocess.run(
        [
            python,
            "-c",
            "from pytest_expire import native_stacks\nprint(native_stacks.find_py_spy())",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout == "None\n", "a session would reach py-spy"
    return python


@pytest.fixture
def left_behind(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Kill (by PID) and report any process started in the test that outlived it.

    Every process started in the test inherits a mark in its environment,
    so it is found even once it left this process's tree.
    """
    mark = uuid.uuid4().hex
    monkeypatch.setenv("CHILDREN_JOIN_TEST_MARK", mark)
    yield
    marked = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("CHILDREN_JOIN_TEST_MARK") == mark:
                marked.append(process)
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(marked, timeout=2)
    for process in alive:
        process.kill()
    psutil.wait_procs(alive, timeout=2)
    assert not alive, f"processes outlived the test: {[p.pid for p in alive]}"


@pytest.mark.usefixtures("left_behind")
@pytest.mark.parametrize(
    ("kind", "function"),
    [
        ("spawn", "hang_in_a_spawn_child"),
        ("forkserver", "hang_in_a_forkserver_child"),
        ("subprocess", "hang_in_a_subprocess"),
    ],
)
def test_a_hung_child_shows_its_own_stacks(
    pytester: pytest.Pytester, python_without_py_spy: Path, kind: str, function: str
) -> None:
    child_pid = pytester.path / "child.pid"
    pytester.makepyfile(test_suite=SUITE.format(child_pid=str(child_pid)))
    result = pytester.run(
        python_without_py_spy,
        "-m",
        "pytest",
        f"--basetemp={pytester.path / 'basetemp'}",
        "--expire-default=1",
        "--expire-grace=1",
        f"test_suite.py::test_{kind}",
        timeout=120,
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*expired: test_suite.py::test_{kind} after 1 s*"])
    output = result.stdout.str()
    # The child's dump: from its heading to the blank line that ends its one thread.
    heading = f"--- process {child_pid.read_text()}:"
    assert heading in output, output
    dump = output[output.index(heading) :].split("\n\n")[0]
    # faulthandler's format (py-spy's is "function (file:line)").
    assert f"in {function}\n" in dump, dump
    assert "(read by py-spy)" not in output
    assert "(no stacks" not in output


def run_python(
    *args: str, directory: Path | None, test: str = ""
) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` with the session directory in its environment (or none), awaited."""
    # Not this session's (if it has one), nor anything else of the plugin's.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_EXPIRE_")}
    if directory is not None:
        env[startup.DIRECTORY_ENV] = str(directory)
    env["PYTEST_CURRENT_TEST"] = test
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_hook_is_installed_and_current() -> None:
    installed = Path(sysconfig.get_paths()["purelib"]) / HOOK
    assert installed.is_file(), f"{HOOK} is missing from site-packages: pip install -e ."
    assert installed.read_text() == (CHECKOUT / HOOK).read_text(), "stale: pip install -e ."
    assert startup.DIRECTORY_ENV == session_directory.DIRECTORY_ENV
    assert f'"{startup.DIRECTORY_ENV}" in os.environ' in installed.read_text()


def test_outside_a_session_nothing_of_ours_is_imported() -> None:
    done = run_python("-c", "import sys; print('pytest_expire' in sys.modules)", directory=None)
    assert (done.returncode, done.stdout, done.stderr) == (0, "False\n", "")


@pytest.mark.parametrize("where", ["over", "file", "/proc"])
def test_a_session_out_of_reach_is_not_joined_and_nothing_is_said(
    tmp_path: Path, where: str
) -> None:
    # A session that ended (its directory removed), a file, a directory no file can be made in.
    directory = Path("/proc") if where == "/proc" else tmp_path / where
    if where == "file":
        directory.touch()
    done = run_python("-c", "pass", directory=directory)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert [path.name for path in tmp_path.iterdir()] == (["file"] if where == "file" else [])


def test_a_new_interpreter_joins_for_dumps_and_in_the_registry(tmp_path: Path) -> None:
    done = run_python(
        "-c",
        "import os; from pytest_expire.signals import handles\n"
        f"print(os.getpid(), handles(os.getpid(), {int(DUMP_SIGNAL)}))",
        directory=tmp_path,
        test="test_x.py::test_y (call)",
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    pid, handles = done.stdout.split()
    assert handles == "True"
    (entry,) = tmp_path.glob(f"joined-{pid}-*")
    assert "test_x.py::test_y (call)" in entry.read_text()
    assert list(tmp_path.glob(f"stacks-{pid}-*.txt"))


def test_a_forked_child_of_a_joined_process_joins_too(tmp_path: Path) -> None:
    done = run_python(
        "-c",
        "import os\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "print(os.getpid(), pid)",
        directory=tmp_path,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    for pid in done.stdout.split():
        assert list(tmp_path.glob(f"joined-{pid}-*")), pid
        assert list(tmp_path.glob(f"stacks-{pid}-*.txt")), pid


@pytest.mark.parametrize(
    "args",
    [
        ("-I", "-c", "pass"),
        ("-S", "-c", "pass"),
        # The session's own watchdog (without its arguments it stops at once, after site ran).
        ("-m", "pytest_expire.watchdog_main"),
    ],
    ids=["isolated", "no-site", "watchdog"],
)
def test_what_does_not_join(tmp_path: Path, args: tuple[str, ...]) -> None:
    run_python(*args, directory=tmp_path)
    assert list(tmp_path.iterdir()) == []
