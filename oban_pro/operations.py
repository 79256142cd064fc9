"""Job operations for people and tools: get, list, retry, cancel, delete (compat.md §2).

Like :mod:`oban_pro.enqueue`, each operation is a generator of ``(sql, params)`` steps run by the
sync or async driver there, so :class:`~oban_pro.Oban` and :class:`~oban_pro.client.Client`
share the logic. Cancelling an executing job also sends a ``pkill`` signal so the node running
it stops its child.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .enqueue import Step, Steps
from .job import Job
from .payloads import encode_payload
from .queries import Queries

COLUMNS = (
    "id",
    "state",
    "queue",
    "worker",
    "args",
    "errors",
    "attempt",
    "max_attempts",
    "inserted_at",
    "scheduled_at",
    "attempted_at",
    "completed_at",
    "attempted_by",
    "discarded_at",
    "priority",
    "tags",
    "meta",
    "cancelled_at",
)


def _ids(jobs: Iterable[Job | int]) -> list[int]:
    out = []
    for job in jobs:
        job_id = job.id if isinstance(job, Job) else job
        if not isinstance(job_id, int) or isinstance(job_id, bool):
            raise TypeError(f"expected a Job or an integer job id, got {job!r}")
        out.append(job_id)
    return out


def _to_job(row: tuple[Any, ...], names: list[str]) -> Job:
    return Job.from_row(dict(zip(names, row, strict=True)))


def get_job_steps(queries: Queries, job_id: int) -> Steps:
    rows = yield queries.get_job, {"id": job_id}
    return [_to_job(row, list(COLUMNS)) for row in rows]


def list_jobs_steps(queries: Queries, *, state: str | None, queue: str | None, limit: int) -> Steps:
    rows = yield queries.list_jobs, {"state": state, "queue": queue, "limit": limit}
    return [_to_job(row, list(COLUMNS)) for row in rows]


def retry_steps(queries: Queries, jobs: Iterable[Job | int]) -> Steps:
    rows = yield queries.retry_jobs, {"ids": _ids(jobs)}
    return [row[0] for row in rows]


def delete_steps(queries: Queries, jobs: Iterable[Job | int]) -> Steps:
    rows = yield queries.delete_jobs, {"ids": _ids(jobs)}
    return [row[0] for row in rows]


def cancel_steps(queries: Queries, jobs: Iterable[Job | int]) -> Steps:
    from .naming import channel

    rows = yield queries.cancel_jobs, {"ids": _ids(jobs)}
    executing = [job_id for job_id, old_state in rows if old_state == "executing"]
    if executing:
        payloads = [encode_payload({"action": "pkill", "job_id": job_id}) for job_id in executing]
        step: Step = (
            queries.notify_many,
            {"channel": channel(queries.prefix, "signal"), "payloads": payloads},
        )
        yield step
    return [row[0] for row in rows]
