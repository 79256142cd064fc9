"""Leadership: a lease row in ``oban_leaders`` (not Elixir's ``oban_peers``, compat.md §1).

The leader refreshes its lease every third of ``ttl``; others try to take it when it expires or
when a ``leader`` notice says the leader stepped down. Only the leader runs the lifeline,
pruner, cron, stager and queue gauges.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .. import telemetry

log = logging.getLogger(__name__)


class Leader:
    def __init__(
        self,
        *,
        pool: Any,
        queries: Any,
        name: str,
        node: str,
        ttl: float,
        on_change: Callable[[bool], None] | None = None,
        enabled: bool = True,
    ) -> None:
        #: False (Oban.py's ``leadership=False``): this node never takes the lease.
        self.enabled = enabled
        self._pool = pool
        self._queries = queries
        self.name = name
        self.node = node
        self.ttl = ttl
        self.is_leader = False
        self._on_change = on_change

    async def elect(self) -> bool:
        """Take or refresh the lease; returns whether this node leads."""
        if not self.enabled:
            return False
        with telemetry.span("oban.leader.election", {"name": self.name, "node": self.node}) as ctx:
            async with self._pool.connection() as conn:
                cur = await conn.execute(
                    self._queries.elect_leader,
                    {"name": self.name, "node": self.node, "ttl": self.ttl, "now": None},
                )
                row = await cur.fetchone()
            self._set(row is not None and row[0] == self.node)
            ctx.add({"leader": self.is_leader})
        return self.is_leader

    async def resign(self) -> None:
        if not self.is_leader:
            return
        from .notifier import notify_params

        async with self._pool.connection() as conn:
            await conn.execute(self._queries.resign_leader, {"name": self.name, "node": self.node})
            await conn.execute(
                self._queries.notify,
                notify_params(self._queries.prefix, "leader", {"down": self.name}),
            )
        self._set(False)

    def on_notice(self, payload: dict[str, Any], trigger: Callable[[], None]) -> None:
        if payload.get("down") == self.name and not self.is_leader:
            trigger()

    def _set(self, leading: bool) -> None:
        if leading != self.is_leader:
            log.info(
                "node %s %s leadership of %s", self.node, "took" if leading else "lost", self.name
            )
            self.is_leader = leading
            if self._on_change:
                self._on_change(leading)
