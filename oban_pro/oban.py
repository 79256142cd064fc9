"""``Oban``: the public face of a node — enqueue, job and queue operations, and the runtime.

With ``queues`` it runs a coordinator (design.md "Picture"): notifier, one producer per queue,
the executor and worker-process pool, the acker, heartbeats, leadership and, on the leader,
the stager, lifeline, pruner, cron and queue gauges. Without queues it is a client that only
enqueues and manages jobs.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from .config import Config
from .coordinator.acker import Acker
from .coordinator.executor import Executor
from .coordinator.heartbeat import Heartbeat
from .coordinator.leader import Leader
from .coordinator.notifier import Notifier, notify_params
from .coordinator.periodic import Periodic
from .coordinator.producer import Producer
from .cron import CronEntry
from .database import resolve_dsn
from .enqueue import insert_steps, run_async
from .errors import NotRunningError, ValidationError
from .job import Job
from .naming import validate_name
from .operations import cancel_steps, delete_steps, get_job_steps, list_jobs_steps, retry_steps
from .plugins.gossip import Gossip
from .plugins.lifeline import Lifeline
from .plugins.pruner import Pruner
from .plugins.scheduler import Scheduler
from .plugins.stager import Stager
from .queries import Queries
from .worker import cron_entries

log = logging.getLogger(__name__)

_instances: dict[str, Oban] = {}


class Oban:
    """A node (or a client, when no queues are given).

    Either pass ``config=Config(...)`` or the same fields as keyword arguments, e.g.
    ``Oban(dsn=..., queues={"default": 10}, processes=4, imports=["myapp.workers"])``.
    ``pool`` may be an existing psycopg ``AsyncConnectionPool``; ``crontab`` adds cron entries
    to those declared with ``@worker(cron=...)``.
    """

    def __init__(
        self,
        *,
        config: Config | None = None,
        pool: AsyncConnectionPool | None = None,
        crontab: Sequence[CronEntry] = (),
        **fields: Any,
    ) -> None:
        if config is not None and fields:
            raise ValidationError("config", "pass either config= or keyword fields, not both")
        self.config = config or Config(**fields)
        self.name = self.config.name
        self.node = self.config.node
        self.queries = Queries(self.config.prefix)
        self._pool = pool
        self._owns_pool = pool is None
        self._crontab = list(crontab)
        self._started = False
        self.producers: dict[str, Producer] = {}
        self.metrics: Any = None
        self.metrics_port: int | None = None
        self._loops: list[Periodic] = []
        self._notifier: Notifier | None = None
        self._acker: Acker | None = None
        self._executor: Executor | None = None
        self._worker_pool: Any = None
        self._leader: Leader | None = None
        self._scheduler: Scheduler | None = None
        self._last_db_error = -float("inf")  # monotonic time of this node's last db error
        _instances[self.name] = self

    # -- instances ------------------------------------------------------------------------

    @classmethod
    def get_instance(cls, name: str = "Oban") -> Oban:
        """The instance called ``name`` (what ``Worker.enqueue`` uses)."""
        try:
            return _instances[name]
        except KeyError:
            raise NotRunningError(
                f"no Oban instance named {name!r}; create Oban(name={name!r}, ...) first"
            ) from None

    @property
    def is_leader(self) -> bool:
        return bool(self._leader and self._leader.is_leader)

    @property
    def ident(self) -> str:
        return f"{self.name}.{self.node}"

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Oban:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def open_pool(self) -> AsyncConnectionPool:
        """Open the connection pool (enough for enqueueing; :meth:`start` calls it)."""
        if self._pool is None:
            dsn = self.config.dsn or resolve_dsn(None)
            self.config.dsn = dsn
            self._pool = AsyncConnectionPool(
                dsn,
                min_size=1,
                max_size=self.config.pool_size,
                open=False,
                kwargs={"autocommit": True},
                name=f"oban-{self.name}",
            )
        if self._owns_pool and self._pool.closed:
            # One direct connection first: a wrong DSN fails at once with libpq's own message
            # instead of a pool timeout 30 s later.
            probe = await psycopg.AsyncConnection.connect(self.config.dsn or "", connect_timeout=10)
            await probe.close()
            await self._pool.open(wait=True, timeout=30)
        return self._pool

    async def start(self) -> Oban:
        """Start the node: children first, then notifier, acker, producers and loops."""
        if self._started:
            return self
        pool = await self.open_pool()
        for module in self.config.imports:
            importlib.import_module(module)
        if self.config.metrics_port is not None:
            self._start_metrics()
        if self.config.queues:
            await self._start_runtime(pool)
        self._started = True
        return self

    async def _start_runtime(self, pool: AsyncConnectionPool) -> None:
        from .pool.pool import WorkerPool

        cfg = self.config
        m = self.metrics
        self._acker = Acker(
            pool,
            self.queries.ack_jobs,
            max_crashes=cfg.max_crashes,
            batch_size=cfg.ack_batch_size,
            interval=cfg.ack_interval,
            max_backlog=cfg.ack_max_backlog,
            on_batch=self._on_ack_batch if m else None,
            on_error=lambda: self._on_db_error("ack"),
        )
        self._executor = Executor(self._acker, default_timeout=cfg.job_timeout, metrics=m)
        self._executor.on_slot_freed = self._on_slot_freed
        self._worker_pool = WorkerPool(
            cfg.processes,
            start_method=cfg.start_method,
            imports=cfg.imports,
            max_jobs_per_child=cfg.max_jobs_per_child,
            max_memory=cfg.max_memory,
            window=cfg.window,
            on_done=self._executor.on_done,
            on_failed=self._executor.on_failed,
            on_capacity=self._wake_all,
            on_restart=m.child_restart if m else None,
        )
        self._executor.pool = self._worker_pool
        await self._worker_pool.start()
        if m is not None:
            m.track_pool(lambda: self._worker_pool.stats)
            m.track_producers(self._producer_gauges)
        self._notifier = Notifier(
            cfg.dsn or "", cfg.prefix, on_reconnect=self._on_notifier_reconnect
        )
        self._notifier.listen("insert", self._on_insert)
        self._notifier.listen("signal", self._on_signal)
        await self._notifier.start()
        self._acker.start()
        for queue, limit in cfg.queues.items():
            producer = self._make_producer(queue, limit, pool)
            await producer.register()
            self.producers[queue] = producer
        for producer in self.producers.values():
            producer.start()
        self._start_loops(pool)

    def _make_producer(self, queue: str, limit: int, pool: AsyncConnectionPool) -> Producer:
        assert self._executor is not None and self._acker is not None
        m = self.metrics
        acker = self._acker
        return Producer(
            queue=queue,
            limit=limit,
            name=self.name,
            node=self.node,
            pool=pool,
            queries=self.queries,
            free_slots=self._executor.free_slots,
            reserve=self._executor.reserve,
            dispatch=self._executor.dispatch,
            poll_interval=self.config.poll_interval,
            blocked=lambda: acker.backpressure,
            on_fetch=m.jobs_fetched if m else None,
            on_error=self._on_db_error,
            on_spare_slots=self._offer_slots,
        )

    def _start_loops(self, pool: AsyncConnectionPool) -> None:
        cfg, m = self.config, self.metrics
        on_error = self._on_db_error
        self._leader = Leader(
            pool=pool,
            queries=self.queries,
            name=self.name,
            node=self.node,
            ttl=cfg.leader_ttl,
            on_change=m.set_leader if m else None,
        )
        leader_loop = Periodic("leader", cfg.leader_ttl / 3, self._leader.elect, on_error=on_error)
        assert self._notifier is not None
        self._notifier.listen("leader", lambda p: self._leader.on_notice(p, leader_loop.trigger))  # type: ignore[union-attr]
        heartbeat = Heartbeat(
            pool,
            self.queries,
            lambda: list(self.producers.values()),
            on_beat=m.heartbeat_sent if m else None,
        )
        stager = Stager(pool, self.queries, self._wake_queue)
        lifeline = Lifeline(
            pool,
            self.queries,
            heartbeat_ttl=cfg.heartbeat_ttl,
            rescue_after=cfg.rescue_after,
            on_rescued=self._on_rescued,
            healthy_for=self.seconds_since_db_error,
        )
        pruner = Pruner(pool, self.queries, max_age=cfg.prune_max_age, limit=cfg.prune_limit)
        self._scheduler = Scheduler([*cron_entries(), *self._crontab], self._insert_jobs)
        gossip = Gossip(pool, self.queries, lambda: list(self.producers.values()))
        self._loops = [
            leader_loop,
            Periodic("heartbeat", cfg.heartbeat_interval, heartbeat.step, on_error=on_error),
            Periodic("gossip", cfg.gossip_interval, gossip.step, on_error=on_error),
            Periodic("stage", cfg.stage_interval, self._if_leader(stager.step), on_error=on_error),
            Periodic(
                "rescue", cfg.lifeline_interval, self._if_leader(lifeline.step), on_error=on_error
            ),
            Periodic("prune", cfg.prune_interval, self._if_leader(pruner.step), on_error=on_error),
            Periodic("cron", 1.0, self._cron_step, on_error=on_error),
        ]
        if m is not None:
            from .plugins.gauges import QueueGauges

            gauges = QueueGauges(pool, self.queries, m.set_queue_counts)
            self._loops.append(
                Periodic("gauge", 5.0, self._if_leader(gauges.step), on_error=on_error)
            )
        for loop in self._loops:
            loop.start()

    def _if_leader(self, step: Any) -> Any:
        async def run() -> Any:
            if self.is_leader:
                return await step()
            return None

        return run

    async def _cron_step(self) -> None:
        # Sleep to the next minute boundary, then insert that minute's jobs if leading.
        assert self._scheduler is not None
        await asyncio.sleep(self._scheduler.seconds_to_next_minute())
        if self.is_leader and self._scheduler.entries:
            await self._scheduler.step()

    def _start_metrics(self) -> None:
        from .metrics import Metrics

        self.metrics = Metrics(self.node)
        self.metrics_port = self.metrics.serve(self.config.metrics_host, self.config.metrics_port)

    async def stop(self) -> None:
        """Graceful stop: stop fetching, let running jobs finish up to ``shutdown_timeout``,
        then kill the children, ack what finished, release the rest to ``available`` at once,
        delete producer rows and resign leadership."""
        if not self._started:
            if self._pool is not None and self._owns_pool:
                await self._pool.close()
            return
        self._started = False
        for producer in self.producers.values():
            await producer.stop()
        if self._worker_pool is not None:
            unfinished = await self._worker_pool.stop(self.config.shutdown_timeout)
            assert self._executor is not None
            self._executor.release(list(unfinished) + self._executor.running_job_ids())
        for loop in self._loops:
            await loop.stop()
        if self._acker is not None:
            await self._acker.stop(timeout=max(5.0, self.config.shutdown_timeout))
        await self._cleanup_rows()
        if self._notifier is not None:
            await self._notifier.stop()
        if self.metrics is not None:
            self.metrics.close()
        if self._owns_pool and self._pool is not None:
            await self._pool.close()
        if _instances.get(self.name) is self:
            del _instances[self.name]

    def stop_now(self) -> None:
        """Cut a graceful stop short: running jobs are killed and released at once."""
        self.config.shutdown_timeout = 0
        if self._worker_pool is not None:
            self._worker_pool.hurry()

    async def _cleanup_rows(self) -> None:
        if self._pool is None:
            return
        try:
            if self.producers:
                async with self._pool.connection() as conn:
                    await conn.execute(
                        self.queries.delete_producers,
                        {"uuids": [p.uuid for p in self.producers.values()]},
                    )
            if self._leader is not None:
                await self._leader.resign()
        except Exception as exc:  # the database may be gone; the lifeline cleans up later
            log.warning("could not delete producer rows / resign at shutdown: %s", exc)

    # -- runtime callbacks ----------------------------------------------------------------

    def _on_slot_freed(self, producer: Producer) -> None:
        # Children are shared by all queues. Waking is FIFO, so the other queues get the freed
        # slot first (round robin) and the queue that just finished a job goes last.
        if len(self.producers) == 1:
            producer.wake()
            return
        self._offer_slots(producer)
        producer.wake()

    def _offer_slots(self, after: Producer) -> None:
        """Wake the queues after ``after`` (in order) that may have jobs waiting."""
        producers = list(self.producers.values())
        start = producers.index(after) + 1 if after in producers else 0
        for producer in producers[start:] + producers[:start]:
            if producer is not after and not producer.exhausted:
                producer.wake()

    def _on_db_error(self, operation: str) -> None:
        self._last_db_error = time.monotonic()
        if self.metrics is not None:
            self.metrics.db_error(operation)

    def seconds_since_db_error(self) -> float:
        """How long this node has talked to the database without an error."""
        return time.monotonic() - self._last_db_error

    def _on_ack_batch(self, size: int, seconds: float, stale: int) -> None:
        assert self.metrics is not None and self._acker is not None
        self.metrics.ack_batch(size, seconds)
        self.metrics.acks_stale(stale)
        self.metrics.set_ack_backlog(self._acker.backlog - size)

    def _wake_all(self) -> None:
        for producer in self.producers.values():
            producer.wake()

    def _wake_queue(self, queue: str) -> None:
        producer = self.producers.get(queue)
        if producer is not None:
            producer.notice()

    def _on_insert(self, payload: dict[str, Any]) -> None:
        queue = payload.get("queue")
        if isinstance(queue, str):
            self._wake_queue(queue)

    def _on_notifier_reconnect(self) -> None:
        if self.metrics is not None:
            self.metrics.notifier_reconnect()
        for producer in self.producers.values():
            producer.notice()  # notices may have been missed while disconnected

    def _on_rescued(self, count: int, queues: set[str]) -> None:
        if self.metrics is not None:
            self.metrics.jobs_rescued(count)
        for queue in queues:
            self._wake_queue(queue)

    def _on_signal(self, payload: dict[str, Any]) -> None:
        from .coordinator.signals import apply_signal

        apply_signal(self, payload)

    def _producer_gauges(self) -> list[tuple[str, int, int, bool]]:
        return [(p.queue, p.limit, len(p.running), p.paused) for p in self.producers.values()]

    # -- enqueueing -----------------------------------------------------------------------

    async def _insert_jobs(self, jobs: list[Job], conn: Any = None) -> list[Job]:
        if conn is not None:
            return await run_async(conn, insert_steps(self.queries, jobs))
        pool = await self._ensure_pool()
        async with pool.connection() as own:
            return await run_async(own, insert_steps(self.queries, jobs))

    async def enqueue(self, job: Job, *, conn: Any = None) -> Job:
        """Insert one job (inside ``conn``'s transaction when given); returns it with its id.

        A unique job that matches an existing one returns that job with ``conflict = True``.
        """
        return (await self._insert_jobs([job], conn))[0]

    async def enqueue_many(self, jobs: Iterable[Job], *, conn: Any = None) -> list[Job]:
        """Insert many jobs in one round trip per batch; ids are set in the given order."""
        return await self._insert_jobs(list(jobs), conn)

    async def _ensure_pool(self) -> AsyncConnectionPool:
        if self._pool is None or (self._owns_pool and self._pool.closed):
            return await self.open_pool()
        return self._pool

    async def _run(self, steps: Any) -> Any:
        pool = await self._ensure_pool()
        async with pool.connection() as conn:
            return await run_async(conn, steps)

    # -- job operations -------------------------------------------------------------------

    async def get_job(self, job_id: int) -> Job | None:
        found = await self._run(get_job_steps(self.queries, job_id))
        return found[0] if found else None

    async def list_jobs(
        self, *, state: str | None = None, queue: str | None = None, limit: int = 100
    ) -> list[Job]:
        return await self._run(list_jobs_steps(self.queries, state=state, queue=queue, limit=limit))

    async def retry_job(self, job: Job | int) -> None:
        await self.retry_many_jobs([job])

    async def retry_many_jobs(self, jobs: Iterable[Job | int]) -> int:
        return len(await self._run(retry_steps(self.queries, jobs)))

    async def cancel_job(self, job: Job | int) -> None:
        await self.cancel_many_jobs([job])

    async def cancel_many_jobs(self, jobs: Iterable[Job | int]) -> int:
        """Cancel jobs in any non-final state; executing ones are also stopped (pkill)."""
        return len(await self._run(cancel_steps(self.queries, jobs)))

    async def delete_job(self, job: Job | int) -> None:
        await self.delete_many_jobs([job])

    async def delete_many_jobs(self, jobs: Iterable[Job | int]) -> int:
        """Delete jobs in any state but ``executing``."""
        return len(await self._run(delete_steps(self.queries, jobs)))

    # -- queue operations (local at once, and across nodes through signals) ---------------

    async def _signal(self, payload: dict[str, Any], node: str | None) -> None:
        from .coordinator.signals import apply_signal

        payload = {**payload, "ident": f"{self.name}.{node}" if node else "any"}
        apply_signal(self, payload)
        await self._run_notify("signal", payload)

    async def _run_notify(self, event: str, payload: dict[str, Any]) -> None:
        pool = await self._ensure_pool()
        async with pool.connection() as conn:
            await conn.execute(
                self.queries.notify, notify_params(self.config.prefix, event, payload)
            )

    async def pause_queue(self, queue: str, *, node: str | None = None) -> None:
        await self._signal({"action": "pause", "queue": validate_name("queue", queue)}, node)

    async def resume_queue(self, queue: str, *, node: str | None = None) -> None:
        await self._signal({"action": "resume", "queue": validate_name("queue", queue)}, node)

    async def pause_all_queues(self, *, node: str | None = None) -> None:
        await self._signal({"action": "pause", "queue": "*"}, node)

    async def resume_all_queues(self, *, node: str | None = None) -> None:
        await self._signal({"action": "resume", "queue": "*"}, node)

    async def scale_queue(self, queue: str, *, limit: int, node: str | None = None) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValidationError("limit", f"must be an integer >= 1, got {limit!r}")
        await self._signal(
            {"action": "scale", "queue": validate_name("queue", queue), "limit": limit}, node
        )

    def check_queue(self, queue: str) -> dict[str, Any] | None:
        """This node's view of ``queue``: limit, paused, running job ids; None if not run here."""
        producer = self.producers.get(queue)
        if producer is None:
            return None
        return {
            "queue": queue,
            "limit": producer.limit,
            "paused": producer.paused,
            "running": sorted(producer.running),
            "node": self.node,
            "uuid": producer.uuid,
        }

    def check_all_queues(self) -> list[dict[str, Any]]:
        return [info for q in self.producers if (info := self.check_queue(q)) is not None]

    # -- used by signals ------------------------------------------------------------------

    def kill_job(self, job_id: int) -> bool:
        """Stop the child running ``job_id`` on this node (pkill); False if not running here."""
        if self._worker_pool is None:
            return False
        return bool(self._worker_pool.kill_job(job_id, "cancelled"))
