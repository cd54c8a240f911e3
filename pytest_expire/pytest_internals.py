"""The private pytest names the plugin uses, all in one place, each with the reason.

pytest promises nothing about ``_pytest``: any release may move or drop these
names. The rest of the plugin imports them from here, so this file is the one to
read when a new pytest breaks an import. noxfile.py's ``pytest_versions``
session runs the plugin's tests on the oldest pytest that the project supports,
the newest 8.x and the newest release.
"""

from __future__ import annotations

# exit_deadline.py tells `pytest` run as the command from `pytest.main()` called
# by a program by the entry point on the stack, which is not exported.
from _pytest import config as entry_points

# replay.py sets the session's start time. From pytest 8.4 it is a
# timing.Instant, a class that pytest does not export.
from _pytest import timing

# report.py builds the longrepr of an expired test by hand. pytest exports the
# report classes but not the parts of a longrepr.
from _pytest._code.code import (
    ExceptionChainRepr,
    ReprEntryNative,
    ReprFileLocation,
    ReprTraceback,
)

# A writer for the worker's own stderr and for a quiet, discarded terminal.
# pytest has no public TerminalWriter; ``config.get_terminal_writer()`` only
# returns the one that the session already uses.
from _pytest._io import TerminalWriter

# replay.py finds the JUnit XML plugin through its stash key, which is not
# exported.
from _pytest.junitxml import xml_key

# pytest exports this as ``pytest.fail.Exception``, an attribute, and a type
# checker cannot subclass an attribute. interrupt.Expired subclasses it.
from _pytest.outcomes import Failed

# pytest exports ``pytest.TerminalReporter`` only from 8.4 on, and the
# project supports pytest 7.4.
from _pytest.terminal import TerminalReporter

__all__ = [
    "ExceptionChainRepr",
    "Failed",
    "ReprEntryNative",
    "ReprFileLocation",
    "ReprTraceback",
    "TerminalReporter",
    "TerminalWriter",
    "entry_points",
    "timing",
    "xml_key",
]
