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
from datetime import datetime
from typing import Any

from .. import telemetry
from ..store import KnownProducer, RescueRules, Store
from .base import NodeView

log = logging.getLogger(__name__)

RESCUE_LIMIT = 1000
#: Oban.py's refresher deletes producer rows silent for 60 s: the least silence that proves a
#: row of another engine dead.
FOREIGN_TTL = 60.0


class Lifeline:
    name = "rescue"
    # Every node observes producers (a new leader then knows them); the leader rescues.
    leader_only = False

    def __init__(
        self,
        store: Store,
        node: NodeView,
        *,
        interval: float,
        heartbeat_ttl: float,
        reconnect_bound: float,
        rescue_after: float,
        foreign_ttl: float = FOREIGN_TTL,
        repair: Any = None,
    ) -> None:
        self.interval = interval
        self._store = store
        self._node = node
        self._rules = RescueRules(
            ttl=heartbeat_ttl, foreign_ttl=foreign_ttl, grace=reconnect_bound,
            rescue_after=rescue_after,
        )  # fmt: skip
        # Workflows left stuck by jobs finished outside an ack (workflow_repair.WorkflowRepair).
        self._repair = repair
        # Telemetry metadata: which instance rescued.
        self._identity = {"name": node.name, "node": node.node}
        # uuid -> (last heartbeat seen, its ttl, monotonic time it was last seen)
        self._known: dict[str, tuple[datetime, float, float]] = {}

    @property
    def known_producers(self) -> set[str]:
        """Producer uuids this node has seen heartbeating (and still remembers)."""
        return set(self._known)

    async def step(self, now: datetime | None = None) -> int:
        """Observe producers; on the leader, rescue orphans and delete dead producer rows.
        Returns the number of jobs rescued."""
        await self.observe()
        if not self._node.is_leader:
            return 0
        rules = self._rules
        if self._node.seconds_since_db_error() < rules.ttl + rules.grace:
            # This node lost the database moments ago; other nodes probably did too and have
            # not had the chance to heartbeat since. Judging them now would rescue live jobs.
            log.info("lifeline waits: the database connection recovered less than %ss ago",
                     rules.ttl + rules.grace)  # fmt: skip
            return 0
        with telemetry.span("oban.lifeline.rescue", self._identity) as context:
            total = await self._rescue(now)
            context.add({"rescued_count": total})
        for dead in await self._store.delete_dead_producers(rules=rules, now=now):
            log.info("deleted dead producer %s of node %s", dead.uuid, dead.node)
        if self._repair is not None:
            await self._repair.step()
        return total

    async def observe(self) -> None:
        """Remember every producer row there is now, with its last heartbeat and ttl."""
        rules = self._rules
        beats = await self._store.producer_beats(ttl=rules.ttl, foreign_ttl=rules.foreign_ttl)
        seen = time.monotonic()
        for beat in beats:
            self._known[beat.uuid] = (beat.updated_at, beat.ttl, seen)
        # Forget rows gone for longer than the time fallback: by then rescue_after covers them.
        horizon = seen - max(rules.rescue_after, rules.ttl)
        for uuid in [u for u, (_, _, at) in self._known.items() if at < horizon]:
            del self._known[uuid]

    async def _rescue(self, now: datetime | None) -> int:
        known = [KnownProducer(uuid, beat, ttl) for uuid, (beat, ttl, _) in self._known.items()]
        total = 0
        while True:
            rescued = await self._store.rescue_orphans(
                rules=self._rules, known=known, limit=RESCUE_LIMIT, now=now
            )
            if rescued:
                log.warning("lifeline rescued %d orphaned jobs", len(rescued))
                self._node.jobs_rescued({job.queue for job in rescued if job.state == "available"})
            total += len(rescued)
            if len(rescued) < RESCUE_LIMIT:
                return total
