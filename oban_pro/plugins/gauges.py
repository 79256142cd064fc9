"""Queue gauges (leader only): counts of waiting jobs per queue and state for the metrics.

One grouped count over the state/queue index every few seconds on one node, rather than every
node scanning the table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class QueueGauges:
    def __init__(
        self, pool: Any, queries: Any, publish: Callable[[dict[tuple[str, str], int]], None]
    ) -> None:
        self._pool = pool
        self._queries = queries
        self._publish = publish

    async def step(self) -> None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(self._queries.queue_counts)
            rows = await cur.fetchall()
        self._publish({(queue, state): count for queue, state, count in rows})
