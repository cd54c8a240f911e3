"""Expiration timers: the API of ``torch.distributed.elastic.timer``, without torch.

A worker arms a timer around a block of code::

    from pytest_expire import timer

    timer.configure(timer.LocalTimerClient(mp_queue))
    with timer.expires(after=60):
        train_step()

and a server in another thread or process reaps the worker if the block has
not finished in time. Servers here wake at the earliest deadline rather than
polling, and signal only the process that armed the timer.
"""

from pytest_expire.timer.api import (
    RequestQueue,
    TimerClient,
    TimerRequest,
    TimerServer,
    configure,
    expires,
)
from pytest_expire.timer.file_based_local_timer import (
    FileTimerClient,
    FileTimerRequest,
    FileTimerServer,
)
from pytest_expire.timer.local_timer import (
    LocalTimerClient,
    LocalTimerServer,
    MultiprocessingRequestQueue,
)
from pytest_expire.timer.unix_socket_timer import (
    UnixSocketTimerClient,
    UnixSocketTimerServer,
)

__all__ = [
    "FileTimerClient",
    "FileTimerRequest",
    "FileTimerServer",
    "LocalTimerClient",
    "LocalTimerServer",
    "MultiprocessingRequestQueue",
    "RequestQueue",
    "TimerClient",
    "TimerRequest",
    "TimerServer",
    "UnixSocketTimerClient",
    "UnixSocketTimerServer",
    "configure",
    "expires",
]
