"""Gossip: periodic ``checks`` notices (compat.md §3) so Oban Web and Elixir nodes see this
node's queues and do not call their jobs orphaned. Large check lists are split so each notice
stays under PostgreSQL's 8000-byte payload limit.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ..naming import channel
from ..payloads import encode_payload
from ..store import Store
from .base import NodeView, QueueCheck

MAX_RUNNING_IDS = 100


def check(queue: QueueCheck) -> dict[str, Any]:
    """A queue's check in the fields Oban Web reads."""
    return {
        "uuid": queue.uuid,
        "name": queue.name,
        "node": queue.node,
        "queue": queue.queue,
        "limit": queue.limit,
        "local_limit": queue.limit,
        "paused": queue.paused,
        "running": sorted(queue.running)[:MAX_RUNNING_IDS],
        "started_at": datetime.fromtimestamp(queue.started_at, UTC).isoformat(),
        "updated_at": datetime.now(UTC).isoformat(),
        **queue.limits,
    }


class Gossip:
    name = "gossip"
    leader_only = False

    def __init__(self, store: Store, node: NodeView, *, interval: float) -> None:
        self.interval = interval
        self._store = store
        self._node = node
        self._channel = channel(store.prefix, "gossip")

    async def step(self, now: datetime | None = None) -> None:
        checks = [check(queue) for queue in await self._node.queue_checks()]
        if checks:
            await self._store.notify(
                self._channel, [encode_payload({"checks": group}) for group in _groups(checks)]
            )


def _groups(checks: list[dict[str, Any]], size: int = 8) -> list[list[dict[str, Any]]]:
    return [checks[i : i + size] for i in range(0, len(checks), size)]
