"""Pruner (leader only): deletes finished jobs older than ``max_age`` in bounded batches."""

from __future__ import annotations

from typing import Any

from .. import telemetry


class Pruner:
    def __init__(self, pool: Any, queries: Any, *, max_age: float, limit: int) -> None:
        self._pool = pool
        self._queries = queries
        self._max_age = max_age
        self._limit = limit

    async def step(self, now: Any = None) -> int:
        """Delete one batch (at most ``limit`` rows); returns how many were deleted."""
        if self._max_age <= 0:
            return 0
        with telemetry.span("oban.pruner.prune", {}) as context:
            async with self._pool.connection() as conn:
                cur = await conn.execute(
                    self._queries.prune_jobs,
                    {"max_age": self._max_age, "limit": self._limit, "now": now},
                )
            context.add({"pruned_count": cur.rowcount})
        return cur.rowcount
