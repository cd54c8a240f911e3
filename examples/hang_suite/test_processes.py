"""A test that waits for a child process that never ends.

The child, a Python process, joined the session as it started: its stacks
are in the test's report next to the test's own (``--- process PID: python
-c ...``), and it is ended with its test, so nothing outlives the session.
"""

import subprocess
import sys


def test_waits_for_a_hung_child_process():
    subprocess.run([sys.executable, "-c", "import time; time.sleep(3600)"], check=True)
