"""Helpers for testing applications that use oban_pro (with the pytest plugin's fixtures).

- :func:`perform_job` runs one job in this process, exactly as a child would, and returns the
  classified outcome (no database needed).
- :func:`drain_queue` runs every available job of a queue in this process through the real
  fetch and ack path, and returns counts by outcome.
- :func:`assert_enqueued`, :func:`refute_enqueued`, :func:`all_enqueued` look at job rows.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from .coordinator.acker import Acker
from .coordinator.dispatcher import Dispatcher
from .coordinator.outcomes import JobOutcomes
from .coordinator.producer import Producer
from .job import Job
from .pool.ledger import Ledger, PoolJob
from .pool.messages import Done, Run
from .queries import Queries
from .runner import JobRunner

__all__ = ["all_enqueued", "assert_enqueued", "drain_queue", "perform_job", "refute_enqueued"]


def perform_job(
    worker: type | str,
    args: Mapping[str, Any] | None = None,
    *,
    attempt: int = 1,
    max_attempts: int = 20,
    meta: Mapping[str, Any] | None = None,
    imports: list[str] | None = None,
) -> Done:
    """Run one job in-process with the runner every child uses; returns the ``Done`` outcome.

    ``done.kind`` is completed, error, cancel, snooze or record; ``done.error`` holds the
    traceback of a failure.
    """
    name = worker if isinstance(worker, str) else worker._worker_name  # type: ignore[attr-defined]
    run = Run(
        job_id=0,
        worker=name,
        args=json.dumps(dict(args or {})),
        meta=json.dumps(dict(meta or {})),
        attempt=attempt,
        max_attempts=max_attempts,
    )
    return JobRunner(list(imports or [])).run(run)


class _Outcomes:
    """Stands in for the metrics object to count outcomes by state."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def job_finished(
        self, queue: str, worker: str, state: str, duration: float, wait: float
    ) -> None:
        self.counts[state] += 1


class _InlinePool:
    """Runs dispatched jobs one at a time in a thread of this process (for draining)."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        on_done: Callable[[Run, Done], None],
        imports: list[str],
        **_unused: Any,
    ) -> None:
        self._ledger = ledger
        self._on_done = on_done
        self._runner = JobRunner(imports)
        self._tasks: set[asyncio.Task[None]] = set()

    def submit_many(self, runs: list[Run], *, isolated: Collection[int] = ()) -> None:
        for run in runs:
            self._ledger.add(PoolJob(run, False, time.monotonic()))
        task = asyncio.get_running_loop().create_task(self._run(runs))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stop_job(self, job_id: int, reason: str = "cancelled") -> bool:
        return False  # jobs run inline, one at a time, to their end

    async def _run(self, runs: list[Run]) -> None:
        loop = asyncio.get_running_loop()
        for run in runs:
            done = await loop.run_in_executor(None, self._runner.run, run)
            self._ledger.remove(run.job_id)
            self._on_done(run, done)


async def drain_queue(
    dsn: str,
    queue: str,
    *,
    prefix: str = "public",
    imports: list[str] | None = None,
    max_crashes: int = 3,
) -> Counter[str]:
    """Run every available job of ``queue`` in this process; returns counts by outcome
    (completed, retryable, discarded, cancelled, snoozed). Scheduled jobs are not staged."""
    queries = Queries(prefix)
    async with AsyncConnectionPool(
        dsn, min_size=1, max_size=2, open=False, kwargs={"autocommit": True}
    ) as pool:
        outcomes = _Outcomes()
        acker = Acker(
            pool,
            queries.ack_jobs,
            max_crashes=max_crashes,
            interval=0,
            on_written=JobOutcomes(outcomes).written,  # type: ignore[arg-type]
        )
        dispatcher = Dispatcher(acker, functools.partial(_InlinePool, imports=list(imports or [])))
        producer = Producer(
            queue=queue,
            limit=100,
            name="drain",
            node="drain",
            db=pool,
            queries=queries,
            dispatcher=dispatcher,
            poll_interval=1,
        )
        dispatcher.register(producer)
        acker.start()
        try:
            while await producer._fetch(100):
                while len(dispatcher.ledger):
                    await asyncio.sleep(0.001)
        finally:
            await acker.stop()
        return outcomes.counts


def all_enqueued(
    dsn: str,
    *,
    prefix: str = "public",
    worker: type | str | None = None,
    queue: str | None = None,
    args: Mapping[str, Any] | None = None,
) -> list[Job]:
    """Jobs waiting to run (available or scheduled) that match every given field
    (``args`` matches when the job's args contain those keys and values)."""
    from .operations import COLUMNS

    name = worker if worker is None or isinstance(worker, str) else worker._worker_name  # type: ignore[attr-defined]
    queries = Queries(prefix)
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            queries.enqueued_jobs,
            {
                "worker": name,
                "queue": queue,
                "args": json.dumps(dict(args)) if args is not None else None,
            },
        ).fetchall()
    return [Job.from_row(dict(zip(COLUMNS, row, strict=True))) for row in rows]


def assert_enqueued(dsn: str, **match: Any) -> list[Job]:
    """Fail unless a waiting job matches ``match`` (see :func:`all_enqueued`)."""
    found = all_enqueued(dsn, **match)
    if not found:
        prefix = match.get("prefix", "public")
        waiting = all_enqueued(dsn, prefix=prefix)
        raise AssertionError(
            f"expected a job matching {match!r} to be enqueued; waiting jobs: "
            f"{[(j.worker, j.queue, j.args) for j in waiting][:20]}"
        )
    return found


def refute_enqueued(dsn: str, **match: Any) -> None:
    """Fail if a waiting job matches ``match``."""
    found = all_enqueued(dsn, **match)
    if found:
        raise AssertionError(f"expected no job matching {match!r}; found {found[:5]!r}")
