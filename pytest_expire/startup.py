"""A new interpreter started during a session joins it: stack dumps, and the registry.

A test's process registers for stack dumps (``stacks``) and its forked
children inherit that, but a process started afresh (``subprocess`` running
Python, a ``multiprocessing`` spawn or forkserver) starts with nothing of
ours: at a deadline, only py-spy could read its stacks. So the package
installs a start-up hook, ``pytest-expire.pth``, into site-packages, which
``site`` runs as every interpreter starts. Its one line costs one lookup in
the environment; only when :data:`DIRECTORY_ENV` is set (every process of
a session inherits it) does it import this module, which registers the
process for dumps and leaves its entry in the session's ``registry``.

Importing it must never print, raise or noticeably slow the process: an
interpreter may start long after its session ended (the directory gone), or
where it cannot write. Then it simply does not join. It does not join
either in isolated mode (``python -I``: the environment must not change
what the interpreter does, and the directory's name comes from it), nor in
the session's own watchdog, which the session never dumps. ``python -S``
runs no ``.pth`` file at all. An interpreter started in a virtual
environment runs each ``.pth`` line twice (CPython 3.11's ``site`` reads
the environment's site-packages twice): the second import of this module
is a look-up in ``sys.modules``.

What a registration needs is imported only to register (no pytest, no
psutil, ever).
"""

from __future__ import annotations

import os
import sys

#: ``session_directory.DIRECTORY_ENV``, spelt out: an interpreter that does not join
#: imports nothing of ours.
DIRECTORY_ENV = "PYTEST_EXPIRE_DIRECTORY"
# How the session starts its watchdog (``watchdog.SessionWatchdog``).
_WATCHDOG = ["-m", "pytest_expire.watchdog_main"]


def join() -> None:
    """Join the session the environment names, if there is one and this process may."""
    directory = os.environ.get(DIRECTORY_ENV)
    if not directory or sys.flags.isolated or _is_watchdog(sys.orig_argv):
        return
    if not os.path.isdir(directory):
        return  # the session is over (its directory removed)
    # Imported only now (some milliseconds): an interpreter that does not join
    # pays for none of it.
    from pathlib import Path

    from pytest_expire import registry, stacks

    try:
        stacks.register(Path(directory))
        registry.join(Path(directory))
    except OSError:  # removed meanwhile, or not ours to write
        pass


def _is_watchdog(argv: list[str]) -> bool:
    return any(argv[i : i + 2] == _WATCHDOG for i in range(1, len(argv) - 1))


join()
