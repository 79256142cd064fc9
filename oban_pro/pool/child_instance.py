"""``Oban.get_instance()`` in a job: the node's instance as job code in a worker process sees it.

Jobs run in child processes that share no memory with the node's coordinator. What job code
written for Oban.py does with the instance — enqueue follow-up jobs; get, update, retry, cancel
or delete jobs; pause, resume, scale, start or stop queues — needs only the database (queue
operations are signals: NOTIFYs that every coordinator, this node's too, listens to). So the
child is given the node's database and instance at start (:class:`~.messages.InstanceInfo`) and
keeps its own small connection pool, opened at the first call and closed when the child exits:
a job never opens connections itself. What needs the coordinator's memory (``check_queue``,
``kill_job``, the node's ``start``/``stop``, ``is_leader``) raises
:class:`~oban_pro.errors.CoordinatorOnlyError` saying what to use instead.

One instance, two faces:

- :class:`ChildOban`: Oban's coroutine methods, for async workers
  (``await Oban.get_instance().enqueue(job)``, as Oban.py documents);
- :class:`BlockingChildOban`: the same methods, blocking, for sync workers on the child's
  threads (``Oban.get_instance().enqueue(job)``). Oban.py has no sync workers, so it documents
  no such API; :func:`lookup` gives this face wherever no event loop is running.

Both do their database work on the child's own event loop, where the pool lives (psycopg's async
connections belong to one loop); calls from a thread or another loop are handed to it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator, Coroutine, Iterable
from contextlib import asynccontextmanager
from typing import Any, NoReturn, TypeVar

from psycopg_pool import AsyncConnectionPool

from ..enqueue import (
    Steps,
    run_async,
    run_sync,
    unwrap_sync_conn,
)
from ..errors import BlockingCallOnLoopError, CoordinatorOnlyError
from ..job import Job
from ..job_operations import AsyncJobOperations
from ..naming import channel, validate_name
from ..operations import (
    Changes,
)
from ..payloads import encode_payload
from ..queries import Queries
from ..queue_signals import QueueSignals, start_payload
from ..workflow_ops import enqueue_many_steps
from .messages import InstanceInfo

__all__ = ["ChildOban", "BlockingChildOban", "install", "installed", "lookup"]

T = TypeVar("T")

#: Seconds between checks of a blocking call's result: a sync job interrupted meanwhile (its
#: timeout, a cancel) gets the exception at the next check instead of when the call returns.
_WAKE_EVERY = 0.05

_installed: ChildOban | None = None


def install(instance: ChildOban | None) -> None:
    """Make ``instance`` what ``Oban.get_instance(instance.name)`` returns in this process."""
    global _installed
    _installed = instance


def installed() -> ChildOban | None:
    """The instance this worker process serves, if any."""
    return _installed


def lookup(name: str) -> ChildOban | BlockingChildOban | None:
    """The instance called ``name`` for the calling code: the coroutine face on an event loop,
    the blocking one elsewhere (a sync job's thread). None if this process serves no such
    instance."""
    instance = _installed
    if instance is None or instance.name != name:
        return None
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return instance.blocking
    return instance


def _coordinator_only(operation: str, reason: str, instead: str) -> NoReturn:
    raise CoordinatorOnlyError(operation, reason, instead)


class _CoordinatorOnly:
    """The operations that need the coordinator's memory, refused with what to do instead."""

    def check_queue(self, queue: str) -> NoReturn:
        _coordinator_only(
            "check_queue()",
            "a queue's limit, paused flag and running jobs live in the node's coordinator",
            "Read the queue's producers from the oban_producers table (their meta has "
            "local_limit, paused and running), or call check_queue() in the node's process.",
        )

    def check_all_queues(self) -> NoReturn:
        _coordinator_only(
            "check_all_queues()",
            "the queues' state lives in the node's coordinator",
            "Read the oban_producers table, or call it in the node's process.",
        )

    def kill_job(self, job_id: int) -> NoReturn:
        _coordinator_only(
            "kill_job()",
            "stopping a running job is done by the coordinator that runs it",
            "Use cancel_job(job): it cancels the row and signals whichever node runs the job "
            "to stop it.",
        )

    async def start(self) -> NoReturn:
        _coordinator_only(
            "start()",
            "the node is started and stopped by the process that created it",
            "Job code uses the running node's instance as it is.",
        )

    async def stop(self) -> NoReturn:
        _coordinator_only(
            "stop()",
            "the node is started and stopped by the process that created it",
            "Stop the node from its own process (or send it SIGTERM).",
        )

    @property
    def is_leader(self) -> NoReturn:
        _coordinator_only(
            "is_leader",
            "leadership is held by the node's coordinator",
            "Read the oban_leaders table, or ask in the node's process.",
        )


class ChildOban(AsyncJobOperations, QueueSignals, _CoordinatorOnly):
    """The node's instance in a worker process, with Oban's coroutine methods.

    Built by the worker process from its :class:`~.messages.InstanceInfo` and its event loop;
    job code gets it from ``Oban.get_instance()``.
    """

    def __init__(self, info: InstanceInfo, loop: asyncio.AbstractEventLoop) -> None:
        self.name = info.name
        self.node = info.node
        self.prefix = info.prefix
        self.queries = Queries(info.prefix)
        self._info = info
        self._loop = loop
        self._pool: AsyncConnectionPool | None = None
        self._opening: asyncio.Lock | None = None
        #: The blocking face of this instance (what sync jobs get from ``get_instance()``).
        self.blocking = BlockingChildOban(self)

    @property
    def ident(self) -> str:
        return f"{self.name}.{self.node}"

    @property
    def conninfo(self) -> str:
        """The node's database (libpq connection string), for code that opens its own."""
        return self._info.conninfo

    def __repr__(self) -> str:
        return f"<ChildOban {self.name!r} node={self.node!r} prefix={self.prefix!r}>"

    # -- the pool -----------------------------------------------------------------------------

    async def _open_pool(self) -> AsyncConnectionPool:
        """The child's pool, opened at first use (on the child's loop)."""
        if self._pool is not None:
            return self._pool
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is None:
                info = self._info
                pool = AsyncConnectionPool(
                    info.conninfo,
                    # No connection is kept while job code does not use the instance.
                    min_size=0,
                    max_size=max(1, info.pool_max_size),
                    timeout=info.pool_timeout,
                    max_idle=60.0,
                    open=False,
                    kwargs={
                        # Names job code's sessions in pg_stat_activity unless the DSN does.
                        "fallback_application_name": application_name(info.name),
                        **info.connect_kwargs,
                        "autocommit": True,
                    },
                    name=f"oban-child-{info.name}",
                )
                await pool.open(wait=False)
                self._pool = pool
        return self._pool

    @property
    def has_pool(self) -> bool:
        """Whether job code opened the pool (there are connections to close)."""
        return self._pool is not None

    async def close(self) -> None:
        """Close the pool (the child does this when it exits)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close(timeout=1.0)

    async def _at_home(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the child's loop, where the pool's connections live."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    async def _run(self, steps: Steps) -> Any:
        return await self._at_home(self._run_here(steps))

    async def _run_here(self, steps: Steps) -> Any:
        pool = await self._open_pool()
        async with pool.connection() as conn:
            return await run_async(conn, steps)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """A connection from the child's pool (Oban.py's ``oban._connection()``), on the
        child's loop only: a psycopg async connection cannot move between loops."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not self._loop:
            raise BlockingCallOnLoopError(
                "_connection() inside a job works on the worker process' own event loop (an "
                "async worker's process()); elsewhere use the instance's methods, which hand "
                "their work to that loop"
            )
        pool = await self._open_pool()
        async with pool.connection() as conn:
            yield conn

    # enqueueing and job operations: AsyncJobOperations

    # -- queue operations: signals, which this node's coordinator receives too --------------

    async def _signal(self, payload: dict[str, Any], node: str | None) -> None:
        payload = {**payload, "ident": f"{self.name}.{node}" if node else "any"}
        await self._run(_notify_steps(self.queries, payload))

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
        """Start ``queue`` on every node (or on ``node``): this node's coordinator too."""
        payload, _limits = start_payload(queue, limit, paused, global_limit, rate_limit)
        await self._signal(payload, node)

    async def stop_queue(self, queue: str, *, node: str | None = None) -> None:
        """Stop ``queue`` on every node (or on ``node``): this node's coordinator too."""
        await self._signal({"action": "stop", "queue": validate_name("queue", queue)}, node)


class BlockingChildOban(_CoordinatorOnly):
    """The node's instance for sync job code: :class:`ChildOban`'s methods, blocking.

    Each call runs on the child's event loop and waits for it; a job interrupted meanwhile (its
    timeout, a cancel) stops waiting within :data:`_WAKE_EVERY` seconds.
    """

    def __init__(self, instance: ChildOban) -> None:
        self._instance = instance
        self.name = instance.name
        self.node = instance.node
        self.prefix = instance.prefix
        self.queries = instance.queries

    @property
    def ident(self) -> str:
        return self._instance.ident

    def __repr__(self) -> str:
        return f"<BlockingChildOban {self.name!r} node={self.node!r} prefix={self.prefix!r}>"

    def _wait(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._instance._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None:
            coro.close()
            raise BlockingCallOnLoopError(
                "a blocking Oban method was called on an event loop (it would block the loop, "
                "or wait for itself): in async code use `await Oban.get_instance().<method>(...)`"
            )
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            while not future.done():
                concurrent.futures.wait([future], timeout=_WAKE_EVERY)
        except BaseException:  # interrupted (JobInterrupted): let the call go too
            future.cancel()
            raise
        return future.result()

    # -- enqueueing -----------------------------------------------------------------------

    def enqueue(self, job: Job, *, conn: Any = None) -> Job:
        """Insert one job (``conn``: a sync psycopg connection, inside your transaction)."""
        return self.enqueue_many([job], conn=conn)[0]

    def enqueue_many(
        self, jobs_or_first: Iterable[Job] | Job, /, *rest: Job, conn: Any = None
    ) -> list[Job]:
        if conn is not None:
            steps = enqueue_many_steps(self.queries, jobs_or_first, rest)
            return run_sync(unwrap_sync_conn(conn), steps)
        return self._wait(self._instance.enqueue_many(jobs_or_first, *rest))

    # -- job operations -------------------------------------------------------------------

    def get_job(self, job_id: int) -> Job | None:
        return self._wait(self._instance.get_job(job_id))

    def list_jobs(
        self, *, state: str | None = None, queue: str | None = None, limit: int = 100
    ) -> list[Job]:
        return self._wait(self._instance.list_jobs(state=state, queue=queue, limit=limit))

    def update_job(self, job: Job | int, changes: Changes) -> Job:
        return self._wait(self._instance.update_job(job, changes))

    def update_many_jobs(self, jobs: Iterable[Job | int], changes: Changes) -> list[Job]:
        return self._wait(self._instance.update_many_jobs(jobs, changes))

    def retry_job(self, job: Job | int) -> None:
        self._wait(self._instance.retry_job(job))

    def retry_many_jobs(self, jobs: Iterable[Job | int]) -> int:
        return self._wait(self._instance.retry_many_jobs(jobs))

    def cancel_job(self, job: Job | int) -> None:
        self._wait(self._instance.cancel_job(job))

    def cancel_many_jobs(self, jobs: Iterable[Job | int]) -> int:
        return self._wait(self._instance.cancel_many_jobs(jobs))

    def delete_job(self, job: Job | int) -> None:
        self._wait(self._instance.delete_job(job))

    def delete_many_jobs(self, jobs: Iterable[Job | int]) -> int:
        return self._wait(self._instance.delete_many_jobs(jobs))

    # -- queue operations -----------------------------------------------------------------

    def pause_queue(self, queue: str, *, node: str | None = None) -> None:
        self._wait(self._instance.pause_queue(queue, node=node))

    def resume_queue(self, queue: str, *, node: str | None = None) -> None:
        self._wait(self._instance.resume_queue(queue, node=node))

    def pause_all_queues(self, *, node: str | None = None) -> None:
        self._wait(self._instance.pause_all_queues(node=node))

    def resume_all_queues(self, *, node: str | None = None) -> None:
        self._wait(self._instance.resume_all_queues(node=node))

    def scale_queue(
        self, queue: str, *, limit: int | None = None, node: str | None = None, **options: Any
    ) -> None:
        self._wait(self._instance.scale_queue(queue, limit=limit, node=node, **options))

    def start_queue(
        self,
        *,
        queue: str,
        limit: int,
        paused: bool = False,
        node: str | None = None,
        **limits: Any,
    ) -> None:
        self._wait(
            self._instance.start_queue(queue=queue, limit=limit, paused=paused, node=node, **limits)
        )

    def stop_queue(self, queue: str, *, node: str | None = None) -> None:
        self._wait(self._instance.stop_queue(queue, node=node))


def application_name(instance: str) -> str:
    """The ``application_name`` of the sessions a worker process opens for job code."""
    return f"oban_pro job code {instance}"[:63]  # PostgreSQL keeps 63 bytes of it


def _notify_steps(queries: Queries, payload: dict[str, Any]) -> Steps:
    yield (
        queries.notify,
        {"channel": channel(queries.prefix, "signal"), "payload": encode_payload(payload)},
    )
    return []
