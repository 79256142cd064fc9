"""Job operations for people and tools: get, list, retry, cancel, delete (compat.md §2).

Like :mod:`oban_pro.enqueue`, each operation is a generator of ``(sql, params)`` steps run by the
sync or async driver there, so :class:`~oban_pro.Oban` and :class:`~oban_pro.client.Client`
share the logic. Cancelling an executing job also sends a ``pkill`` signal so the node running
it stops its child.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC
from typing import Any

import msgspec

from .enqueue import Step, Steps
from .errors import JobNotFoundError, ValidationError
from .job import Job
from .payloads import encode_payload
from .queries import Queries

Changes = Mapping[str, Any] | Callable[[Job], Mapping[str, Any]]

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


def job_id_of(job: Job | int) -> int:
    """The id of ``job`` (a Job or an id); ValidationError for a Job never enqueued."""
    if isinstance(job, Job):
        if job.id is None:
            raise ValidationError("job", f"{job!r} has not been enqueued (it has no id)")
        job_id: object = job.id
    else:
        job_id = job
    if not isinstance(job_id, int) or isinstance(job_id, bool):
        raise TypeError(f"expected a Job or an integer job id, got {job!r}")
    return job_id


def _ids(jobs: Iterable[Job | int]) -> list[int]:
    if isinstance(jobs, (Job, int)):
        raise TypeError(f"expected a list of Jobs or job ids, got {jobs!r}")
    return [job_id_of(job) for job in jobs]


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
    return [job_id for (job_id,) in rows]


def delete_steps(queries: Queries, jobs: Iterable[Job | int]) -> Steps:
    rows = yield queries.delete_jobs, {"ids": _ids(jobs)}
    return [job_id for (job_id,) in rows]


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
    return [job_id for job_id, _old_state in rows]


def follow_updates(given: Iterable[Job | int], fresh: Iterable[Job]) -> None:
    """Make the caller's :class:`Job` objects read as their updated rows (ids are left alone),
    as Oban.py's ``update_job`` does."""
    for job, now in zip(given, fresh, strict=True):
        if isinstance(job, Job) and job is not now:
            for name in now.to_dict():
                if name not in ("unique", "conflict", "extra"):
                    setattr(job, name, getattr(now, name))


def update_steps(queries: Queries, jobs: Iterable[Job | int], changes: Changes) -> Steps:
    """Oban.py's ``update_many_jobs``: lock the rows, apply ``changes`` (a dict, or a callable
    given each job as it is now), validate as :meth:`Job.update` does, write, return the jobs.

    A missing id raises :class:`~oban_pro.errors.JobNotFoundError` and nothing is written.
    """
    if not (callable(changes) or isinstance(changes, Mapping)):
        raise ValidationError(
            "changes", f"must be a dict or a callable returning one, got {type(changes).__name__}"
        )
    ids = _ids(jobs)
    rows = yield queries.lock_jobs, {"ids": ids}
    current = {job.id: job for job in (_to_job(row, list(COLUMNS)) for row in rows)}
    missing = [job_id for job_id in ids if job_id not in current]
    if missing:
        raise JobNotFoundError(f"no job with id {', '.join(map(str, missing))}")
    updated: dict[int, Job] = {}
    for job_id in ids:
        job = updated.get(job_id) or current[job_id]
        wanted = changes(job) if callable(changes) else changes
        updated[job_id] = job.update(wanted)
    params = [
        (
            job.id,
            msgspec.Raw(_encode(job.args)),
            msgspec.Raw(_encode(job.meta)),
            job.tags,
            job.max_attempts,
            job.priority,
            job.queue,
            job.worker,
            job.scheduled_at.astimezone(UTC).replace(tzinfo=None).isoformat()
            if job.scheduled_at
            else None,
        )
        for job in updated.values()
    ]
    yield queries.update_jobs, {"jobs": _encode(params).decode()}
    rows = yield queries.lock_jobs, {"ids": ids}
    fresh = {job.id: job for job in (_to_job(row, list(COLUMNS)) for row in rows)}
    return [fresh[job_id] for job_id in ids]


_encode = msgspec.json.Encoder().encode
