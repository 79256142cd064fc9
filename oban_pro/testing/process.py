"""Running one job in this process: :func:`perform_job` (oban_pro's), :func:`process_job`
(Oban.py's), and the inline testing mode behind :meth:`oban_pro.Oban.enqueue`.

All three go through :class:`~oban_pro.runner.JobRunner`, the runner every worker process uses:
the job is built from JSON text as a child builds it from its row, so args that would not
survive the database do not survive here either.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from ..job import Job, encode_json, utcnow
from ..pool.messages import Done, Run
from ..registry import worker_timeout
from ..runner import Executed, JobRunner

__all__ = ["perform_job", "process_job", "run_inline"]


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
    traceback of a failure. Never raises for what the job does (see :func:`process_job` for
    Oban.py's form, which returns the job's result and raises its error).
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


def process_job(job: Job) -> Any:
    """Run ``job``'s worker in this process, without the database (Oban.py's ``process_job``).

    As Oban.py does: ``args`` and ``meta`` go through JSON and back (a value JSON cannot hold
    raises ``TypeError``), and a job never enqueued gets an ``id``, ``attempt = 1`` and its
    timestamps. Returns what ``process`` returned (a ``Snooze``, ``Cancel`` or ``Record`` as
    such) and raises what it raised. Called while an event loop runs (an async test) it returns
    a coroutine to await, so ``result = await process_job(job)``; otherwise it runs the job to
    its end: ``result = process_job(job)``.
    """
    run = _prepare_for_run(job)
    if _loop_is_running():
        return _process(run)
    return asyncio.run(_process(run))


async def _process(run: Run) -> Any:
    executed = await JobRunner([]).run_here(run)
    if executed.error is not None:
        raise executed.error
    return executed.result


async def run_inline(jobs: list[Job], imports: list[str]) -> list[Job]:
    """The inline testing mode: run each job now, here, and set the state it ended in.

    A job that raises raises here (after its state and error entry are set on the object), as
    Oban.py's inline mode does; nothing is written to the database.
    """
    runner = JobRunner(imports)
    for job in jobs:
        executed = await runner.run_here(_prepare_for_run(job))
        _record_outcome(job, executed)
        if executed.error is not None:
            raise executed.error
    return jobs


def _prepare_for_run(job: Job) -> Run:
    """Give ``job`` the fields an executing job has (as Oban.py's ``process_job``) and build
    the message a child would get for it."""
    now = utcnow()
    job.args = json.loads(encode_json(job.args))
    job.meta = json.loads(encode_json(job.meta))
    if job.id is None:
        job.id = id(job)
    if job.attempt == 0:
        job.attempt = 1
    job.attempted_at = job.attempted_at or now
    job.scheduled_at = job.scheduled_at or now
    job.inserted_at = job.inserted_at or now
    return Run(
        job_id=job.id,
        worker=job.worker,
        args=encode_json(job.args),
        meta=encode_json(job.meta),
        attempt=job.attempt,
        max_attempts=job.max_attempts,
        queue=job.queue,
        priority=job.priority,
        tags=list(job.tags),
        errors=json.dumps(job.errors, default=str),
        inserted_at=job.inserted_at.timestamp(),
        scheduled_at=job.scheduled_at.timestamp(),
        attempted_at=job.attempted_at.timestamp(),
        timeout=worker_timeout(job.worker),
        attempted_by=list(job.attempted_by) or None,
    )


def _record_outcome(job: Job, executed: Executed) -> None:
    """Set the state (and its timestamp, meta, error entry) the job would have after its ack."""
    done, now = executed.done, utcnow()
    if done.kind in ("completed", "record"):
        job.state, job.completed_at = "completed", now
        if done.kind == "record":
            job.meta = {**job.meta, "recorded": True, "return": done.recorded}
    elif done.kind == "cancel":
        job.state, job.cancelled_at = "cancelled", now
        job.errors = [*job.errors, _error_entry(job, f"cancelled: {done.reason}", now)]
    elif done.kind == "snooze":
        job.state, job.scheduled_at = "scheduled", now + timedelta(seconds=done.delay)
        job.attempt -= 1
        job.meta = {**job.meta, **(done.meta or {}), "snoozed": job.meta.get("snoozed", 0) + 1}
    else:
        final = job.attempt >= job.max_attempts
        job.state = "discarded" if final else "retryable"
        if final:
            job.discarded_at = now
        else:
            job.scheduled_at = now + timedelta(seconds=done.delay)
        job.errors = [*job.errors, _error_entry(job, done.error or "error", now)]


def _error_entry(job: Job, text: str, at: datetime) -> dict[str, Any]:
    return {"attempt": job.attempt, "at": at.isoformat(), "error": text}


def _loop_is_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
