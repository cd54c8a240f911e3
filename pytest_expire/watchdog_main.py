"""The body of a session's watchdog process: ``python -m pytest_expire.watchdog_main``.

:class:`~pytest_expire.watchdog.SessionWatchdog` starts it with
:mod:`subprocess` rather than through the timer library's
``start(process=True)``: a fresh interpreter that imports only the timer
server (multiprocessing's ``spawn`` re-imports pytest's ``__main__`` in the
child, a large part of a session's start), and no multiprocessing bookkeeping in the
pytest process, whose forked workers would inherit it and, at their exit,
terminate the watchdog as a child of theirs.

Arguments: the session's directory, the PID of the pytest process that
started it (the host whose descendants it may signal; it dies with it), and
the grace period between a test's interrupt and its kill. It
writes ``ready`` to its standard output once clients can connect, then
serves until SIGTERM.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
from pathlib import Path

from pytest_expire.escalation import Escalation
from pytest_expire.session_directory import socket_path
from pytest_expire.timer.lifetime import die_with_parent
from pytest_expire.timer.unix_socket_timer import UnixSocketTimerServer, format_address
from pytest_expire.watchdog import READY


def main(argv: list[str]) -> None:
    directory, host_pid, grace = Path(argv[0]), int(argv[1]), float(argv[2])
    if len(argv) > 3:
        log_to(Path(argv[3]))
    # Ctrl-C is for pytest, which still needs its watchdog while it tears down;
    # so is a terminal's hangup: if it ends pytest, the SIGTERM that follows
    # (see die_with_parent) ends this process with its cleanup.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # SIGTERM (from stop(), or from the kernel when the host dies) is waited
    # for below; blocked before the server's thread starts, so that thread
    # never takes it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    die_with_parent(host_pid, signal.SIGTERM)
    escalation = Escalation(directory, grace, run_id="pytest-expire")
    server = UnixSocketTimerServer(
        address=format_address(str(socket_path(directory))),
        run_id=escalation.run_id,
        on_expired=escalation,
        host_pid=host_pid,
    )
    escalation.server = server
    # A watchdog started after another died takes over what that one watched.
    escalation.adopt_armed()
    server.start()
    os.write(sys.stdout.fileno(), READY)
    os.close(sys.stdout.fileno())
    signal.sigwait({signal.SIGTERM})
    server.stop()
    if os.getppid() != host_pid:
        # The host died (killed with SIGKILL, say) and cannot clean up: the
        # session's directory goes with its last process.
        shutil.rmtree(directory, ignore_errors=True)
    sys.stderr.flush()
    # Nothing is left to tear down: skip the interpreter's exit, which would
    # make stop() wait for it.
    os._exit(0)


def log_to(path: Path) -> None:
    """Send this process's records (the debug-info hook's, with the stacks of each
    expired test; each kill; the watchdog's own failures) to the file at ``path``,
    appended: a watchdog started after another died goes on in the same file."""
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s [watchdog %(process)d] %(message)s")
    )
    logger = logging.getLogger("pytest_expire")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


if __name__ == "__main__":
    main(sys.argv[1:])
