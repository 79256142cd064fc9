"""The executor: turns fetched rows into ``Run`` messages for the pool, and the pool's outcomes
into acks and metrics. It is the only place that knows which jobs this node is running.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..backoff import default_backoff
from ..pool.messages import Run
from ..worker import worker_timeout
from .acker import Ack, Acker
from .heartbeat import RunningJob

if TYPE_CHECKING:
    from ..metrics import Metrics
    from .producer import FetchedRow, Producer

log = logging.getLogger(__name__)

# Pool failure reasons -> ack kinds. Crashes and memory kills count toward the poison guard;
# a timeout is an ordinary failed attempt; a pkill cancels.
FAILURE_KINDS = {
    "crash": "crash", "memory": "crash", "timeout": "error", "cancelled": "cancel",
    "dispatch": "error",
}  # fmt: skip


@dataclass(slots=True)
class InFlight:
    producer: Producer
    worker: str
    attempt: int
    max_attempts: int
    wait: float
    dispatched: float  # monotonic time the job went to the pool, for killed jobs' duration


class Executor:
    def __init__(self, acker: Acker, *, default_timeout: float, metrics: Metrics | None = None):
        self.acker = acker
        self.pool: Any = None  # set by the coordinator once the pool exists
        self.metrics = metrics
        self.inflight: dict[int, InFlight] = {}
        self._default_timeout = default_timeout
        self._timeouts: dict[str, float] = {}
        self._reserved = 0
        self.on_slot_freed: Any = None

    # -- capacity -------------------------------------------------------------------------

    def free_slots(self) -> int:
        return max(0, self.pool.free_slots - self._reserved)

    def reserve(self, n: int) -> None:
        self._reserved += n

    # -- dispatch -------------------------------------------------------------------------

    def dispatch(self, producer: Producer, rows: list[FetchedRow]) -> None:
        """Send fetched jobs to the pool. A row that cannot become a message fails alone."""
        runs = []
        now = time.monotonic()
        for row in rows:
            job_id, worker, attempt, max_attempts = row[0], row[1], row[4], row[5]
            if job_id in self.inflight:
                # An older attempt of this job still runs here: it was rescued (this node was
                # judged dead during an outage) and fetched again. One copy per job.
                self.abandon(job_id, "fetched again after a rescue")
            wait = max(0.0, (row[11] or 0.0) - (row[10] or 0.0))
            self.inflight[job_id] = InFlight(producer, worker, attempt, max_attempts, wait, now)
            producer.running.add(job_id)
            try:
                runs.append(self._run_message(producer, row))
            except Exception as exc:  # a hostile row must not take the queue down with it
                self.on_failed(job_id, "dispatch", f"could not dispatch the job: {exc!r}")
        try:
            self.pool.submit_many(runs)
        except Exception as exc:  # the pool is closing: give the jobs back at once
            log.warning("could not hand %d jobs to the pool (%s); releasing them", len(runs), exc)
            self.release([run.job_id for run in runs])

    def _run_message(self, producer: Producer, row: FetchedRow) -> Run:
        (job_id, worker, args, meta, attempt, max_attempts, priority, tags, errors,
         inserted_at, scheduled_at, attempted_at) = row  # fmt: skip
        return Run(
            job_id=job_id,
            worker=worker,
            args=args.encode(),
            meta=(meta or "{}").encode(),
            attempt=attempt,
            max_attempts=max_attempts,
            queue=producer.queue,
            priority=priority,
            tags=tags or [],
            errors=(errors or "[]").encode(),
            inserted_at=inserted_at or 0.0,
            scheduled_at=scheduled_at or 0.0,
            attempted_at=attempted_at or 0.0,
            timeout=self._timeout(worker),
        )

    def _timeout(self, worker: str) -> float:
        found = self._timeouts.get(worker)
        if found is None:
            found = self._timeouts[worker] = worker_timeout(worker, self._default_timeout)
        return found

    # -- outcomes (called by the pool on the event loop) ----------------------------------

    def on_done(self, done: Any) -> None:
        job = self.inflight.pop(done.job_id, None)
        if job is None:
            return  # already failed/cancelled here; the late result is stale
        kind, delay, error, meta, state = done.kind, 0.0, None, None, "completed"
        if kind == "error":
            delay = done.delay
            state = state_after_error(job)
            error = _error_entry(job.attempt, done.error or "error")
            _log_failure(done.job_id, job, state, done.error or "error")
        elif kind == "cancel":
            error = _error_entry(job.attempt, f"cancelled: {done.reason}")
            state = "cancelled"
        elif kind == "snooze":
            delay = done.delay
            meta = json.dumps(done.meta) if done.meta else None
            state = "snoozed"
        elif kind == "record":
            meta = json.dumps({"recorded": True, "return": done.recorded})
        self._finish(done.job_id, job, kind, delay, error, meta, state, done.duration)

    def on_failed(self, job_id: int, reason: str, text: str) -> None:
        job = self.inflight.pop(job_id, None)
        if job is None:
            return
        kind = FAILURE_KINDS.get(reason, "crash")
        delay = float(default_backoff(job.attempt, job.max_attempts)) if kind != "cancel" else 0.0
        state = {"cancel": "cancelled"}.get(kind) or (
            "discarded" if job.attempt >= job.max_attempts else "retryable"
        )
        error = _error_entry(job.attempt, text)
        _log_failure(job_id, job, state, text)
        self._finish(
            job_id, job, kind, delay, error, None, state, time.monotonic() - job.dispatched
        )

    def release(self, job_ids: list[int]) -> None:
        """Give back jobs that did not finish before shutdown (attempt returned)."""
        for job_id in job_ids:
            job = self.inflight.pop(job_id, None)
            if job is not None:
                job.producer.running.discard(job_id)
                self.acker.add(Ack(job_id, job.attempt, job.producer.uuid, "release"))

    def running_job_ids(self) -> list[int]:
        return list(self.inflight)

    def running(self) -> list[RunningJob]:
        """Every job running here, as its row should still read (for the ownership check)."""
        return [RunningJob(i, j.attempt, j.producer.uuid) for i, j in self.inflight.items()]

    def abandon(self, job_id: int, why: str, attempt: int | None = None) -> bool:
        """Stop the local copy of a job whose row is no longer this attempt's (rescued and
        maybe running elsewhere, cancelled, deleted). Nothing is acked: the row belongs to
        someone else now. With ``attempt``, only that attempt is stopped. False if the job
        does not run here."""
        job = self.inflight.get(job_id)
        if job is None or (attempt is not None and job.attempt != attempt):
            return False
        del self.inflight[job_id]
        log.warning(
            "job %s (%s, queue %s, attempt %d) is no longer this node's in the database (%s); "
            "stopping its local copy", job_id, job.worker, job.producer.queue, job.attempt, why,
            extra={"job_id": job_id},
        )  # fmt: skip
        job.producer.running.discard(job_id)
        self.pool.kill_job(job_id, why)  # its failure report finds no entry: no ack
        if self.on_slot_freed is not None:
            self.on_slot_freed(job.producer)
        return True

    def _finish(
        self,
        job_id: int,
        job: InFlight,
        kind: str,
        delay: float,
        error: str | None,
        meta: str | None,
        state: str,
        duration: float,
    ) -> None:
        job.producer.running.discard(job_id)
        self.acker.add(Ack(job_id, job.attempt, job.producer.uuid, kind, delay, error, meta))
        if self.metrics is not None:
            self.metrics.job_finished(job.producer.queue, job.worker, state, duration, job.wait)
        if self.on_slot_freed is not None:
            self.on_slot_freed(job.producer)


def state_after_error(job: InFlight) -> str:
    return "discarded" if job.attempt >= job.max_attempts else "retryable"


def _log_failure(job_id: int, job: InFlight, state: str, text: str) -> None:
    # The last line of a traceback names the exception; the whole text is in the job's errors.
    last = text.strip().splitlines()[-1] if text.strip() else text
    log.warning(
        "job %s (%s, queue %s, attempt %d/%d) failed, now %s: %s",
        job_id,
        job.worker,
        job.producer.queue,
        job.attempt,
        job.max_attempts,
        state,
        last,
        extra={"job_id": job_id},
    )


def _error_entry(attempt: int, text: str) -> str:
    at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return json.dumps({"attempt": attempt, "at": at, "error": text})
