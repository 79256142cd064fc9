"""Draining a queue in this process: :func:`drain_queue`.

Jobs go through the engine's own path — the producer's fetch statement, the dispatcher that
turns rows into jobs and outcomes into acks, the acker's fenced set-based update — except that
the pool is :class:`_InlinePool`, which runs each job on this event loop with the runner every
worker process uses. So a test sees the job's side effects, and the rows end exactly as a node
would leave them.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from psycopg_pool import AsyncConnectionPool

from ..coordinator.acker import Ack, Acker
from ..coordinator.dispatcher import Dispatcher
from ..coordinator.outcomes import JobOutcomes
from ..coordinator.producer import Producer
from ..pool.ledger import Ledger, PoolJob
from ..pool.messages import Done, Run
from ..queries import Queries
from ..runner import JobRunner
from ..store import Store
from .enqueued import find_instance

if TYPE_CHECKING:
    from ..oban import Oban

__all__ = ["FAR_FUTURE", "drain_queue"]

#: How far ahead ``with_scheduled`` looks: every scheduled or retryable job runs now.
FAR_FUTURE = timedelta(days=365 * 100)

#: The states Oban.py's drain_queue counts, all present in its result.
SUMMARY_STATES = ("cancelled", "completed", "discarded", "retryable", "scheduled")

#: Jobs fetched at once in a single pass (``with_recursion=False``): all that are available.
ALL_AVAILABLE = 2**31 - 1


async def drain_queue(
    queue: str = "default",
    oban: str | Oban = "Oban",
    with_recursion: bool = True,
    with_safety: bool | None = None,
    with_scheduled: bool | None = None,
    *,
    dsn: str | None = None,
    prefix: str | None = None,
    imports: list[str] | None = None,
    max_crashes: int = 3,
) -> dict[str, int]:
    """Run the jobs of ``queue`` here, one at a time, until none is left; returns the count of
    each state they ended in.

    Oban.py's form, ``await drain_queue(queue="mail")``, uses the instance named ``oban``
    (or the instance given) and returns ``{"cancelled", "completed", "discarded", "retryable",
    "scheduled"}`` counts (a snooze counts as scheduled):

    - ``with_recursion`` (True): keep fetching until the queue is empty, so jobs that the
      drained jobs enqueue run too; False runs the jobs available when the drain starts, once.
    - ``with_safety`` (False): False raises the first error a job raises (its failure is
      recorded first); True records errors and carries on.
    - ``with_scheduled`` (True): scheduled and retryable jobs of the queue run as if due.
      With recursion this re-runs snoozed jobs, forever if a job always snoozes.

    oban_pro's form, ``await drain_queue(dsn, "mail", prefix=...)`` (or ``dsn=``), needs no
    instance and returns a ``Counter`` of the outcomes that happened (a snooze as "snoozed");
    there ``with_safety`` defaults to True and ``with_scheduled`` to False.
    ``imports`` are modules to import first, ``max_crashes`` the poison-job guard's budget.
    """
    if dsn is None and _looks_like_dsn(queue):
        dsn, queue = queue, (oban if isinstance(oban, str) and oban != "Oban" else "default")
    if dsn is not None:
        return await _drain_dsn(
            dsn,
            queue,
            prefix=prefix or "public",
            recursive=with_recursion,
            safe=True if with_safety is None else with_safety,
            scheduled=False if with_scheduled is None else with_scheduled,
            imports=list(imports or []),
            max_crashes=max_crashes,
        )
    instance = find_instance(oban)
    drain = _Drain(
        await instance._ensure_pool(),
        instance.queries,
        queue,
        imports=[*instance.config.imports, *(imports or [])],
        max_crashes=max_crashes,
        safe=False if with_safety is None else with_safety,
    )
    await drain.run(
        recursive=with_recursion,
        scheduled=True if with_scheduled is None else with_scheduled,
        batch=1,
    )
    return drain.summary()


async def _drain_dsn(
    dsn: str,
    queue: str,
    *,
    prefix: str,
    recursive: bool,
    safe: bool,
    scheduled: bool,
    imports: list[str],
    max_crashes: int,
) -> Counter[str]:
    async with AsyncConnectionPool(
        dsn, min_size=1, max_size=2, open=False, kwargs={"autocommit": True}
    ) as pool:
        drain = _Drain(
            pool, Queries(prefix), queue, imports=imports, max_crashes=max_crashes, safe=safe
        )
        await drain.run(recursive=recursive, scheduled=scheduled, batch=100)
        return drain.outcomes()


def _looks_like_dsn(value: object) -> bool:
    """A libpq connection string (URI or key=value form), which no sane queue is named."""
    return isinstance(value, str) and (
        value.startswith(("postgres://", "postgresql://")) or "=" in value
    )


class _Drain:
    """One drain of one queue: a producer with an in-process pool, and an acker."""

    def __init__(
        self,
        db: Any,
        queries: Queries,
        queue: str,
        *,
        imports: list[str],
        max_crashes: int,
        safe: bool,
    ) -> None:
        self._queue = queue
        self._written: list[tuple[str, str]] = []  # (ack kind, state the database decided)
        self._log = JobOutcomes(None)
        store = self._store = Store(db, queries)
        self._acker = Acker(store, max_crashes=max_crashes, interval=0, on_written=self._on_written)
        make_pool = functools.partial(_InlinePool, runner=JobRunner(imports), safe=safe)
        self._dispatcher = Dispatcher(self._acker, make_pool)
        self._pool: _InlinePool = self._dispatcher.pool
        self._producer = Producer(
            queue=queue,
            limit=ALL_AVAILABLE,
            name="drain",
            node="drain",
            store=store,
            dispatcher=self._dispatcher,
            poll_interval=1,
        )
        self._dispatcher.register(self._producer)

    async def run(self, *, recursive: bool, scheduled: bool, batch: int) -> None:
        """Fetch and run until the queue is empty (once, without ``recursive``); raises the
        error of a job when the pool is not ``safe``, after its outcome is written."""
        self._acker.start()
        try:
            while True:
                if scheduled:
                    await self._stage()
                fetched = await self._producer._fetch(batch if recursive else ALL_AVAILABLE)
                await self._pool.idle()
                # Outcomes written before the next round stages and fetches (as Oban.py acks
                # each job before the next): a retried job is then due again at once, so with
                # ``scheduled`` a failing job runs until it is discarded, whatever the timing.
                await self._acker.flush()
                if self._pool.raised is not None:
                    self._dispatcher.release(self._pool.left)
                    break
                if not fetched or not recursive:
                    break
        finally:
            await self._acker.stop()
        if self._pool.raised is not None:
            raise self._pool.raised

    async def _stage(self) -> None:
        due = datetime.now(UTC).replace(tzinfo=None) + FAR_FUTURE  # the columns are naive UTC
        await self._store.stage_queue(queue=self._queue, now=due)

    def _on_written(self, acks: list[tuple[Ack, str]]) -> None:
        self._log.written(acks)  # failures are logged as a node logs them
        self._written += [(ack.kind, state) for ack, state in acks if ack.kind != "release"]

    def summary(self) -> dict[str, int]:
        """Oban.py's result: every state it counts, zeros included."""
        counts = Counter(state for _, state in self._written)
        return {state: counts[state] for state in SUMMARY_STATES}

    def outcomes(self) -> Counter[str]:
        """oban_pro's result: the outcomes that happened, a snooze as "snoozed"."""
        return Counter("snoozed" if kind == "snooze" else state for kind, state in self._written)


class _InlinePool:
    """The dispatcher's pool for a drain: runs the jobs it is given one after another on this
    event loop. When not ``safe``, the first job that raises stops it: that error is kept in
    :attr:`raised` and the jobs not run yet in :attr:`left` (the drain gives them back)."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        on_done: Callable[[Run, Done], None],
        runner: JobRunner,
        safe: bool,
        **_unused: Any,
    ) -> None:
        self._ledger = ledger
        self._on_done = on_done
        self._runner = runner
        self._safe = safe
        self._batches: list[Any] = []
        self.raised: BaseException | None = None
        self.left: list[Run] = []

    def submit_many(self, runs: list[Run], *, isolated: Collection[int] = ()) -> None:
        for run in runs:
            self._ledger.add(PoolJob(run, False, time.monotonic()))
        self._batches.append(runs)

    def stop_job(self, job_id: int, reason: str = "cancelled") -> bool:
        return False  # jobs run here one at a time, to their end

    async def idle(self) -> None:
        """Run every job submitted so far."""
        while self._batches:
            for run in self._batches.pop(0):
                await self._run(run)

    async def _run(self, run: Run) -> None:
        if self.raised is not None:
            self._ledger.remove(run.job_id)
            self.left.append(run)
            return
        executed = await self._runner.run_here(run)
        self._ledger.remove(run.job_id)
        self._on_done(run, executed.done)
        if executed.error is not None and not self._safe:
            self.raised = executed.error
