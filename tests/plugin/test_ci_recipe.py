"""The CI recipe of docs/ci.md, run: its pytest command on a suite with hangs, as on GitHub.

The command is read from the recipe itself (so the docs cannot drift from
what is tested), its deadlines shortened and ``-n auto`` replaced by a fixed
number of workers; ``GITHUB_ACTIONS=true`` turns on
pytest-github-actions-annotate-failures' annotations, as on a runner.
"""

from __future__ import annotations

import json
import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from snippets import FOLLOWER, GIL_HANG_SUITE

RECIPE = Path(__file__).parents[2] / "docs" / "ci.md"

SLEEPS = """

def test_sleeps():
    import time
    time.sleep(3600)
"""


def recipe_command() -> list[str]:
    """The arguments of the recipe's ``python -m pytest`` step (a folded YAML block)."""
    text = RECIPE.read_text()
    block = text[text.index("<!-- ci-recipe -->") :]
    found = re.search(r"- run: >-\n((?: {10}.*\n)+)", block)
    assert found, "the recipe has no folded pytest step"
    words = shlex.split(" ".join(line.strip() for line in found[1].splitlines()))
    assert words[:3] == ["python", "-m", "pytest"]
    return words[3:]


@pytest.mark.parametrize("workers", ["0", "2"])
def test_the_recipe_keeps_every_report_and_annotates_each_expiry(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, marked: str, workers: str
) -> None:
    pytest.importorskip("pytest_github_actions_annotate_failures")
    pytest.importorskip("xdist")
    args = [
        {"auto": workers}.get(arg, arg)
        .replace("--expire-default=300", "--expire-default=0.5")
        .replace("--expire-grace=10", "--expire-grace=0.5")
        for arg in recipe_command()
    ]
    assert "--expire-default=0.5" in args and "--expire-grace=0.5" in args
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    pytester.makepyfile(test_suite=GIL_HANG_SUITE + SLEEPS + FOLLOWER)
    (pytester.path / "reports").mkdir()
    result = pytester.runpytest_subprocess(*args, "-p", "no:randomly", timeout=120)
    result.assert_outcomes(passed=1, failed=2)
    # One annotation per expired test, at the test's file, saying how it expired.
    output = result.stdout.lines + result.stderr.lines
    annotations = [line for line in output if line.startswith("::error file=test_suite.py")]
    assert len(annotations) == 2, "\n".join(output)
    assert any(line.endswith("expired after 0.5 s (in call); killed") for line in annotations)
    assert any(line.endswith("expired after 0.5 s (in call)") for line in annotations)
    # Every file the recipe uploads is there and says what happened.
    reports = pytester.path / "reports"
    failures = [
        element
        for element in ET.parse(reports / "junit.xml").getroot().iter("failure")
        if "expired after 0.5 s" in element.get("message", "")
    ]
    assert len(failures) == 2
    expired = json.loads((reports / "expired.json").read_text())["expired"]
    assert sorted(entry["nodeid"] for entry in expired) == [
        "test_suite.py::test_hangs",
        "test_suite.py::test_sleeps",
    ]
    assert "in hold_the_gil_forever" in (reports / "watchdog.log").read_text()
