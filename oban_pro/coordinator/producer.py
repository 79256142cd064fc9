"""A producer: one per queue per node. Registers its ``oban_producers`` row, then fetches up to
its queue's limit minus the queue's jobs running on this node (the dispatcher's ledger says how
many), woken by insert notices, finished jobs and a jittered poll. Each fetch statement is a
telemetry span, ``oban.producer.get`` (Oban.py's: ``queue``, ``count``), which the Prometheus
metrics subscribe to.

A queue with limits across nodes (``global_limit``, ``rate_limit``: :mod:`oban_pro.limits`)
fetches through the locked, limited statements instead, which admit no more than those limits
leave; when its rate window is full it sleeps until the window lets the next job start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import psycopg

from .. import telemetry
from .._aio import cancel_and_wait, wait_event
from ..limits import LimitStatus, QueueLimits, fetch_params

if TYPE_CHECKING:
    from ..store import FetchedJob, Store
    from .dispatcher import Dispatcher

log = logging.getLogger(__name__)

#: Seconds a stopping producer waits for its fetch in flight before cancelling it.
STOP_GRACE = 5.0
#: Seconds a globally limited fetch waits at most for this node's earlier acks to be written.
ACK_WAIT = 1.0


class Producer:
    def __init__(
        self,
        *,
        queue: str,
        limit: int,
        name: str,
        node: str,
        store: Store,
        dispatcher: Dispatcher,
        poll_interval: float,
        blocked: Callable[[], bool] = lambda: False,
        on_error: Callable[[str], None] | None = None,
        heartbeat_ttl: float | None = None,
        limits: QueueLimits | None = None,
        acks_written: Callable[[float], Awaitable[bool]] | None = None,
    ) -> None:
        self.queue = queue
        self.limit = limit
        self.limits: QueueLimits | None = None
        #: The last reading of the limits' use across nodes (None: not limited, or not read yet).
        self.limit_status: LimitStatus | None = None
        #: The last limited fetch got fewer jobs than asked: the limits (or an empty queue) held
        #: it back, so other nodes of the queue are likely held back too.
        self.held_back = False
        self.paused = False
        self.uuid = str(uuid.uuid4())
        self.name = name
        self.node = node
        self.started_at = time.time()
        self._store = store
        self._dispatcher = dispatcher
        self._poll_interval = poll_interval
        self._blocked = blocked
        # Telemetry metadata of this producer's fetches.
        self._span_meta = {"queue": queue, "name": name, "node": node}
        self._on_error = on_error
        self._heartbeat_ttl = heartbeat_ttl
        self._acks_written = acks_written
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._limit_params: dict[str, Any] = {}
        # Seconds until the full rate window opens again, from the last short fetch.
        self._rate_wait: float | None = None
        self.set_limits(limits)

    # -- state shown to peers (oban_producers.meta and gossip) ----------------------------

    @property
    def running(self) -> list[int]:
        """Ids of this queue's jobs running on this node (from the dispatcher's ledger)."""
        return self._dispatcher.ledger.job_ids(self.queue)

    def meta(self) -> dict[str, Any]:
        running = self._dispatcher.running_count(self.queue)
        meta: dict[str, Any] = {
            "local_limit": self.limit, "paused": self.paused, "running": running
        }  # fmt: skip
        if self._heartbeat_ttl is not None:
            # The silence after which peers may judge this producer dead (see the lifeline).
            meta["heartbeat_ttl"] = self._heartbeat_ttl
        meta.update(self.limits_json())
        return meta

    def limits_json(self) -> dict[str, Any]:
        """The queue's limits across nodes in Oban Pro's producer fields (``global_limit``,
        ``rate_limit``), with their use as last read when there is a reading."""
        limits, status = self.limits, self.limit_status
        if limits is None:
            return {}
        if status is not None and status.limits is limits:
            return status.to_json()
        return {
            name: lim.to_json()
            for name in ("global_limit", "rate_limit")
            if (lim := getattr(limits, name)) is not None
        }

    def meta_json(self) -> str:
        return json.dumps(self.meta())

    # -- control --------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def notice(self) -> None:
        """New jobs may be available (an insert notice, staging, a rescue): look again."""
        self._wake.set()

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self.notice()

    def scale(self, limit: int) -> None:
        self.limit = limit
        self._dispatcher.limits_changed()
        self.notice()

    def set_limits(self, limits: QueueLimits | None) -> None:
        """Apply new limits across nodes (None: the queue has none); the next fetch obeys."""
        self.limits = limits
        self.limit_status = None
        self._rate_wait = None
        if limits is not None:
            self._limit_params = {
                **fetch_params(limits, self._store.prefix, self.queue),
                "node": self.node,
                "uuid": self.uuid,
            }
        self.notice()

    async def refresh_status(self) -> LimitStatus | None:
        """Read the limits' use across nodes now (for check_queue, gossip and metrics)."""
        limits = self.limits
        if limits is None:
            return None
        status = await self._store.limit_status(limits, self._limit_params, now=time.time())
        if self.limits is limits:  # not replaced by a scale meanwhile
            self.limit_status = status
        return status

    async def register(self) -> None:
        await self._store.register_producer(
            uuid=self.uuid, name=self.name, node=self.node, queue=self.queue,
            meta=self.meta_json(),
        )  # fmt: skip

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"oban-producer-{self.queue}")

    async def stop(self) -> None:
        """Stop fetching. A fetch in flight is let finish and its jobs dispatched: cancelling it
        could lose rows the database already gave to this producer (they would sit
        ``executing`` with nobody running them until rescued). Cancelled only if it hangs."""
        if self._task:
            self._stopping = True
            self._wake.set()
            await asyncio.wait({self._task}, timeout=STOP_GRACE)
            await cancel_and_wait(self._task)  # at once if it has ended (its error retrieved)
            self._task = None

    # -- fetching -------------------------------------------------------------------------

    def demand(self) -> int:
        """Jobs to fetch now: the limit minus this queue's jobs running here."""
        if self.paused or self._blocked():
            return 0
        return self._dispatcher.demand(self)

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            # No waiting for more room: jobs that finish while a fetch is in flight make the next
            # fetch's batch (measured: waiting 2 ms for a bigger batch lowered no-op throughput).
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
                    await wait_event(self._wake, min(0.1 * 2**failures, 5.0))
                    continue
                except Exception:  # never let a bug end the queue silently
                    failures += 1
                    log.exception("fetch for queue %r failed unexpectedly", self.queue)
                    await wait_event(self._wake, min(0.1 * 2**failures, 5.0))
                    continue
                if got == demand:
                    continue  # there may be more waiting: fetch again without sleeping
            await self._sleep()

    async def _sleep(self) -> None:
        timeout = self._poll_interval * random.uniform(0.9, 1.1)
        if self._rate_wait is not None:
            # A full rate window: no later than when it lets the next job start. Nobody
            # notifies that moment; and the window is the cluster's, not this node's.
            timeout = min(timeout, self._rate_wait + 0.002)
            self._rate_wait = None
        await wait_event(self._wake, timeout)
        self._wake.clear()

    async def _fetch(self, demand: int) -> int:
        if self.limits is not None and self.limits.global_limit and self._acks_written:
            # The global count is read from the database, where this node's finished jobs stay
            # executing until their acks are written: without this wait the limit would hold
            # back room that is free (measured: a fifth more fetches, each smaller).
            await self._acks_written(ACK_WAIT)
        sent = time.monotonic()
        with telemetry.span("oban.producer.get", self._span_meta) as span:
            if self.limits is None:
                jobs = await self._store.fetch_jobs(
                    queue=self.queue, demand=demand, node=self.node, uuid=self.uuid
                )
            else:
                jobs = await self._fetch_limited(self.limits, demand)
            span.add({"count": len(jobs)})
        took = time.monotonic() - sent
        if jobs and self._heartbeat_ttl is not None and took > self._heartbeat_ttl:
            # The node stood still (a frozen process or VM) between fetching and dispatching,
            # long enough to be judged dead: these jobs may have been rescued and run elsewhere.
            self._dispatcher.give_back(
                self, jobs, f"the fetch took {took:.1f} s, longer than heartbeat_ttl"
            )
        elif jobs:
            self._dispatcher.dispatch(self, jobs)
        return len(jobs)

    async def _fetch_limited(self, limits: QueueLimits, demand: int) -> list[FetchedJob]:
        params = {**self._limit_params, "demand": demand}
        # Short on a rate-limited queue: maybe the rate window is full. Learn when it next
        # opens (one more statement, only on short fetches of rate-limited queues).
        jobs, status = await self._store.fetch_limited(
            limits, params, status_when_short=limits.rate_limit is not None, now=time.time()
        )
        self.held_back = len(jobs) < demand
        if status is not None and self.limits is limits:
            self.limit_status = status
            self._rate_wait = status.opens_in
        return jobs
