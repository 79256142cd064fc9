"""``Oban``: the public face of a node — enqueue, job and queue operations, lifecycle.

With ``queues`` it starts a :class:`~oban_pro.coordinator.runtime.Runtime` (design.md "Picture":
producers, worker processes, acker, heartbeats, leadership and maintenance). Without queues it
is a client that only enqueues and manages jobs.

Every method of Oban.py's ``Oban`` is here with its call shape and return type (README,
"Compatibility with Oban.py"); oban_pro's own additions (``list_jobs``, ``dsn=``, ``Client``,
unique jobs, ...) come on top.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import psycopg
from psycopg_pool import AsyncConnectionPool

from . import workflow_ops
from .config import Config, load_config
from .coordinator.producer import Producer
from .coordinator.runtime import Runtime
from .coordinator.signals import apply_signal
from .cron import CronEntry
from .database import resolve_dsn
from .enqueue import jobs_list, run_async, unwrap_async_conn
from .errors import NotRunningError, SchemaNotReadyError, ValidationError
from .job import Job
from .job_operations import AsyncJobOperations
from .limits import LIMIT_OPTIONS, QueueLimits
from .naming import validate_name
from .queries import Queries
from .queue_signals import QueueSignals, start_payload
from .store import Store
from .testing.mode import current_mode
from .workflow import Workflow
from .workflow_ops import WorkflowStatus

log = logging.getLogger(__name__)

_instances: dict[str, Oban] = {}

#: Oban.py keywords whose ``None`` means something (the others' ``None`` means "the default").
_NONE_MEANS_SOMETHING = frozenset({"shutdown_grace_period"})


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """One queue as this node runs it (Oban.py's ``QueueInfo``), from :meth:`Oban.check_queue`.

    ``info["limit"]`` also works (the dict :meth:`Oban.check_queue` returned before).
    """

    #: The concurrency limit on this node.
    limit: int
    #: The producer's state as it shows it to peers (``local_limit``, ``paused``, ``running``).
    meta: dict[str, Any]
    #: The node running the queue.
    node: str
    #: Whether the queue is paused here.
    paused: bool
    #: The queue's name.
    queue: str
    #: Ids of the queue's jobs running on this node.
    running: list[int]
    #: When this node started the queue.
    started_at: datetime | None
    #: The producer's uuid (``attempted_by[2]`` of the jobs it fetches).
    uuid: str

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None


class Oban(AsyncJobOperations, QueueSignals):
    """A node (or a client, when no queues are given).

    Either pass ``config=Config(...)`` or the same fields as keyword arguments, e.g.
    ``Oban(dsn=..., queues={"default": 10}, processes=4, imports=["myapp.workers"])``.
    ``pool`` may be an existing psycopg ``AsyncConnectionPool`` (``Oban.create_pool()`` makes
    one, as in Oban.py); ``crontab`` adds cron entries to those declared with
    ``@worker(cron=...)``. Oban.py's keywords are accepted too: ``leadership``, ``lifeline``,
    ``metrics``, ``notifier``, ``pruner``, ``refresher``, ``scheduler``,
    ``shutdown_grace_period``, ``stager`` and ``queues={"media": {"limit": 5, "paused": True}}``
    (see :class:`~oban_pro.config.Config`); ``None`` for any of them means its default.
    """

    def __init__(
        self,
        *,
        config: Config | None = None,
        pool: AsyncConnectionPool | None = None,
        crontab: Sequence[CronEntry] = (),
        dispatcher: Any = None,
        **fields: Any,
    ) -> None:
        fields = {k: v for k, v in fields.items() if v is not None or k in _NONE_MEANS_SOMETHING}
        if config is not None and fields:
            raise ValidationError("config", "pass either config= or keyword fields, not both")
        if dispatcher is not None:
            log.warning(
                "oban_pro: Oban(dispatcher=%r) is accepted but does not apply: oban_pro always "
                "runs jobs on its own pool of worker processes (see processes=)",
                dispatcher,
            )
        self.config = config or Config(**fields)
        if self.config.leadership and not self.config.queues:
            log.warning(
                "oban_pro: leadership=True on an instance without queues does not apply: only "
                "nodes that run queues take part in leadership and run cron, staging and pruning"
            )
        self.name = self.config.name
        self.node = self.config.node
        self.queries = Queries(self.config.prefix)
        self._pool = pool
        self._owns_pool = pool is None
        # The statements of this instance and of its node's coordinator, on that pool.
        self._store: Store | None = None
        self._crontab = list(crontab)
        self._started = False
        self.producers: dict[str, Producer] = {}
        self.metrics: Any = None
        self._metrics_subscriber: Any = None
        self.metrics_port: int | None = None
        self._runtime: Runtime | None = None
        self._queue_tasks: set[asyncio.Task[Any]] = set()
        self._starting: set[str] = set()
        self._stopping: set[Any] = set()
        _instances[self.name] = self

    # -- instances ------------------------------------------------------------------------

    @staticmethod
    async def create_pool(
        dsn: str | None = None,
        *,
        min_size: int | None = None,
        max_size: int | None = None,
        timeout: float | None = None,
    ) -> AsyncConnectionPool:
        """An open connection pool for ``Oban(pool=...)`` (Oban.py's ``create_pool``).

        Settings come from ``oban.toml`` < environment (``OBAN_DSN``, ``OBAN_POOL_MIN_SIZE``,
        ``OBAN_POOL_MAX_SIZE``, ``OBAN_POOL_TIMEOUT``, ``OBAN_POOL_MAX_LIFETIME``,
        ``OBAN_POOL_MAX_IDLE``, ``OBAN_POOL_CHECK``) < these arguments. With no DSN anywhere
        the embedded PostgreSQL is started (as the CLI does). The caller closes the pool.
        """
        config = load_config(
            {"dsn": dsn, "pool_min_size": min_size, "pool_size": max_size, "pool_timeout": timeout}
        )
        pool = make_pool(config, config.dsn or resolve_dsn(None))
        await pool.open(wait=True, timeout=config.pool_timeout)
        return pool

    @classmethod
    def get_instance(cls, name: str = "Oban") -> Oban:
        """The instance called ``name`` (what ``Worker.enqueue`` uses).

        Inside a job (in a worker process) this is the node's instance as job code sees it:
        :class:`~oban_pro.pool.child_instance.ChildOban`, with Oban's coroutine methods for
        enqueueing and job and queue operations, or in a sync job (no event loop running)
        :class:`~oban_pro.pool.child_instance.BlockingChildOban`, the same methods blocking.
        Both are typed as ``Oban`` here, whose job and queue methods they share.
        """
        found = _instances.get(name)
        if found is not None:
            return found
        from .pool import child_instance

        in_child = child_instance.lookup(name)
        if in_child is not None:
            return cast(Oban, in_child)
        served = child_instance.installed()
        if served is not None:
            raise NotRunningError(
                f"no Oban instance named {name!r}: this worker process runs jobs for the "
                f"instance {served.name!r}; call Oban.get_instance({served.name!r})"
            )
        raise NotRunningError(
            f"no Oban instance named {name!r}; create Oban(name={name!r}, ...) first"
        )

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
            self._pool = make_pool(self.config, dsn, name=f"oban-{self.name}")
        if self._owns_pool and self._pool.closed:
            # One direct connection first: a wrong DSN fails at once with libpq's own message
            # instead of a pool timeout 30 s later.
            probe = await psycopg.AsyncConnection.connect(self.config.dsn or "", connect_timeout=10)
            await probe.close()
            await self._pool.open(wait=True, timeout=self.config.pool_timeout)
        return self._pool

    async def start(self) -> Oban:
        """Start the node: children first, then notifier, acker, producers and loops."""
        if self._started:
            return self
        pool = await self.open_pool()
        if self.config.queues:
            try:
                await self._require_schema()
            except SchemaNotReadyError:
                await self.stop()  # closes the pool it opened; nothing else was started
                raise
        for module in self.config.imports:
            importlib.import_module(module)
        import_cron_modules(self.config.cron_modules, self.config.cron_paths)
        if self.config.metrics_port is not None:
            self._start_metrics()
        if self.config.queues:
            self._runtime = Runtime(
                config=self.config,
                store=await self._ensure_store(),
                pool=pool,
                metrics=self.metrics,
                crontab=self._crontab,
                on_signal=self._on_signal,
            )
            await self._runtime.start()
            self.producers = self._runtime.producers
        self._started = True
        return self

    async def _require_schema(self) -> None:
        missing = await (await self._ensure_store()).missing_tables()
        if missing:
            raise SchemaNotReadyError(self.config.prefix, missing)

    def _start_metrics(self) -> None:
        from .metrics import Metrics
        from .telemetry.prometheus import PrometheusSubscriber

        self.metrics = Metrics(self.node)
        # The engine emits telemetry events; the metrics are their subscriber.
        self._metrics_subscriber = PrometheusSubscriber(self.metrics, self.name)
        self._metrics_subscriber.attach()
        self.metrics_port = self.metrics.serve(self.config.metrics_host, self.config.metrics_port)

    async def stop(self) -> None:
        """Graceful stop (see :meth:`Runtime.stop`), then close metrics and the pool."""
        if self._started:
            self._started = False
            for task in list(self._queue_tasks):
                task.cancel()
            await asyncio.gather(*self._queue_tasks, return_exceptions=True)
            if self._runtime is not None:
                await self._runtime.stop()
            if self.metrics is not None:
                self._metrics_subscriber.detach()
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
        if payload.get("action") in ("start", "stop"):
            self._queue_signal(payload)
        else:
            apply_signal(self, payload)

    def seconds_since_db_error(self) -> float:
        """How long this node has talked to the database without an error."""
        return self._runtime.seconds_since_db_error() if self._runtime else float("inf")

    # -- enqueueing -----------------------------------------------------------------------

    async def _insert_jobs(self, jobs: list[Job], conn: Any = None) -> list[Job]:
        own = await unwrap_async_conn(conn) if conn is not None else None
        return await (await self._ensure_store()).insert_jobs(jobs, conn=own)

    async def enqueue(self, job: Job, *, conn: Any = None) -> Job:
        """Insert one job (inside ``conn``'s transaction when given); returns it with its id.

        ``conn`` may be a psycopg ``AsyncConnection`` (or cursor), or a SQLAlchemy
        ``AsyncSession`` / ``AsyncConnection`` on the psycopg driver, as in Oban.py. A unique job
        that matches an existing one returns that job with ``conflict = True``. Inside
        ``oban_pro.testing.mode("inline")`` the job runs at once, here, and is returned with
        the state it ended in; nothing is written.
        """
        if current_mode() == "inline":
            return (await self._run_inline([job]))[0]
        return (await self._insert_jobs([job], conn))[0]

    async def enqueue_many(
        self, jobs_or_first: Iterable[Job] | Job | Workflow, /, *rest: Job, conn: Any = None
    ) -> list[Job]:
        """Insert many jobs in one round trip per batch; ids are set in the given order.

        Takes an iterable of jobs, or the jobs themselves: ``enqueue_many(job1, job2)``.
        A :class:`~oban_pro.workflow.Workflow` is inserted whole, in one statement.
        """
        if current_mode() == "inline" and not isinstance(jobs_or_first, Workflow):
            # A workflow is inserted in the inline testing mode too: its steps run in the order
            # of their dependencies, which only the database path keeps.
            return await self._run_inline(jobs_list(jobs_or_first, rest))
        return await self._insert(jobs_or_first, rest, conn)

    async def _run_inline(self, jobs: list[Job]) -> list[Job]:
        """``oban_pro.testing.mode("inline")``: run the jobs here and now, no database."""
        from .testing.process import run_inline

        return await run_inline(jobs, self.config.imports)

    # -- workflows ------------------------------------------------------------------------

    async def workflow_status(self, workflow_id: str) -> WorkflowStatus:
        """Counts per state, current state and times of a workflow (sub-workflows included);
        :class:`~oban_pro.errors.WorkflowError` if no job carries that id."""
        return await self._run(workflow_ops.status_steps(self.queries, workflow_id))

    async def workflow_jobs(self, workflow_id: str) -> list[Job]:
        """Every job of a workflow and its sub-workflows, by id."""
        return await self._run(workflow_ops.list_steps(self.queries, workflow_id))

    async def cancel_workflow(self, workflow_id: str) -> list[int]:
        """Cancel every unfinished job of a workflow (running ones are stopped, as
        :meth:`cancel_job` does); steps of other workflows waiting for it are cancelled or
        released by their ``ignore_cancelled``. Returns the ids cancelled."""
        return await self._run(workflow_ops.cancel_steps(self.queries, workflow_id))

    async def retry_workflow(self, workflow_id: str) -> list[int]:
        """Retry a workflow's cancelled and discarded jobs: each runs again once the jobs it
        waits for have completed. Returns the ids retried."""
        return await self._run(workflow_ops.retry_steps(self.queries, workflow_id))

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """A connection from this instance's pool (Oban.py's ``oban._connection()``), e.g. to
        enqueue inside your own transaction: ``async with oban._connection() as conn``."""
        pool = await self._ensure_pool()
        async with pool.connection() as conn:
            yield conn

    async def _ensure_pool(self) -> AsyncConnectionPool:
        if self._pool is None or (self._owns_pool and self._pool.closed):
            return await self.open_pool()
        return self._pool

    async def _ensure_store(self) -> Store:
        pool = await self._ensure_pool()
        if self._store is None:
            self._store = Store(pool, self.queries)
        return self._store

    async def _run(self, steps: Any) -> Any:
        pool = await self._ensure_pool()
        async with pool.connection() as conn:
            return await run_async(conn, steps)

    # job operations (get, list, update, retry, cancel, delete): AsyncJobOperations

    # -- queue operations (local at once, and across nodes through signals) ---------------

    async def _signal(self, payload: dict[str, Any], node: str | None) -> None:
        payload = {**payload, "ident": f"{self.name}.{node}" if node else "any"}
        self._on_signal(dict(payload))
        if node is not None and node == self.node and self._runtime is not None:
            return  # for this node only: done here (as Oban.py does)
        await self._run_notify("signal", payload)

    async def _run_notify(self, event: str, payload: dict[str, Any]) -> None:
        await (await self._ensure_store()).notify_event(event, payload)

    async def start_queue(
        self,
        *,
        queue: str,
        limit: int,
        paused: bool = False,
        node: str | None = None,
        global_limit: Any = None,
        rate_limit: Any = None,
    ) -> None:
        """Start running ``queue`` on every node (or only on ``node``), as Oban.py does, with
        optional limits across nodes (as in a queue table: see :mod:`oban_pro.limits`).

        A node already running the queue ignores it. An instance without queues (a client)
        starts no queue itself: the signal goes to the nodes.
        """
        payload, limits = start_payload(queue, limit, paused, global_limit, rate_limit)
        if node is None or node == self.node:
            await self._start_queue_local(queue, limit, paused, limits)
        if node != self.node or self._runtime is None:
            payload["ident"] = f"{self.name}.{node}" if node else "any"
            await self._run_notify("signal", payload)

    async def stop_queue(self, queue: str, *, node: str | None = None) -> None:
        """Stop running ``queue`` on every node (or only on ``node``).

        The queue stops fetching at once; its running jobs get up to ``shutdown_timeout``
        seconds here and keep their producer (and its heartbeat) until they finish.
        """
        validate_name("queue", queue)
        if node is None or node == self.node:
            await self._stop_queue_local(queue)
        if node != self.node or self._runtime is None:
            ident = f"{self.name}.{node}" if node else "any"
            await self._run_notify("signal", {"action": "stop", "queue": queue, "ident": ident})

    def _queue_signal(self, payload: dict[str, Any]) -> None:
        """A start/stop signal from another instance (or echoed from this one)."""
        if payload.get("ident", "any") not in ("any", self.ident):
            return
        queue, limit = payload.get("queue"), payload.get("limit", 10)
        paused = payload.get("paused", False)
        limits = None
        try:
            queue = validate_name("queue", queue)
            if payload["action"] == "start":
                if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                    raise ValidationError("limit", f"must be an integer >= 1, got {limit!r}")
                limits = QueueLimits.parse(
                    {k: payload[k] for k in LIMIT_OPTIONS if payload.get(k) is not None}, queue
                )
        except ValidationError as exc:
            log.warning("ignored %s signal: %s (%r)", payload.get("action"), exc, payload)
            return
        if payload["action"] == "start":
            coro = self._start_queue_local(queue, limit, paused is True, limits)
        else:
            coro = self._stop_queue_local(queue)
        task = asyncio.get_running_loop().create_task(coro)
        self._queue_tasks.add(task)
        task.add_done_callback(self._queue_task_done)

    def _queue_task_done(self, task: asyncio.Task[Any]) -> None:
        self._queue_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("queue signal failed: %s", task.exception(), exc_info=task.exception())

    async def _start_queue_local(
        self, queue: str, limit: int, paused: bool, limits: QueueLimits | None = None
    ) -> None:
        runtime = self._runtime
        if runtime is None or queue in runtime.producers or queue in self._starting:
            return
        self._starting.add(queue)
        try:
            producer = runtime._make_producer(queue, limit, limits)
            producer.paused = paused
            await producer.register()
            runtime.producers[queue] = producer
            producer.start()
            log.info("started queue %s (limit %d%s)", queue, limit, ", paused" if paused else "")
        finally:
            self._starting.discard(queue)

    async def _stop_queue_local(self, queue: str) -> None:
        runtime = self._runtime
        producer = runtime.producers.get(queue) if runtime is not None else None
        if producer is None or producer in self._stopping:
            return
        self._stopping.add(producer)
        producer.pause()
        await producer.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.shutdown_timeout
        while producer.running and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if producer.running:
            # Jobs still running keep the producer (and its heartbeat) until they end, so that
            # no node takes them for orphans; check_queue shows the queue paused meanwhile.
            task = loop.create_task(self._retire(queue, producer))
            self._queue_tasks.add(task)
            task.add_done_callback(self._queue_task_done)
            return
        await self._retire(queue, producer)

    async def _retire(self, queue: str, producer: Any) -> None:
        uuid = producer.uuid
        try:
            while producer.running:
                await asyncio.sleep(0.1)
            runtime = self._runtime
            if runtime is not None and runtime.producers.get(queue) is producer:
                del runtime.producers[queue]
                await runtime.store.delete_producers([uuid])
                log.info("stopped queue %s", queue)
        finally:
            self._stopping.discard(producer)

    def check_queue(self, queue: str) -> QueueInfo | None:
        """This node's view of ``queue`` (a :class:`QueueInfo`); None if not run here."""
        producer = self.producers.get(queue)
        if producer is None:
            return None
        return QueueInfo(
            limit=producer.limit,
            meta=producer.meta(),
            node=self.node,
            paused=producer.paused,
            queue=queue,
            running=sorted(producer.running),
            started_at=datetime.fromtimestamp(producer.started_at, UTC),
            uuid=producer.uuid,
        )

    def check_all_queues(self) -> list[QueueInfo]:
        """:meth:`check_queue` for every queue this node runs."""
        return [info for q in list(self.producers) if (info := self.check_queue(q)) is not None]

    # -- used by signals ------------------------------------------------------------------

    def kill_job(self, job_id: int) -> bool:
        """Stop the child running ``job_id`` on this node (pkill); False if not running here."""
        return bool(self._runtime and self._runtime.kill_job(job_id))


def make_pool(config: Config, dsn: str, *, name: str | None = None) -> AsyncConnectionPool:
    """A closed pool built from the ``pool_*`` settings (autocommit connections)."""
    return AsyncConnectionPool(
        dsn,
        min_size=config.pool_min_size,
        max_size=config.pool_size,
        timeout=config.pool_timeout,
        max_lifetime=config.pool_max_lifetime,
        max_idle=config.pool_max_idle,
        check=AsyncConnectionPool.check_connection if config.pool_check else None,
        open=False,
        kwargs={"autocommit": True},
        name=name,
    )


def import_cron_modules(modules: Sequence[str], paths: Sequence[str]) -> list[str]:
    """Import ``modules`` and the modules found under ``paths`` that declare cron workers
    (Oban.py's ``--cron-modules`` / ``--cron-paths``); returns the modules imported.

    A named module that fails to import raises; a discovered one is logged and skipped, as in
    Oban.py.
    """
    from .discovery import find_cron_modules
    from .errors import ConfigError

    if (modules or paths) and os.getcwd() not in sys.path:
        # Module names are relative to the current directory, which a console script (unlike
        # ``python -m``) does not put on sys.path; appended, so it never shadows a package.
        sys.path.append(os.getcwd())
    imported = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError("cron_modules", module, f"an importable module ({exc})") from exc
        imported.append(module)
    for module in find_cron_modules(paths) if paths else []:
        if module in imported:
            continue
        try:
            importlib.import_module(module)
        except Exception:
            log.exception("failed to import cron module %s (skipped)", module)
            continue
        imported.append(module)
    if modules or paths:
        log.info("imported %d cron modules: %s", len(imported), ", ".join(imported) or "none")
    return imported
