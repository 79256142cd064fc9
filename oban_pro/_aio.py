"""asyncio helpers.

``asyncio.wait_for`` on Python 3.11 can swallow a cancellation that arrives just as the awaited
event fires (CPython issue 86296): a loop sleeping that way may survive ``task.cancel()`` and
never stop. ``asyncio.timeout`` does not have that race, so every loop waits through here.
Libraries the loops call still use ``wait_for`` (psycopg_pool waits for a free connection with
it), so a loop is stopped with :func:`cancel_and_wait`, which cancels again until it ends.
"""

from __future__ import annotations

import asyncio

#: Seconds between cancellations of a task that survived one (see cancel_and_wait).
CANCEL_AGAIN_AFTER = 0.5


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait for ``event`` up to ``timeout`` seconds; True if it was set, False on timeout."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
        return True
    except TimeoutError:
        return False


async def cancel_and_wait(task: asyncio.Task[object]) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling it again while it runs on.

    A cancellation can be swallowed in code the task awaits (``asyncio.wait_for`` in 3.11, as
    psycopg_pool uses it while handing out a connection): the task then goes on as if nothing
    happened, and a plain ``cancel(); await task`` waits forever (seen: a node's stop hanging
    on its staging loop once in ~100 starts and stops under load)."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=CANCEL_AGAIN_AFTER)
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved
