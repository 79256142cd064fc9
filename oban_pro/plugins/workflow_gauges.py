"""Workflow gauges (leader only): how many workflows are in each state, for the metrics.

A workflow's state is the one ``workflow_status`` gives it (executing while any step is
unfinished; then discarded, cancelled or completed). Finished workflows are counted until the
pruner deletes their jobs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..workflow_ops import workflow_queries


class WorkflowGauges:
    def __init__(self, pool: Any, prefix: str, publish: Callable[[dict[str, int]], None]) -> None:
        self._pool = pool
        self._sql = workflow_queries(prefix).workflow_counts
        self._publish = publish

    async def step(self) -> None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(self._sql)
            rows = await cur.fetchall()
        self._publish(dict(rows))
