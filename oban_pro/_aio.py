"""asyncio helpers.

``asyncio.wait_for`` on Python 3.11 can swallow a cancellation that arrives just as the awaited
event fires (CPython issue 86296): a loop sleeping that way may survive ``task.cancel()`` and
never stop. ``asyncio.timeout`` does not have that race, so every loop waits through here.
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait for ``event`` up to ``timeout`` seconds; True if it was set, False on timeout."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
        return True
    except TimeoutError:
        return False
