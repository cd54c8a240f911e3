"""The hook through which a server reports the timers that expired.

torch's version logs one record naming the run and the expired timers. Ours
takes, through keyword arguments, what was collected at the deadline (the
stacks of the expired workers), so that one place says everything known
about an expiry; torch-style calls keep working.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

__all__ = ["log_debug_info_for_expired_timers"]

logger = logging.getLogger(__name__)


def log_debug_info_for_expired_timers(
    run_id: str,
    expired_timers: Mapping[int, list[str]],
    *,
    stacks: Mapping[int, str] | None = None,
) -> None:
    """Log the timers that expired in ``run_id``, with the workers' stacks if given.

    ``expired_timers`` maps a worker PID to its expired timers (as their JSON
    text, in torch's convention); ``stacks`` maps a worker PID to the text of
    its stacks. Nothing is logged when no timer expired.
    """
    if not expired_timers:
        return
    message = f"Timers expired for run:[{run_id}] [{dict(expired_timers)}]"
    if stacks:
        parts = [message]
        for pid, text in stacks.items():
            parts.append(f"--- stacks of worker {pid} ---\n{text.rstrip()}")
        message = "\n".join(parts)
    logger.info(message)
