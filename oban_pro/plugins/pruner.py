"""Pruner (leader only): deletes finished jobs older than ``max_age`` in bounded batches."""

from __future__ import annotations

from datetime import datetime

from .. import telemetry
from ..store import Store


class Pruner:
    name = "prune"
    leader_only = True

    def __init__(self, store: Store, *, interval: float, max_age: float, limit: int) -> None:
        self.interval = interval
        self._store = store
        self._max_age = max_age
        self._limit = limit

    async def step(self, now: datetime | None = None) -> int:
        """Delete one batch (at most ``limit`` rows); returns how many were deleted."""
        if self._max_age <= 0:
            return 0
        with telemetry.span("oban.pruner.prune", {}) as context:
            pruned = await self._store.prune_finished(
                max_age=self._max_age, limit=self._limit, now=now
            )
            context.add({"pruned_count": pruned})
        return pruned
