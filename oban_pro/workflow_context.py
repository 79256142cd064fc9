"""What a running workflow step knows about its workflow: ``job.workflow``.

``await job.workflow.results()`` (``job.workflow.results_sync()`` in a sync worker) returns the
recorded results (:class:`~oban_pro.Record`) of the jobs the step waited for, in one query:
``{dep name: value}``, and for a dependency on a sub-workflow or an ``add_many`` fan-out
``{dep name: {step name: value}}``. A dependency that completed without recording a value (or
was cancelled, discarded or deleted and ignored) gives ``None``.

The query needs a database connection in whatever process runs the step. :func:`_database` is
the one place that decides where it comes from.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

from .term import decode_recorded

if TYPE_CHECKING:
    from .job import Job

__all__ = ["WorkflowContext"]


class WorkflowContext:
    """The workflow side of one job (``job.workflow``); ``None`` fields for a plain job."""

    def __init__(self, job: Job) -> None:
        meta = job.meta if isinstance(job.meta, dict) else {}
        self._job = job
        #: The workflow's id (meta ``workflow_id``), or None when the job is in no workflow.
        self.id: str | None = meta.get("workflow_id")
        #: The workflow's name (meta ``workflow_name``).
        self.name: str | None = meta.get("workflow_name")
        #: This step's name (meta ``name``).
        self.step: str | None = meta.get("name")
        #: The names of the steps this one waits for (meta ``deps``).
        self.deps: list[str] = list(meta.get("deps") or [])
        #: The parent workflow's id, for a step of a sub-workflow.
        self.parent_id: str | None = meta.get("sup_workflow_id")

    def __repr__(self) -> str:
        return f"<WorkflowContext {self.id} step={self.step!r} deps={self.deps!r}>"

    async def results(self, *, conn: Any = None) -> dict[str, Any]:
        """The recorded results of this step's dependencies (see the module's docstring).

        ``conn`` may be a psycopg ``AsyncConnection`` to read on; otherwise the process's own
        (see :func:`_database`)."""
        sql, params = self._query()
        own = conn if conn is not None else await _async_connection()
        async with own.cursor() as cur:
            await cur.execute(sql, params)
            return _shape(self._job, await cur.fetchall())

    def results_sync(self, *, conn: Any = None) -> dict[str, Any]:
        """:meth:`results` for sync code (a sync worker runs on a thread of its child)."""
        sql, params = self._query()
        own = conn if conn is not None else _sync_connection()
        with own.cursor() as cur:
            cur.execute(sql, params)
            return _shape(self._job, cur.fetchall())

    def _query(self) -> tuple[str, dict[str, Any]]:
        if self.id is None or self._job.id is None:
            from .errors import WorkflowError

            raise WorkflowError(f"job {self._job.id} is not a step of a workflow (no workflow_id)")
        from .workflow_ops import workflow_queries

        # One statement, no transaction: safe on a connection other tasks share.
        return workflow_queries(_database()[1]).workflow_upstream, {"id": self._job.id}


def _shape(job: Job, rows: list[tuple[int, str, dict[str, Any]]]) -> dict[str, Any]:
    meta = job.meta
    subs: dict[str, list[str]] = meta.get("wf_subs") or {}
    group_of = {wid: dep for dep, ids in subs.items() for wid in ids}
    results: dict[str, Any] = {dep: ({} if dep in subs else None) for dep in meta.get("deps", [])}
    for _id, _state, up in rows:
        value = decode_recorded(up["return"]) if up.get("recorded") and "return" in up else None
        name = up.get("name") or str(_id)
        of = up.get("workflow_id")
        group = group_of.get(of) if of is not None else None
        if group is not None:
            results.setdefault(group, {})[name] = value
        else:
            results[name] = value
    return results


# -- where the connection comes from ------------------------------------------------------------
#
# In order: the instance a worker process serves (``Oban.get_instance()`` in jobs: its DSN
# and prefix), an Oban instance running in this process (the node's parent,
# the inline testing runner), else the environment a worker process inherited from its node:
# OBAN_DSN (or DATABASE_URL) and OBAN_PREFIX.


def _database() -> tuple[str, str]:
    """(dsn, prefix) for the current process."""
    import sys

    # A worker process serves its node's instance (what Oban.get_instance() gives job code).
    child_instance = sys.modules.get("oban_pro.pool.child_instance")
    served = child_instance.installed() if child_instance is not None else None
    if served is not None and served.conninfo:
        return served.conninfo, served.prefix
    oban_module = sys.modules.get("oban_pro.oban")
    instances = getattr(oban_module, "_instances", {}) if oban_module else {}
    for instance in list(instances.values()):
        if instance.config.dsn:
            return instance.config.dsn, instance.config.prefix
    dsn = os.environ.get("OBAN_DSN") or os.environ.get("DATABASE_URL")
    if not dsn:
        from .errors import WorkflowError

        raise WorkflowError(
            "job.workflow.results() needs a database: no Oban instance runs in this process and "
            "neither OBAN_DSN nor DATABASE_URL is set (or pass conn=)"
        )
    return dsn, os.environ.get("OBAN_PREFIX") or "public"


# One connection per thread (sync steps run on the child's threads) and per event loop, opened on
# first use and kept: a fan-out of many steps must not open a connection per step.
_local = threading.local()
_loop_connections: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _sync_connection() -> Any:
    import psycopg

    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = _local.conn = psycopg.connect(_database()[0], autocommit=True)
    return conn


async def _async_connection() -> Any:
    import psycopg

    loop = asyncio.get_running_loop()
    conn = _loop_connections.get(loop)
    if conn is None or conn.closed:
        conn = await psycopg.AsyncConnection.connect(_database()[0], autocommit=True)
        _loop_connections[loop] = conn
    return conn
