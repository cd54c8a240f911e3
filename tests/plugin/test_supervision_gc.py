"""A supervised worker collects garbage as bare pytest does, unless ``expire_gc_freeze`` is on."""

from __future__ import annotations

import pytest

# Made in the oldest generation (where what a long import makes ends up),
# then garbage: only a full collection frees it, which a frozen object never
# sees.
SUITE = """
import gc, weakref

class Node:
    pass

node = Node()
node.me = node
ref = weakref.ref(node)
gc.collect()
del node

def test_the_cycle_is_collected():
    gc.collect()
    assert (ref() is not None) is {frozen}  # alive only if frozen
"""


@pytest.mark.parametrize("frozen", [False, True], ids=["by default", "expire_gc_freeze"])
def test_garbage_made_at_import_is_collected_unless_frozen(
    pytester: pytest.Pytester, frozen: bool
) -> None:
    pytester.makeini(f"[pytest]\nexpire_gc_freeze = {str(frozen).lower()}\n")
    pytester.makepyfile(SUITE.format(frozen=frozen))
    # pytest-rerunfailures starts a thread when pytest-xdist is installed,
    # which kept the session unsupervised, and unfrozen, before.
    result = pytester.runpytest_subprocess("--expire-default=30", "-p", "no:rerunfailures")
    result.assert_outcomes(passed=1)
