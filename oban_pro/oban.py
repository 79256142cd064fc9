"""``Oban``: the public face of a node — enqueue, job and queue operations, lifecycle.

With ``queues`` it starts a :class:`~oban_pro.coordinator.runtime.Runtime` (design.md "Picture":
producers, worker processes, acker, heartbeats, leadership and maintenance). Without queues it
is a client that only enqueues and manages jobs.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from .config import Config
from .coordinator.notifier import notify_params
from .coordinator.producer import Producer
from .coordinator.runtime import Runtime
from .coordinator.signals import apply_signal
from .cron import CronEntry
from .database import resolve_dsn
from .enqueue import insert_steps, run_async
from .errors import NotRunningError, SchemaNotReadyError, ValidationError
from .job import Job
from .naming import validate_name
from .operations import cancel_steps, delete_steps, get_job_steps, list_jobs_steps, retry_steps
from .queries import Queries

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
        self._runtime: Runtime | None = None
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
    def runtime(self) -> Runtime | None:
        """The running node's internals (None for a client or before :meth:`start`)."""
        return self._runtime

    @property
    def is_leader(self) -> bool:
        return bool(self._runtime and self._runtime.is_leader)

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
        if self.config.queues:
            try:
                await self._require_schema(pool)
            except SchemaNotReadyError:
                await self.stop()  # closes the pool it opened; nothing else was started
                raise
        for module in self.config.imports:
            importlib.import_module(module)
        if self.config.metrics_port is not None:
            self._start_metrics()
        if self.config.queues:
            self._runtime = Runtime(
                config=self.config,
                queries=self.queries,
                pool=pool,
                metrics=self.metrics,
                crontab=self._crontab,
                insert_jobs=self._insert_jobs,
                on_signal=self._on_signal,
            )
            await self._runtime.start()
            self.producers = self._runtime.producers
        self._started = True
        return self

    async def _require_schema(self, pool: AsyncConnectionPool) -> None:
        async with pool.connection() as conn:
            cur = await conn.execute(self.queries.missing_tables, {"prefix": self.config.prefix})
            missing = [name for (name,) in await cur.fetchall()]
        if missing:
            raise SchemaNotReadyError(self.config.prefix, missing)

    def _start_metrics(self) -> None:
        from .metrics import Metrics

        self.metrics = Metrics(self.node)
        self.metrics_port = self.metrics.serve(self.config.metrics_host, self.config.metrics_port)

    async def stop(self) -> None:
        """Graceful stop (see :meth:`Runtime.stop`), then close metrics and the pool."""
        if self._started:
            self._started = False
            if self._runtime is not None:
                await self._runtime.stop()
            if self.metrics is not None:
                self.metrics.close()
        if self._owns_pool and self._pool is not None and not self._pool.closed:
            await self._pool.close()
        if _instances.get(self.name) is self:
            del _instances[self.name]

    def stop_now(self) -> None:
        """Cut a graceful stop short: running jobs are killed and released at once."""
        self.config.shutdown_timeout = 0
        if self._runtime is not None:
            self._runtime.stop_now()

    def _on_signal(self, payload: dict[str, Any]) -> None:
        apply_signal(self, payload)

    def seconds_since_db_error(self) -> float:
        """How long this node has talked to the database without an error."""
        return self._runtime.seconds_since_db_error() if self._runtime else float("inf")

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
        return bool(self._runtime and self._runtime.kill_job(job_id))
