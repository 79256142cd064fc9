"""Producer heartbeats: one statement refreshes every producer row of this node.

Rows that vanished (the database was restored, or a lifeline judged this node dead during a
long outage) are registered again, so the node is visible and judged alive once more.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from .producer import Producer

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(
        self,
        pool: Any,
        queries: Any,
        producers: Callable[[], Sequence[Producer]],
        on_beat: Callable[[], None] | None = None,
    ) -> None:
        self._pool = pool
        self._queries = queries
        self._producers = producers
        self._on_beat = on_beat

    async def step(self) -> None:
        producers = list(self._producers())
        if not producers:
            return
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                self._queries.heartbeat_producers,
                {"uuids": [p.uuid for p in producers], "metas": [p.meta_json() for p in producers]},
            )
            alive = {row[0] for row in await cur.fetchall()}
        for producer in producers:
            if producer.uuid not in alive:
                log.warning(
                    "producer row of queue %r was gone; registering it again", producer.queue
                )
                await producer.register()
        if self._on_beat:
            self._on_beat()
