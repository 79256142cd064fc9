"""Stager (leader only): ``scheduled``/``retryable`` jobs whose time has come become
``available``, then an insert notice goes out per queue (in the same statement). SKIP LOCKED
keeps two stagers from staging one job twice.
"""

from __future__ import annotations

from datetime import datetime

from .. import telemetry
from ..naming import channel
from ..store import Store
from .base import NodeView

STAGE_LIMIT = 5000


class Stager:
    name = "stage"
    leader_only = True

    def __init__(self, store: Store, node: NodeView, *, interval: float) -> None:
        self.interval = interval
        self._store = store
        self._node = node
        self._channel = channel(store.prefix, "insert")

    async def step(self, now: datetime | None = None) -> int:
        """Stage due jobs; returns how many became available."""
        with telemetry.span("oban.stager.stage", {}) as context:
            total, queues = await self._stage(now)
            context.add({"staged_count": total, "available_queues": sorted(queues)})
        return total

    async def _stage(self, now: datetime | None) -> tuple[int, set[str]]:
        total, queues = 0, set()
        while True:
            staged = await self._store.stage_due(limit=STAGE_LIMIT, channel=self._channel, now=now)
            for batch in staged:
                queues.add(batch.queue)
                self._node.jobs_staged(batch.queue)  # local producers need not wait for the notice
            count = sum(batch.count for batch in staged)
            total += count
            if count < STAGE_LIMIT:
                return total, queues
