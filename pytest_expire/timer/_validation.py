"""The rules for what a timer request may hold, in one place for every client and server.

Each client checks its arguments here before anything is sent, so the same
call means the same on every pair:

- An expiration time is a real number (``time.time()`` plus seconds): an
  ``int`` or a ``float``, never a ``bool`` (TypeError) or NaN (ValueError).
  A negative time releases the timer, as a torch ``TimerRequest`` with a
  negative expiration time does. An ``int`` beyond any float is infinite: a
  timer that never expires, where the wire carries infinity.
- A signal is an ``int`` (a ``signal.Signals`` is one), never a ``bool``
  (TypeError), below ``signal.NSIG`` and no lower than a C int holds
  (ValueError). A signal of 0 or less makes a timer that expires without a
  signal, as torch's named-pipe server does with one.

A server applies :func:`is_valid_expiration` to what it decodes: there a bad
value is dropped and logged, never raised.
"""

from __future__ import annotations

import math
import signal

_MIN_SIGNAL = -(2**31)


def is_valid_expiration(value: object) -> bool:
    """Whether ``value`` can be a timer's expiration time (a real number, not NaN).

    ``bool`` is refused although it is an ``int``: ``True`` as a deadline is a
    client bug, not a time. An ``int`` beyond any float is refused too: a
    server cannot order it among the others.
    """
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return not math.isnan(float(value))
    except OverflowError:  # an int beyond any float
        return False


def checked_expiration(value: object) -> float | None:
    """``value`` as an expiration time for a request; None if it is negative (a release).

    Raises TypeError for a value that is not a real number, ValueError for NaN.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expiration_time must be a number (time.time() + seconds), got {value!r}")
    try:
        expiration_time = float(value)
    except OverflowError:
        expiration_time = math.inf if value > 0 else -math.inf
    if math.isnan(expiration_time):
        raise ValueError("expiration_time must be a number, got NaN")
    return None if expiration_time < 0 else expiration_time


def checked_signal(signum: object) -> int:
    """``signum`` as the signal of a timer (0 or less: none); TypeError or ValueError if bad."""
    if type(signum) is int and _MIN_SIGNAL <= signum < signal.NSIG:
        return signum
    if isinstance(signum, bool) or not isinstance(signum, int):
        raise TypeError(f"signal must be an int, got {signum!r}")
    if not _MIN_SIGNAL <= signum < signal.NSIG:
        raise ValueError(f"signal {signum} is not a signal number")
    return int(signum)
