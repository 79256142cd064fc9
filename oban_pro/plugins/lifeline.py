"""Lifeline: heartbeat-based orphan rescue.

An ``executing`` job comes back to ``available`` (or ``discarded`` with no attempts left), with
``meta.rescued += 1`` and an error entry naming the node that stopped answering, only when its
producer is **known to heartbeat** and has been silent for its ttl. Known means its
``oban_producers`` row exists, or this node remembers having seen that row (a row can vanish
while its jobs still execute: another engine's cleanup deletes it, crash recovery empties the
unlogged table). Jobs whose producer was never seen heartbeating — Elixir's open-source engine
writes no producer rows, yet may serve the same queue — fall back to the long time-based rule
(``rescue_after``), whatever queue they are on. A job whose producer is alive is never rescued,
however long it runs.

Silence is counted from no earlier than the server's start plus the slowest reconnect a live
node's heartbeat can take (:func:`~oban_pro.coordinator.heartbeat.reconnect_bound`): an outage
stops every heartbeat at once. For the same reason a leader that itself lost the database
rescues nothing until it has been connected again for the ttl plus that bound.

After rescue the leader repairs workflows left stuck (:mod:`oban_pro.workflow_repair`).

Every node observes the producer rows at each step (so a new leader starts with a memory); only
the leader rescues and deletes dead producer rows (once none of their jobs executes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from .. import telemetry
from ..workflow_repair import WorkflowRepair

log = logging.getLogger(__name__)

RESCUE_LIMIT = 1000
#: Oban.py's refresher deletes producer rows silent for 60 s: the least silence that proves a
#: row of another engine dead.
FOREIGN_TTL = 60.0


class Lifeline:
    def __init__(
        self,
        pool: Any,
        queries: Any,
        *,
        heartbeat_ttl: float,
        reconnect_bound: float,
        rescue_after: float,
        foreign_ttl: float = FOREIGN_TTL,
        is_leader: Callable[[], bool] = lambda: True,
        on_rescued: Callable[[int, set[str]], None] | None = None,
        healthy_for: Callable[[], float] = lambda: float("inf"),
        name: str = "",
        node: str = "",
    ) -> None:
        self._pool = pool
        self._queries = queries
        self._ttl = heartbeat_ttl
        self._grace = reconnect_bound
        self._rescue_after = rescue_after
        self._foreign_ttl = foreign_ttl
        self._is_leader = is_leader
        self._on_rescued = on_rescued
        self._healthy_for = healthy_for
        # Telemetry metadata: which instance rescued.
        self._identity = {"name": name, "node": node}
        self._workflows = WorkflowRepair(pool, queries.prefix)
        # uuid -> (last heartbeat seen, its ttl, monotonic time it was last seen)
        self._known: dict[str, tuple[datetime, float, float]] = {}

    @property
    def known_producers(self) -> set[str]:
        """Producer uuids this node has seen heartbeating (and still remembers)."""
        return set(self._known)

    async def step(self, now: Any = None) -> int:
        """Observe producers; on the leader, rescue orphans and delete dead producer rows.
        Returns the number of jobs rescued."""
        await self.observe()
        if not self._is_leader():
            return 0
        if self._healthy_for() < self._ttl + self._grace:
            # This node lost the database moments ago; other nodes probably did too and have
            # not had the chance to heartbeat since. Judging them now would rescue live jobs.
            log.info("lifeline waits: the database connection recovered less than %ss ago",
                     self._ttl + self._grace)  # fmt: skip
            return 0
        with telemetry.span("oban.lifeline.rescue", self._identity) as context:
            total = await self._rescue(now)
            context.add({"rescued_count": total})
        await self._delete_dead(now)
        await self._workflows.step()
        return total

    async def observe(self) -> None:
        """Remember every producer row there is now, with its last heartbeat and ttl."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(self._queries.producer_beats, self._ttls())
            rows = await cur.fetchall()
        seen = time.monotonic()
        for uuid, updated_at, ttl in rows:
            self._known[uuid] = (updated_at, ttl, seen)
        # Forget rows gone for longer than the time fallback: by then rescue_after covers them.
        horizon = seen - max(self._rescue_after, self._ttl)
        for uuid in [u for u, (_, _, at) in self._known.items() if at < horizon]:
            del self._known[uuid]

    async def _rescue(self, now: Any) -> int:
        known = list(self._known.items())
        params = {
            **self._ttls(),
            "grace": self._grace,
            "rescue_after": self._rescue_after,
            "limit": RESCUE_LIMIT,
            "now": now,
            "known_uuids": [uuid for uuid, _ in known],
            "known_beats": [beat for _, (beat, _, _) in known],
            "known_ttls": [ttl for _, (_, ttl, _) in known],
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
                return total

    async def _delete_dead(self, now: Any) -> None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                self._queries.delete_dead_producers,
                {**self._ttls(), "grace": self._grace, "now": now},
            )
            for uuid, node in await cur.fetchall():
                log.info("deleted dead producer %s of node %s", uuid, node)

    def _ttls(self) -> dict[str, float]:
        return {"ttl": self._ttl, "foreign_ttl": self._foreign_ttl}
