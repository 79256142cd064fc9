"""A producer: one per queue per node. Registers its ``oban_producers`` row, then fetches only as
many jobs as it has free slots (queue limit and idle children both count), woken by insert
notices, freed slots and a jittered poll.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from .._aio import wait_event

log = logging.getLogger(__name__)

FetchedRow = tuple[Any, ...]


class Producer:
    def __init__(
        self,
        *,
        queue: str,
        limit: int,
        name: str,
        node: str,
        pool: Any,
        queries: Any,
        free_slots: Callable[[], int],
        reserve: Callable[[int], None],
        dispatch: Callable[[Producer, list[FetchedRow]], None],
        poll_interval: float,
        blocked: Callable[[], bool] = lambda: False,
        on_fetch: Callable[[str, int, float], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        on_spare_slots: Callable[[Producer], None] | None = None,
        min_batch: int = 1,
        heartbeat_ttl: float | None = None,
    ) -> None:
        self.queue = queue
        self.limit = limit
        self.paused = False
        self.uuid = str(uuid.uuid4())
        self.name = name
        self.node = node
        self.running: set[int] = set()
        # True after a fetch found fewer jobs than it asked for: the queue looks empty, so a
        # freed child slot is offered to other queues first. Cleared by an insert notice or a
        # poll, which are the signs that new jobs may be waiting.
        self.exhausted = False
        self.started_at = time.time()
        self._pool = pool
        self._queries = queries
        self._free_slots = free_slots
        self._reserve = reserve
        self._dispatch = dispatch
        self._poll_interval = poll_interval
        self._blocked = blocked
        self._on_fetch = on_fetch
        self._on_error = on_error
        self._on_spare_slots = on_spare_slots
        self._min_batch = max(1, min_batch)
        self._heartbeat_ttl = heartbeat_ttl
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- state shown to peers (oban_producers.meta and gossip) ----------------------------

    def meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "local_limit": self.limit,
            "paused": self.paused,
            "running": len(self.running),
        }
        if self._heartbeat_ttl is not None:
            # The silence after which peers may judge this producer dead (see the lifeline).
            meta["heartbeat_ttl"] = self._heartbeat_ttl
        return meta

    def meta_json(self) -> str:
        return json.dumps(self.meta())

    # -- control --------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def notice(self) -> None:
        """New jobs may be available (an insert notice, staging, a rescue): look again."""
        self.exhausted = False
        self._wake.set()

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self.notice()

    def scale(self, limit: int) -> None:
        self.limit = limit
        self.notice()

    async def register(self) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                self._queries.register_producer,
                {
                    "uuid": self.uuid,
                    "name": self.name,
                    "node": self.node,
                    "queue": self.queue,
                    "meta": self.meta_json(),
                },
            )

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"oban-producer-{self.queue}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    # -- fetching -------------------------------------------------------------------------

    def demand(self) -> int:
        if self.paused or self._blocked():
            return 0
        free = min(self.limit - len(self.running), self._free_slots())
        if free < self._min_batch and self.running:
            # Children still hold queued work (window > 1): wait for room for a real batch
            # rather than paying a fetch round trip per finished job.
            return 0
        return max(0, free)

    async def _run(self) -> None:
        failures = 0
        while True:
            demand = self.demand()
            if demand > 0:
                try:
                    got = await self._fetch(demand)
                    failures = 0
                except (psycopg.Error, OSError) as exc:
                    failures += 1
                    if self._on_error:
                        self._on_error("fetch")
                    log.warning("fetch for queue %r failed: %s", self.queue, exc)
                    await asyncio.sleep(min(0.1 * 2**failures, 5.0))
                    continue
                except Exception:  # never let a bug end the queue silently
                    failures += 1
                    log.exception("fetch for queue %r failed unexpectedly", self.queue)
                    await asyncio.sleep(min(0.1 * 2**failures, 5.0))
                    continue
                if got == demand:
                    continue  # there may be more waiting: fetch again without sleeping
            await self._sleep()

    async def _sleep(self) -> None:
        timeout = self._poll_interval * random.uniform(0.9, 1.1)
        if not await wait_event(self._wake, timeout):
            self.exhausted = False  # the poll: look again even without a notice
        self._wake.clear()

    async def _fetch(self, demand: int) -> int:
        self._reserve(demand)
        started = time.perf_counter()
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(
                    self._queries.fetch_jobs,
                    {"queue": self.queue, "demand": demand, "node": self.node, "uuid": self.uuid},
                )
                rows = await cur.fetchall()
        finally:
            self._reserve(-demand)
        if self._on_fetch:
            self._on_fetch(self.queue, len(rows), time.perf_counter() - started)
        self.exhausted = len(rows) < demand
        if rows:
            self._dispatch(self, rows)
        if self.exhausted and self._on_spare_slots is not None:
            self._on_spare_slots(self)  # slots we could not use: let other queues have them
        return len(rows)
