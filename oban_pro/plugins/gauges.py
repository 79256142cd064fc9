"""Gauges (leader only, metrics on): jobs per queue and state, and workflows per state.

One grouped count over the state/queue index every few seconds on one node, rather than every
node scanning the table. A workflow's state is the one ``workflow_status`` gives it (executing
while any step is unfinished; then discarded, cancelled or completed); finished workflows are
counted until the pruner deletes their jobs.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from ..store import Store


class QueueGauges:
    name = "queue_gauges"
    leader_only = True

    def __init__(
        self,
        store: Store,
        publish: Callable[[dict[tuple[str, str], int]], None],
        *,
        interval: float,
    ) -> None:
        self.interval = interval
        self._store = store
        self._publish = publish

    async def step(self, now: datetime | None = None) -> None:
        self._publish(await self._store.job_counts())


class WorkflowGauges:
    name = "workflow_gauges"
    leader_only = True

    def __init__(
        self, store: Store, publish: Callable[[dict[str, int]], None], *, interval: float
    ) -> None:
        self.interval = interval
        self._store = store
        self._publish = publish

    async def step(self, now: datetime | None = None) -> None:
        self._publish(await self._store.workflow_counts())
