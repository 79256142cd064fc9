"""Gossip: periodic ``checks`` notices (compat.md §3) so Oban Web and Elixir nodes see this
node's queues and do not call their jobs orphaned. Large check lists are split so each notice
stays under PostgreSQL's 8000-byte payload limit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from ..coordinator.producer import Producer
from ..payloads import encode_payload

MAX_RUNNING_IDS = 100


def check(producer: Producer) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    started = datetime.fromtimestamp(producer.started_at, UTC).isoformat()
    return {
        "uuid": producer.uuid,
        "name": producer.name,
        "node": producer.node,
        "queue": producer.queue,
        "limit": producer.limit,
        "local_limit": producer.limit,
        "paused": producer.paused,
        "running": sorted(producer.running)[:MAX_RUNNING_IDS],
        "started_at": started,
        "updated_at": now,
        **producer.limits_json(),
    }


class Gossip:
    def __init__(self, pool: Any, queries: Any, producers: Callable[[], Sequence[Producer]]):
        self._pool = pool
        self._queries = queries
        self._producers = producers

    async def step(self) -> None:
        producers = self._producers()
        for producer in producers:
            if producer.limits is not None:
                await producer.refresh_status()  # checks show the limits' use across nodes
        checks = [check(p) for p in producers]
        if not checks:
            return
        payloads = [encode_payload({"checks": group}) for group in _groups(checks)]
        from ..naming import channel

        async with self._pool.connection() as conn:
            await conn.execute(
                self._queries.notify_many,
                {"channel": channel(self._queries.prefix, "gossip"), "payloads": payloads},
            )


def _groups(checks: list[dict[str, Any]], size: int = 8) -> list[list[dict[str, Any]]]:
    return [checks[i : i + size] for i in range(0, len(checks), size)]
