"""Build steps pyproject.toml cannot declare: the start-up hook at the top of site-packages.

Everything else about the package is in pyproject.toml. The hook,
``pytest-expire.pth`` (see ``pytest_expire/startup.py``), only works at the
top of site-packages, the one place where ``site`` reads ``.pth`` files;
setuptools' declarative configuration puts files inside packages (package
data) or under ``sys.prefix`` (data files), never there. So two commands
are extended, one per kind of install:

- ``build_py``, for a wheel (``pip install .``, ``pip wheel``): it copies
  the hook to the top of the build directory, which becomes the top of the
  wheel, and names it among its sources, so that an sdist carries it;
- ``editable_wheel``, for ``pip install -e .`` (PEP 660): an editable wheel
  holds no built files, only what its *strategy* writes (a ``.pth`` file or
  an import hook pointing at the checkout), so the strategy setuptools
  chooses is wrapped into one that also writes the hook. ``_select_strategy``
  is setuptools' own, not a public interface (the same in 77, the version
  this project requires, and 84, both tried); should it go, editable
  installs would lack the hook and ``tests/plugin/test_children_join.py``
  says so, while the build itself goes on working.

pytest-cov, before version 7, shipped its start-up hook by extending
setuptools' commands too (from before editable wheels existed).
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HOOK = "pytest-expire.pth"
SOURCE = Path(__file__).resolve().parent / HOOK


class BuildPyWithHook(build_py):
    """``build_py`` that also puts the hook at the top of the wheel."""

    def run(self) -> None:
        super().run()
        self.copy_file(str(SOURCE), str(Path(self.build_lib, HOOK)), preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib, HOOK))]

    def get_source_files(self) -> list[str]:
        return [*super().get_source_files(), HOOK]


class EditableWheelWithHook(editable_wheel):
    """``editable_wheel`` whose wheel also holds the hook."""

    def _select_strategy(self, *args: Any, **kwargs: Any) -> _WithHook:
        return _WithHook(super()._select_strategy(*args, **kwargs))


class _WithHook:
    """An editable-install strategy of setuptools, which also writes the hook into the wheel."""

    def __init__(self, strategy: Any) -> None:
        self._strategy = strategy

    def __enter__(self) -> _WithHook:
        self._strategy.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._strategy.__exit__(kind, error, traceback)

    def __call__(self, wheel: Any, files: list[str], mapping: dict[str, str]) -> None:
        self._strategy(wheel, files, mapping)
        wheel.writestr(HOOK, SOURCE.read_bytes())


setup(cmdclass={"build_py": BuildPyWithHook, "editable_wheel": EditableWheelWithHook})
