"""A synchronous client for code without an event loop: enqueue and manage jobs.

``Client(dsn)`` opens one connection lazily; every method also takes ``conn=`` to run inside the
caller's own psycopg transaction (rolled back with it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg

from . import workflow_ops
from .database import resolve_dsn
from .enqueue import insert_steps, run_sync, unwrap_sync_conn
from .job import Job
from .operations import (
    Changes,
    cancel_steps,
    delete_steps,
    get_job_steps,
    list_jobs_steps,
    retry_steps,
    update_steps,
)
from .queries import Queries
from .workflow import Workflow
from .workflow_ops import WorkflowStatus, enqueue_many_steps


class Client:
    def __init__(self, dsn: str | None = None, *, prefix: str = "public") -> None:
        self.queries = Queries(prefix)
        self._dsn = dsn
        self._conn: psycopg.Connection[Any] | None = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self, conn: Any) -> Any:
        if conn is not None:
            return unwrap_sync_conn(conn)
        if self._conn is None or self._conn.closed:
            self._dsn = self._dsn or resolve_dsn(None)
            self._conn = psycopg.connect(self._dsn, autocommit=True)
        return self._conn

    def _run(self, steps: Any, conn: Any = None) -> Any:
        return run_sync(self._connection(conn), steps)

    def enqueue(self, job: Job, *, conn: Any = None) -> Job:
        """Insert one job; see :meth:`oban_pro.Oban.enqueue`."""
        return self._run(insert_steps(self.queries, [job]), conn)[0]

    def enqueue_many(
        self, jobs_or_first: Iterable[Job] | Job | Workflow, /, *rest: Job, conn: Any = None
    ) -> list[Job]:
        """Insert many jobs in one round trip; ids are set in the given order. Takes an
        iterable of jobs or the jobs themselves (``enqueue_many(job1, job2)``), or one
        :class:`~oban_pro.workflow.Workflow`."""
        return self._run(enqueue_many_steps(self.queries, jobs_or_first, rest), conn)

    # -- workflows (see the methods of the same names on oban_pro.Oban) ---------------------

    def workflow_status(self, workflow_id: str, *, conn: Any = None) -> WorkflowStatus:
        return self._run(workflow_ops.status_steps(self.queries, workflow_id), conn)

    def workflow_jobs(self, workflow_id: str, *, conn: Any = None) -> list[Job]:
        return self._run(workflow_ops.list_steps(self.queries, workflow_id), conn)

    def cancel_workflow(self, workflow_id: str, *, conn: Any = None) -> list[int]:
        return self._run(workflow_ops.cancel_steps(self.queries, workflow_id), conn)

    def retry_workflow(self, workflow_id: str, *, conn: Any = None) -> list[int]:
        return self._run(workflow_ops.retry_steps(self.queries, workflow_id), conn)

    def get_job(self, job_id: int, *, conn: Any = None) -> Job | None:
        found = self._run(get_job_steps(self.queries, job_id), conn)
        return found[0] if found else None

    def list_jobs(
        self,
        *,
        state: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        conn: Any = None,
    ) -> list[Job]:
        return self._run(list_jobs_steps(self.queries, state=state, queue=queue, limit=limit), conn)

    def update_jobs(
        self, jobs: Iterable[Job | int], changes: Changes, *, conn: Any = None
    ) -> list[Job]:
        """See :meth:`oban_pro.Oban.update_many_jobs`."""
        return self._run(update_steps(self.queries, list(jobs), changes), conn)

    def retry_jobs(self, jobs: Iterable[Job | int], *, conn: Any = None) -> list[int]:
        return self._run(retry_steps(self.queries, jobs), conn)

    def cancel_jobs(self, jobs: Iterable[Job | int], *, conn: Any = None) -> list[int]:
        return self._run(cancel_steps(self.queries, jobs), conn)

    def delete_jobs(self, jobs: Iterable[Job | int], *, conn: Any = None) -> list[int]:
        return self._run(delete_steps(self.queries, jobs), conn)


def enqueue_sync(job: Job, *, conn: Any, prefix: str = "public") -> Job:
    """Insert ``job`` inside ``conn``'s transaction from synchronous code."""
    return run_sync(unwrap_sync_conn(conn), insert_steps(Queries(prefix), [job]))[0]
