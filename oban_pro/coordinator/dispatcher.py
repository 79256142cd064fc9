"""The dispatcher: one per node. It owns the queues' limits against the single ledger of running
jobs, turns fetched rows into jobs for the worker pool, and turns the pool's outcomes into acks.

A queue's ``limit`` is the number of its jobs executing at once on this node, as in Oban,
whatever the number of processes: producers ask :meth:`Dispatcher.demand` how many jobs to
fetch, which is the limit minus the queue's jobs in the ledger. Queues do not share a scarce
slot count any more (each child runs many jobs at once), so fairness between queues reduces to
the order in which jobs waiting for a child are served (see :mod:`oban_pro.pool.placement`).

The ledger is :class:`oban_pro.pool.Ledger`: the pool records each job's child in it, this
class reads it; there is no second list of running jobs anywhere.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from ..backoff import default_backoff
from ..pool.ledger import Ledger
from ..pool.messages import Done, Run
from ..registry import worker_isolated, worker_timeout
from ..store import FetchedJob, RunningJob
from .acker import Ack, Acker
from .job_events import JobEvents

if TYPE_CHECKING:
    from .producer import Producer

__all__ = ["Dispatcher", "JobPool", "RunningJob", "ISOLATE_META_KEY"]

log = logging.getLogger(__name__)

#: Meta key set on a job given back after its child died while it was not alone: it runs
#: isolated from then on, so a crash can be charged to it and no one else.
ISOLATE_META_KEY = "isolate"

# Pool failure reasons -> ack kinds. A crash (alone in its child) and a memory kill count toward
# the poison guard; a timeout is an ordinary failed attempt; a pkill cancels; a job rescued
# elsewhere is not ours to ack.
FAILURE_KINDS: dict[str, str | None] = {
    "crash": "crash", "memory": "crash", "timeout": "error", "cancelled": "cancel",
    "dispatch": "error", "rescued": None,
}  # fmt: skip

#: Pool failure reasons -> the ``error_type`` of their ``oban.job.exception`` event.
FAILURE_ERROR_TYPES = {
    "crash": "ChildCrashedError", "memory": "ChildCrashedError", "timeout": "JobTimeoutError",
    "dispatch": "DispatchError",
}  # fmt: skip


class JobPool(Protocol):
    """What the dispatcher needs of a worker pool (:class:`oban_pro.pool.WorkerPool`)."""

    #: Worker processes it runs (as configured).
    processes: int

    def waiting_in(self, queue: str) -> int: ...

    def submit_many(self, runs: list[Run], *, isolated: Collection[int] = ()) -> None: ...

    def stop_job(self, job_id: int, reason: str = "cancelled") -> bool: ...


PoolFactory = Callable[..., Any]


class Dispatcher:
    """Producers fetch through it; the pool reports to it; the acker writes what it decides.

    ``make_pool(ledger=..., on_done=..., on_failed=..., on_released=..., on_started=...)``
    builds the pool that runs the jobs (the real :class:`~oban_pro.pool.WorkerPool`, or an
    in-process one in :mod:`oban_pro.testing`). ``events`` emits ``oban.job.start`` when the
    pool reports a job started (its stop events follow the written acks: :mod:`.outcomes`).
    """

    def __init__(
        self,
        acker: Acker,
        make_pool: PoolFactory,
        *,
        default_timeout: float = 0.0,
        isolated_queues: Collection[str] = (),
        threads_follow_limits: bool = False,
        events: JobEvents | None = None,
    ) -> None:
        self.acker = acker
        self.ledger = Ledger()
        self._default_timeout = default_timeout
        self._isolated_queues = frozenset(isolated_queues)
        # threads not configured: each child may run every queue's limit of sync jobs at once,
        # so the pool grows its children's thread cap when a queue is scaled up.
        self._threads_follow_limits = threads_follow_limits
        self._producers: dict[str, Producer] = {}
        self._timeouts: dict[str, float] = {}
        self._isolated_workers: dict[str, bool] = {}
        self.pool: Any = make_pool(
            ledger=self.ledger,
            on_done=self.on_done,
            on_failed=self.on_failed,
            on_released=self.on_released,
            on_started=events.started if events is not None else None,
        )

    def register(self, producer: Producer) -> None:
        """Serve ``producer``'s queue (its uuid fences the acks of its jobs)."""
        self._producers[producer.queue] = producer

    # -- limits -----------------------------------------------------------------------------

    def limits_changed(self) -> None:
        """A queue was scaled: let the children's threads reach the new limits."""
        if not self._threads_follow_limits:
            return
        needed = sum(p.limit for p in self._producers.values())
        if needed > self.pool.threads:
            self.pool.set_threads(needed)

    def running_count(self, queue: str) -> int:
        return self.ledger.count(queue)

    def demand(self, producer: Producer) -> int:
        """How many jobs ``producer`` may fetch now: its limit minus its jobs running here.

        While the queue has a job waiting for each child (isolated jobs on busy children),
        the children are not short of work: the room is fetched once half the limit is free,
        in one statement, instead of one fetch per job or two (each a round trip and a commit
        that PostgreSQL and this process take from the cores the jobs run on: CPU-bound
        isolated jobs at limit 10 on 2 processes fetch once per 5 jobs)."""
        room = producer.limit - self.ledger.count(producer.queue)
        if room <= 0:
            return 0
        if self.pool.waiting_in(producer.queue) >= self.pool.processes and (
            room < producer.limit // 2
        ):
            return 0
        return room

    def running(self) -> list[RunningJob]:
        """``(job_id, attempt, producer_uuid)`` of every job this node holds."""
        out = []
        for job in self.ledger:
            producer = self._producers.get(job.run.queue)
            out.append(RunningJob(job.job_id, job.run.attempt, producer.uuid if producer else ""))
        return out

    def stop_job(self, job_id: int, reason: str = "cancelled") -> bool:
        """Stop the local copy of a job (cooperatively, then by killing its child after the
        kill grace). ``reason``: "cancelled" (pkill: acked as cancelled) or "rescued" (the
        database gave it to someone else: nothing is acked). True if it was running here."""
        return bool(self.pool.stop_job(job_id, reason))

    def abandon(self, job_id: int, why: str, attempt: int | None = None) -> bool:
        """Stop the local copy of a job whose row is no longer this attempt's (rescued and
        maybe running elsewhere, cancelled, deleted); nothing is acked for it. With
        ``attempt``, only that attempt is stopped. False if it does not run here."""
        job = self.ledger.get(job_id)
        if job is None or (attempt is not None and job.run.attempt != attempt):
            return False
        log.warning(
            "job %s (%s, queue %s, attempt %d) is no longer this node's in the database (%s); "
            "stopping its local copy", job_id, job.run.worker, job.run.queue, job.run.attempt,
            why, extra={"job_id": job_id},
        )  # fmt: skip
        return self.stop_job(job_id, "rescued")

    # -- dispatch -----------------------------------------------------------------------------

    def give_back(self, producer: Producer, jobs: list[FetchedJob], why: str) -> None:
        """Release fetched jobs without running them (available again, attempt returned).
        The release is fenced like every ack: a job rescued meanwhile is left alone."""
        log.warning("giving back %d fetched jobs of queue %r unrun: %s", len(jobs),
                    producer.queue, why)  # fmt: skip
        for job in jobs:
            self.acker.add(Ack(job.id, job.attempt, producer.uuid, "release"))

    def dispatch(self, producer: Producer, jobs: list[FetchedJob]) -> None:
        """Send fetched jobs to the pool. A job that cannot become a message fails alone."""
        runs: list[Run] = []
        isolated: list[int] = []
        for job in jobs:
            if job.id in self.ledger:
                # An older attempt of this job still runs here: it was rescued (this node was
                # judged dead during an outage) and fetched again. One copy per job: stop the
                # old one, give this attempt back to be fetched once the old one is gone.
                self.abandon(job.id, "fetched again after a rescue")
                self.acker.add(Ack(job.id, job.attempt, producer.uuid, "release"))
                continue
            try:
                run = self._run_message(producer, job)
            except Exception as exc:  # a hostile row must not take the queue down with it
                log.warning("could not dispatch job %s: %r", job.id, exc)
                text = f"could not dispatch the job: {exc!r}"
                # The row's own args or meta may be what failed: the event's job gets none.
                bare = Run(job.id, str(job.worker), b"{}", attempt=job.attempt,
                           queue=producer.queue)  # fmt: skip
                self.acker.add(
                    Ack(job.id, job.attempt, producer.uuid, "error",
                        float(default_backoff(job.attempt, job.max_attempts)),
                        _error_entry(job.attempt, text), queue=producer.queue,
                        worker=str(job.worker), run=bare, error_type=type(exc).__name__,
                        error_message=str(exc), workflow=_has_waiting_jobs(job.meta))
                )  # fmt: skip
                continue
            runs.append(run)
            if self._isolated(producer.queue, run):
                isolated.append(run.job_id)
        if not runs:
            return
        try:
            self.pool.submit_many(runs, isolated=isolated)
        except Exception as exc:  # the pool is closing: give the jobs back at once
            log.warning("could not hand %d jobs to the pool (%s); releasing them", len(runs), exc)
            self.release(runs)

    def _run_message(self, producer: Producer, job: FetchedJob) -> Run:
        return Run(
            job_id=job.id,
            worker=job.worker,
            args=job.args.encode(),
            meta=(job.meta or "{}").encode(),
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            queue=producer.queue,
            priority=job.priority,
            tags=job.tags or [],
            errors=(job.errors or "[]").encode(),
            inserted_at=job.inserted_at or 0.0,
            scheduled_at=job.scheduled_at or 0.0,
            attempted_at=job.attempted_at or 0.0,
            timeout=self._timeout(job.worker),
        )

    def _timeout(self, worker: str) -> float:
        found = self._timeouts.get(worker)
        if found is None:
            found = self._timeouts[worker] = worker_timeout(worker, self._default_timeout)
        return found

    def _isolated(self, queue: str, run: Run) -> bool:
        if queue in self._isolated_queues:
            return True
        by_worker = self._isolated_workers.get(run.worker)
        if by_worker is None:
            by_worker = self._isolated_workers[run.worker] = worker_isolated(run.worker)
        return by_worker or _meta_says_isolate(run.meta)

    # -- outcomes (called by the pool on the event loop) ------------------------------------

    def on_done(self, run: Run, done: Done) -> None:
        producer = self._producers.get(run.queue)
        if producer is None:
            return
        kind, delay, error, meta = done.kind, 0.0, None, None
        error_type = error_message = None
        if kind == "error":
            error_type, error_message = done.error_type, done.error_message
            delay = done.delay
            error = _error_entry(run.attempt, done.error or "error")
        elif kind == "cancel":
            error = _error_entry(run.attempt, f"cancelled: {done.reason}")
        elif kind == "snooze":
            delay = done.delay
            meta = json.dumps(done.meta) if done.meta else None
        elif kind == "record":
            meta = json.dumps({"recorded": True, "return": done.recorded})
        self._ack(
            run, producer, kind, delay, error, meta, done.duration, done.error,
            error_type, error_message,
        )  # fmt: skip

    def on_failed(self, run: Run, reason: str, text: str) -> None:
        producer = self._producers.get(run.queue)
        if producer is None:
            return
        kind = FAILURE_KINDS.get(reason, "crash")
        if kind is None:  # rescued: another node owns this attempt now
            self._wake(producer)
            return
        delay = float(default_backoff(run.attempt, run.max_attempts)) if kind != "cancel" else 0.0
        error = _error_entry(run.attempt, text)
        self._ack(
            run, producer, kind, delay, error, None, self._elapsed(run), text,
            FAILURE_ERROR_TYPES.get(reason, "ChildCrashedError"), text,
        )  # fmt: skip

    def on_released(self, run: Run, text: str, isolate: bool) -> None:
        """Given back without being charged: available again, attempt returned."""
        producer = self._producers.get(run.queue)
        if producer is None:
            return
        meta = json.dumps({ISOLATE_META_KEY: True}) if isolate else None
        error = _error_entry(run.attempt, text)
        self.acker.add(
            Ack(run.job_id, run.attempt, producer.uuid, "release", 0.0, error, meta,
                queue=run.queue, worker=run.worker)
        )  # fmt: skip
        self._wake(producer)

    def release(self, runs: list[Run]) -> None:
        """Give back jobs that did not finish before shutdown (attempt returned)."""
        for run in runs:
            producer = self._producers.get(run.queue)
            if producer is not None:
                self.acker.add(Ack(run.job_id, run.attempt, producer.uuid, "release"))

    def _ack(
        self,
        run: Run,
        producer: Producer,
        kind: str,
        delay: float,
        error: str | None,
        meta: str | None,
        duration: float,
        text: str | None,
        error_type: str | None = None,
        error_message: str | None = None,
    ) -> None:
        failed = kind in ("error", "crash")
        self.acker.add(
            Ack(run.job_id, run.attempt, producer.uuid, kind, delay, error, meta,
                queue=run.queue, worker=run.worker, duration=duration,
                wait=max(0.0, run.attempted_at - run.scheduled_at) if run.attempted_at else 0.0,
                text=text if failed else None, run=run,
                error_type=error_type if failed else None,
                error_message=error_message if failed else None,
                workflow=_has_waiting_jobs(run.meta))
        )  # fmt: skip
        self._wake(producer)

    def _wake(self, producer: Producer) -> None:
        producer.wake()

    def _elapsed(self, run: Run) -> float:
        return max(0.0, time.time() - run.attempted_at) if run.attempted_at else 0.0


def _mentions(meta: Any, quoted_key: bytes) -> bool:
    """Whether the JSON text ``meta`` (bytes, or str on the rare paths) contains
    ``quoted_key``. The parent never decodes meta on the hot path; a key never appears escaped,
    and a value that merely contains the word only costs the caller its slower path."""
    if isinstance(meta, str):
        meta = meta.encode()
    return isinstance(meta, (bytes, bytearray)) and quoted_key in meta


def _has_waiting_jobs(meta: Any) -> bool:
    """Whether the meta a job was fetched with names jobs waiting for it (``wf_next``): its ack
    must release them."""
    return _mentions(meta, b'"wf_next"')


def _meta_says_isolate(meta: Any) -> bool:
    # Only a job whose meta mentions the key (one given back after a shared crash) pays for a
    # decode.
    if not _mentions(meta, b'"isolate"'):
        return False
    try:
        return json.loads(meta).get(ISOLATE_META_KEY) is True
    except (ValueError, AttributeError):
        return False


def _error_entry(attempt: int, text: str) -> str:
    at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return json.dumps({"attempt": attempt, "at": at, "error": text})
