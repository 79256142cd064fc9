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
from ..naming import channel
from ..payloads import encode_payload
from ..store import Store

log = logging.getLogger(__name__)


class Leader:
    def __init__(
        self,
        *,
        store: Store,
        name: str,
        node: str,
        ttl: float,
        on_change: Callable[[bool], None] | None = None,
        enabled: bool = True,
    ) -> None:
        #: False (Oban.py's ``leadership=False``): this node never takes the lease.
        self.enabled = enabled
        self._store = store
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
            self._set(await self._store.elect_leader(name=self.name, node=self.node, ttl=self.ttl))
            ctx.add({"leader": self.is_leader})
        return self.is_leader

    async def resign(self) -> None:
        if not self.is_leader:
            return
        await self._store.resign_leader(
            name=self.name,
            node=self.node,
            channel=channel(self._store.prefix, "leader"),
            payload=encode_payload({"down": self.name}),
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
