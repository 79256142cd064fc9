"""Imported by a chaos node to make its database pool reconnect late (issue 9's cause).

After a PostgreSQL outage psycopg_pool reconnects with an exponential backoff (seen at 8 s
on this machine). This module reproduces the worst of it on purpose: once the node is up, every
new pool connection waits ``OBAN_TEST_POOL_RECONNECT_DELAY`` seconds before connecting. Only
the pool is slowed; what the engine opens itself (heartbeat, notifier) is not.
"""

from __future__ import annotations

import asyncio
import os
import time

from psycopg_pool import AsyncConnectionPool

DELAY = float(os.environ.get("OBAN_TEST_POOL_RECONNECT_DELAY", "8"))
# Connections made while the node starts are not delayed (the node must come up normally).
_SLOW_AFTER = time.monotonic() + float(os.environ.get("OBAN_TEST_POOL_SLOW_AFTER", "5"))

_original_connect = AsyncConnectionPool._connect


async def _late_connect(self, timeout=None):
    if time.monotonic() > _SLOW_AFTER:
        await asyncio.sleep(DELAY)
    return await _original_connect(self, timeout)


AsyncConnectionPool._connect = _late_connect  # type: ignore[method-assign]
