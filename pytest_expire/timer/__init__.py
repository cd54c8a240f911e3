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

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_expire.timer.api import (
        FileTimerRequest,
        Logged,
        RequestQueue,
        TimerClient,
        TimerRequest,
        TimerServer,
        configure,
        expires,
    )
    from pytest_expire.timer.file_based_local_timer import FileTimerClient, FileTimerServer
    from pytest_expire.timer.lifetime import die_with_parent
    from pytest_expire.timer.local_timer import (
        LocalTimerClient,
        LocalTimerServer,
        MultiprocessingRequestQueue,
    )
    from pytest_expire.timer.unix_socket_timer import (
        UnixSocketTimerClient,
        UnixSocketTimerServer,
    )

# Each name is imported from its module when first used: the pytest plugin
# needs only the socket pair, and every pytest session imports the plugin.
_MODULES = {
    "RequestQueue": "api",
    "TimerClient": "api",
    "TimerRequest": "api",
    "TimerServer": "api",
    "configure": "api",
    "expires": "api",
    "FileTimerClient": "file_based_local_timer",
    "FileTimerRequest": "api",
    "FileTimerServer": "file_based_local_timer",
    "Logged": "api",
    "die_with_parent": "lifetime",
    "LocalTimerClient": "local_timer",
    "LocalTimerServer": "local_timer",
    "MultiprocessingRequestQueue": "local_timer",
    "UnixSocketTimerClient": "unix_socket_timer",
    "UnixSocketTimerServer": "unix_socket_timer",
}


def __getattr__(name: str) -> object:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "FileTimerClient",
    "FileTimerRequest",
    "FileTimerServer",
    "LocalTimerClient",
    "LocalTimerServer",
    "Logged",
    "MultiprocessingRequestQueue",
    "RequestQueue",
    "TimerClient",
    "TimerRequest",
    "TimerServer",
    "UnixSocketTimerClient",
    "UnixSocketTimerServer",
    "configure",
    "die_with_parent",
    "expires",
]
