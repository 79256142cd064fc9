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
from ..worker import worker_timeout
from .acker import Ack, Acker

if TYPE_CHECKING:
    from ..metrics import Metrics
    from .producer import FetchedRow, Producer

log = logging.getLogger(__name__)

# Pool failure reasons -> ack kinds. Crashes and memory kills count toward the poison guard;
# a timeout is an ordinary failed attempt; a pkill cancels.
FAILURE_KINDS = {"crash": "crash", "memory": "crash", "timeout": "error", "cancelled": "cancel"}


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
        from ..pool.messages import Run

        runs = []
        now = time.monotonic()
        for (
            job_id,
            worker,
            args,
            meta,
            attempt,
            max_attempts,
            priority,
            tags,
            errors,
            inserted_at,
            scheduled_at,
            attempted_at,
        ) in rows:
            self.inflight[job_id] = InFlight(
                producer, worker, attempt, max_attempts, max(0.0, attempted_at - scheduled_at), now
            )
            producer.running.add(job_id)
            runs.append(
                Run(
                    job_id=job_id,
                    worker=worker,
                    args=args.encode(),
                    meta=meta.encode(),
                    attempt=attempt,
                    max_attempts=max_attempts,
                    queue=producer.queue,
                    priority=priority,
                    tags=tags or [],
                    errors=errors.encode(),
                    inserted_at=inserted_at,
                    scheduled_at=scheduled_at,
                    attempted_at=attempted_at,
                    timeout=self._timeout(worker),
                )
            )
        self.pool.submit_many(runs)

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
