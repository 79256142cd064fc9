"""Stager: ``scheduled``/``retryable`` jobs whose time has come become ``available``, then an
insert notice goes out per queue (in the same statement). SKIP LOCKED keeps two stagers from
staging one job twice; the coordinator runs it on the leader only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import telemetry
from ..naming import channel

STAGE_LIMIT = 5000


class Stager:
    def __init__(self, pool: Any, queries: Any, on_staged: Callable[[str], None]) -> None:
        self._pool = pool
        self._queries = queries
        self._on_staged = on_staged
        self._channel = channel(queries.prefix, "insert")

    async def step(self, now: Any = None) -> int:
        """Stage due jobs; returns how many became available."""
        with telemetry.span("oban.stager.stage", {}) as context:
            total, queues = await self._stage(now)
            context.add({"staged_count": total, "available_queues": sorted(queues)})
        return total

    async def _stage(self, now: Any) -> tuple[int, set[str]]:
        total, queues = 0, set()
        while True:
            async with self._pool.connection() as conn:
                cur = await conn.execute(
                    self._queries.stage_jobs,
                    {"limit": STAGE_LIMIT, "channel": self._channel, "now": now},
                )
                rows = await cur.fetchall()
            staged = sum(n for _queue, n, _ in rows)
            for queue, _n, _ in rows:
                queues.add(queue)
                self._on_staged(queue)  # local producers need not wait for the notice
            total += staged
            if staged < STAGE_LIMIT:
                return total, queues
