"""Lifeline: heartbeat-based orphan rescue (leader only).

An ``executing`` job comes back to ``available`` (or ``discarded`` with no attempts left), with
``meta.rescued += 1`` and an error entry naming the node that stopped answering, only when its
producer is known to heartbeat and has stopped: its ``oban_producers`` row is older than
``heartbeat_ttl``, or missing while its queue is served by heartbeating producers. Jobs of
engines that never heartbeat fall back to a long time-based rule (``rescue_after``). A job whose
producer is alive is never rescued, however long it runs. Dead producer rows are deleted once
none of their jobs is still executing.

A database outage stops every node's heartbeats at once, so staleness is measured from the
later of the last heartbeat and the server's start (a restarted server gives every producer a
fresh ttl to check in), and a leader that itself lost the database rescues nothing until it has
been connected for a ttl again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

RESCUE_LIMIT = 1000


class Lifeline:
    def __init__(
        self,
        pool: Any,
        queries: Any,
        *,
        heartbeat_ttl: float,
        rescue_after: float,
        on_rescued: Callable[[int, set[str]], None] | None = None,
        healthy_for: Callable[[], float] = lambda: float("inf"),
    ) -> None:
        self._pool = pool
        self._queries = queries
        self._ttl = heartbeat_ttl
        self._rescue_after = rescue_after
        self._on_rescued = on_rescued
        self._healthy_for = healthy_for

    async def step(self, now: Any = None) -> int:
        """Rescue orphans and delete dead producer rows; returns the number of jobs rescued."""
        if self._healthy_for() < self._ttl:
            # This node lost the database less than a ttl ago; other nodes probably did too and
            # have not had the chance to heartbeat since. Judging them now would rescue live jobs.
            log.info(
                "lifeline waits: the database connection recovered less than %ss ago", self._ttl
            )
            return 0
        params = {
            "ttl": self._ttl,
            "rescue_after": self._rescue_after,
            "limit": RESCUE_LIMIT,
            "now": now,
        }
        total = 0
        while True:
            async with self._pool.connection() as conn:
                cur = await conn.execute(self._queries.rescue_jobs, params)
                rows = await cur.fetchall()
            if rows:
                log.warning("lifeline rescued %d orphaned jobs", len(rows))
                if self._on_rescued:
                    self._on_rescued(
                        len(rows), {queue for _id, queue, state in rows if state == "available"}
                    )
            total += len(rows)
            if len(rows) < RESCUE_LIMIT:
                break
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                self._queries.delete_dead_producers, {"ttl": self._ttl, "now": now}
            )
            for uuid, node in await cur.fetchall():
                log.info("deleted dead producer %s of node %s", uuid, node)
        return total
