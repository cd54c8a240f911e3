"""A coroutine that awaits what never comes.

Suspended, it is on no thread's stack: the thread dump shows only the event
loop's ``select``. The report adds the stacks of the loop's tasks, down the
chain of awaits to the innermost one and the future it waits for.
"""

import asyncio


async def wait_for_nothing():
    await asyncio.Event().wait()


async def handle_a_request():
    await wait_for_nothing()


def test_awaits_a_hung_coroutine():
    asyncio.run(handle_a_request())
