"""The job operations every async face of an instance has: the node's :class:`~oban_pro.Oban`
and, inside a worker process, :class:`~oban_pro.pool.child_instance.ChildOban`.

One implementation for both: a class using it provides ``queries`` and ``_run(steps)`` (runs
the statement steps of :mod:`oban_pro.operations` on a connection of its own pool).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .enqueue import run_async, unwrap_async_conn
from .job import Job
from .operations import (
    Changes,
    cancel_steps,
    delete_steps,
    follow_updates,
    get_job_steps,
    job_id_of,
    list_jobs_steps,
    retry_steps,
    update_steps,
)
from .queries import Queries
from .workflow import Workflow
from .workflow_ops import enqueue_many_steps


class AsyncJobOperations:
    queries: Queries

    async def _run(self, steps: Any) -> Any:  # pragma: no cover - provided by the class
        raise NotImplementedError

    async def _insert(self, jobs_or_first: Any, rest: tuple[Job, ...], conn: Any) -> list[Job]:
        steps = enqueue_many_steps(self.queries, jobs_or_first, rest)
        if conn is not None:
            return await run_async(await unwrap_async_conn(conn), steps)
        return await self._run(steps)

    async def enqueue(self, job: Job, *, conn: Any = None) -> Job:
        """Insert one job (inside ``conn``'s transaction when given); returns it with its id."""
        return (await self.enqueue_many([job], conn=conn))[0]

    async def enqueue_many(
        self, jobs_or_first: Iterable[Job] | Job | Workflow, /, *rest: Job, conn: Any = None
    ) -> list[Job]:
        """Insert many jobs in one round trip per batch; ids are set in the given order.

        Takes an iterable of jobs, or the jobs themselves: ``enqueue_many(job1, job2)``.
        A :class:`~oban_pro.workflow.Workflow` is inserted whole, in one statement.
        """
        return await self._insert(jobs_or_first, rest, conn)

    async def get_job(self, job_id: int) -> Job | None:
        found = await self._run(get_job_steps(self.queries, job_id))
        return found[0] if found else None

    async def list_jobs(
        self, *, state: str | None = None, queue: str | None = None, limit: int = 100
    ) -> list[Job]:
        return await self._run(list_jobs_steps(self.queries, state=state, queue=queue, limit=limit))

    async def update_job(self, job: Job | int, changes: Changes) -> Job:
        """Change a job's ``args``, ``max_attempts``, ``meta``, ``priority``, ``queue``,
        ``scheduled_at`` (or ``scheduled_in``), ``tags`` or ``worker``; returns the job as now
        stored. ``changes`` is a dict or a callable given the job (as Oban.py's update_job).
        Raises :class:`~oban_pro.errors.JobNotFoundError` for a missing job and
        :class:`~oban_pro.errors.ValidationError` for a bad change; nothing is written then.
        """
        return (await self.update_many_jobs([job], changes))[0]

    async def update_many_jobs(self, jobs: Iterable[Job | int], changes: Changes) -> list[Job]:
        """:meth:`update_job` for many jobs, in one transaction with the rows locked."""
        jobs = list(jobs)
        fresh = await self._run(update_steps(self.queries, jobs, changes))
        follow_updates(jobs, fresh)  # the caller's objects follow too
        return fresh

    async def retry_job(self, job: Job | int) -> None:
        await self.retry_many_jobs([job_id_of(job)])

    async def retry_many_jobs(self, jobs: Iterable[Job | int]) -> int:
        return len(await self._run(retry_steps(self.queries, jobs)))

    async def cancel_job(self, job: Job | int) -> None:
        """Cancel a job; an executing one is also stopped by the node running it (pkill)."""
        await self.cancel_many_jobs([job_id_of(job)])

    async def cancel_many_jobs(self, jobs: Iterable[Job | int]) -> int:
        """Cancel jobs in any non-final state; executing ones are also stopped (pkill)."""
        return len(await self._run(cancel_steps(self.queries, jobs)))

    async def delete_job(self, job: Job | int) -> None:
        await self.delete_many_jobs([job_id_of(job)])

    async def delete_many_jobs(self, jobs: Iterable[Job | int]) -> int:
        """Delete jobs in any state but ``executing``."""
        return len(await self._run(delete_steps(self.queries, jobs)))
