"""The hooks pytest-expire calls, for other plugins to implement.

Registered by ``plugin.pytest_addhooks``. A plugin implements one as any
pytest hook (a function of that name in a ``conftest.py`` or a plugin).
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.hookspec
def pytest_expire_expired(
    report: pytest.TestReport, expiry: dict[str, Any]
) -> tuple[str, str] | None:
    """A test expired: ``report`` is its failure, ``expiry`` what is known of it.

    ``expiry`` holds ``phase`` (setup, call or teardown), ``deadline`` (its
    seconds), ``action`` ("interrupted", "ended late" or "killed") and
    ``stacks`` (the watchdog's whole dump, as text). Called once per
    expired test, in the process that makes its report: the test's own
    process when the interrupt ended it or it ended late (its state, and its
    fixtures', can be read there); after a kill, the process that reports
    the kill (the supervisor's next worker, the xdist controller), the
    test's process being gone.

    Return ``(title, text)`` to add a section of your own to the failure
    (it reaches the terminal and JUnit XML), or None.
    """
