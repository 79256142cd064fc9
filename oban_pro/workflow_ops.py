"""Workflow steps for the database: insert, status, list, cancel, retry, upstream results.

As :mod:`oban_pro.operations`, each is a generator of ``(sql, params)`` run by the sync or the
async driver of :mod:`oban_pro.enqueue`, so :class:`~oban_pro.Oban`,
:class:`~oban_pro.client.Client` and the ``workflows`` CLI share them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import msgspec

from .enqueue import Step, Steps, apply_row, bulk_row, insert_steps, jobs_list
from .errors import WorkflowError
from .job import Job
from .naming import channel
from .operations import COLUMNS, _to_job
from .payloads import encode_payload
from .queries import JOB_COLUMNS, Queries
from .workflow import Workflow
from .workflow_sql import WorkflowQueries

__all__ = ["WorkflowStatus"]

_encode = msgspec.json.Encoder().encode


@lru_cache(maxsize=64)
def workflow_queries(prefix: str) -> WorkflowQueries:
    return WorkflowQueries(prefix, JOB_COLUMNS.replace("\n", " "))


# -- insert -----------------------------------------------------------------------------------


def enqueue_many_steps(queries: Queries, jobs_or_first: Any, rest: Sequence[Job]) -> Steps:
    """The steps of ``enqueue_many(...)``: one workflow inserted whole, or jobs (an iterable,
    or the jobs themselves)."""
    if isinstance(jobs_or_first, Workflow):
        if rest:
            raise TypeError("enqueue_many takes one workflow, without other jobs")
        return insert_workflow_steps(queries, jobs_or_first)
    return insert_steps(queries, jobs_list(jobs_or_first, rest))


def insert_workflow_steps(queries: Queries, workflow: Workflow) -> Steps:
    """Insert every job of ``workflow`` in one statement; return them with ids and states."""
    flat = workflow.flatten()  # validates: raises before any SQL
    waiting: list[list[int]] = [[] for _ in flat]
    for position, item in enumerate(flat):
        for upstream in item.upstream:
            waiting[upstream].append(position + 1)  # 1-based, as WITH ORDINALITY counts
    rows = []
    for item, downstream in zip(flat, waiting, strict=True):
        job = item.job
        if item.upstream:
            job.meta = {**job.meta, "wf_wait": len(item.upstream), "wf_need": len(item.upstream)}
            job.state = "suspended"
        rows.append((*bulk_row(job), downstream))
    wq = workflow_queries(queries.prefix)
    found = yield wq.insert_workflow_jobs, {"jobs": _encode(rows).decode(), "table": wq.table}
    jobs = [item.job for item in flat]
    for job, row in zip(jobs, found, strict=True):
        apply_row(job, row)
    queues = sorted({job.queue for job in jobs if job.state == "available"})
    if queues:
        yield (
            queries.notify_many,
            {
                "channel": channel(queries.prefix, "insert"),
                "payloads": [encode_payload({"queue": q}) for q in queues],
            },
        )
    return jobs


# -- reading ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkflowStatus:
    """A workflow (with its sub-workflows) as the database has it now."""

    #: The workflow's id.
    id: str
    #: Its name (meta ``workflow_name``), if it was given one.
    name: str | None
    #: ``executing`` while any job is unfinished; then ``completed`` when every job completed,
    #: ``discarded`` when any was discarded, else ``cancelled``.
    state: str
    #: Jobs per state (every state of the enum, zeros included).
    counts: dict[str, int]
    #: Number of jobs.
    total: int
    #: When the first job was inserted.
    inserted_at: datetime | None
    #: When its first job started (None before any did).
    started_at: datetime | None
    #: When its last job finished (None while any is unfinished).
    finished_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


_STATES = (
    "available", "suspended", "scheduled", "executing", "retryable", "completed", "discarded",
    "cancelled",
)  # fmt: skip


def status_steps(queries: Queries, workflow_id: str) -> Steps:
    rows = yield workflow_queries(queries.prefix).workflow_status, {"workflow_id": workflow_id}
    if not rows:
        raise WorkflowError(f"no workflow with id {workflow_id!r} (no job carries it in meta)")
    counts = dict.fromkeys(_STATES, 0)
    counts.update({state: n for state, n, *_ in rows})
    unfinished = sum(counts[s] for s in _STATES[:5])
    if unfinished:
        state = "executing"
    elif counts["discarded"]:
        state = "discarded"
    elif counts["cancelled"]:
        state = "cancelled"
    else:
        state = "completed"
    started = [r[2] for r in rows if r[2] is not None]
    finished = [r[3] for r in rows if r[3] is not None]
    names = [r[5] for r in rows if r[5] is not None]
    return WorkflowStatus(  # type: ignore[return-value]
        id=workflow_id,
        name=names[0] if names else None,
        state=state,
        counts=counts,
        total=sum(counts.values()),
        inserted_at=_utc(min(r[4] for r in rows)),
        started_at=_utc(min(started)) if started else None,
        finished_at=_utc(max(finished)) if finished and not unfinished else None,
    )


def list_steps(queries: Queries, workflow_id: str) -> Steps:
    rows = yield workflow_queries(queries.prefix).workflow_jobs, {"workflow_id": workflow_id}
    return [_to_job(row, list(COLUMNS)) for row in rows]


# -- acting -----------------------------------------------------------------------------------


def cancel_steps(queries: Queries, workflow_id: str) -> Steps:
    """Cancel every unfinished job of the workflow; returns their ids. Running jobs get pkill."""
    rows = yield workflow_queries(queries.prefix).cancel_workflow, {"workflow_id": workflow_id}
    executing = [job_id for job_id, old_state in rows if old_state == "executing"]
    if executing:
        step: Step = (
            queries.notify_many,
            {
                "channel": channel(queries.prefix, "signal"),
                "payloads": [encode_payload({"action": "pkill", "job_id": i}) for i in executing],
            },
        )
        yield step
    return sorted(job_id for job_id, _ in rows)


def retry_steps(queries: Queries, workflow_id: str) -> Steps:
    """Retry the workflow's cancelled and discarded jobs; returns their ids."""
    rows = yield workflow_queries(queries.prefix).retry_workflow, {"workflow_id": workflow_id}
    return [job_id for job_id, _state in rows]


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None else None
