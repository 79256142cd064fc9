"""The ledger of the jobs in the worker pool: which job is where, and what it is doing.

It is the node's only record of running jobs. The pool writes it (a job is added when it is
submitted, placed on a child, marked started when the child says so, removed when its outcome
is known); the dispatcher reads it for the queues' limits (:meth:`Ledger.count`) and for the
list of running jobs that heartbeats and rescues need. Every index (by id, by queue, by child)
is updated in the same method, so they cannot disagree.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .messages import Run

if TYPE_CHECKING:
    from .processes import ChildProcess

__all__ = ["Ledger", "PoolJob"]


@dataclass(slots=True, eq=False)
class PoolJob:
    """One job submitted to the pool, from submission until its outcome is reported."""

    run: Run
    #: Runs alone in its child (nothing else is placed there meanwhile).
    isolated: bool
    #: Monotonic time the job was submitted (killed jobs' duration is counted from it).
    submitted: float
    #: The child it was sent to; None while it waits for a child (an isolated job).
    child: ChildProcess | None = None
    #: The child reported that the job's code began.
    started: bool = False
    #: On deck in its child: it starts there the moment job ``behind`` ends (0: not on deck).
    behind: int = 0
    #: The parent asked its child to give it back from the deck (:class:`~.messages.Withdraw`).
    withdrawing: bool = False
    #: It runs on one of the child's threads (sync), not as a task.
    thread: bool = False
    #: Why the parent asked it to stop ("timeout", "cancelled", "rescued"), once it did.
    stop_reason: str | None = None
    #: The error text the job gets if it stops (or must be killed) for that reason.
    stop_text: str = ""
    #: The armed timeout or kill-grace timer, if any.
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    @property
    def job_id(self) -> int:
        return self.run.job_id


class Ledger:
    """Jobs of the pool by id, with their count per queue and their set per child."""

    def __init__(self) -> None:
        self._jobs: dict[int, PoolJob] = {}
        self._per_queue: dict[str, int] = {}
        #: Jobs on deck in a child (see :attr:`PoolJob.behind`).
        self.on_deck = 0

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def __iter__(self) -> Iterator[PoolJob]:
        return iter(list(self._jobs.values()))

    def get(self, job_id: int) -> PoolJob | None:
        return self._jobs.get(job_id)

    def count(self, queue: str) -> int:
        """Jobs of ``queue`` in the pool (waiting for a child, or in one)."""
        return self._per_queue.get(queue, 0)

    def job_ids(self, queue: str | None = None) -> list[int]:
        if queue is None:
            return list(self._jobs)
        return [j for j, job in self._jobs.items() if job.run.queue == queue]

    def add(self, job: PoolJob) -> None:
        if job.job_id in self._jobs:
            raise ValueError(f"job {job.job_id} is already in the pool")
        self._jobs[job.job_id] = job
        queue = job.run.queue
        self._per_queue[queue] = self._per_queue.get(queue, 0) + 1

    def place(self, job: PoolJob, child: ChildProcess, *, behind: int = 0) -> None:
        """Put ``job`` in ``child`` (``behind``: on deck, to start when that job ends)."""
        job.child = child
        child.jobs[job.job_id] = job
        if job.isolated:
            child.isolated = True
        if behind:
            job.behind = behind
            self.on_deck += 1

    def off_deck(self, job: PoolJob) -> None:
        """``job`` is no longer on deck (it started, came back, or left its child)."""
        if job.behind:
            job.behind = 0
            job.withdrawing = False
            self.on_deck -= 1

    def unplace(self, job: PoolJob) -> None:
        """Take the job off its child (it goes back to waiting for one)."""
        child = job.child
        if child is not None:
            child.jobs.pop(job.job_id, None)
            if job.isolated:  # an isolated job on deck behind it keeps the child isolated
                child.isolated = any(j.isolated for j in child.jobs.values())
        job.child = None
        job.started = False
        job.thread = False
        self.off_deck(job)

    def remove(self, job_id: int) -> PoolJob | None:
        job = self._jobs.pop(job_id, None)
        if job is None:
            return None
        self.unplace(job)
        queue = job.run.queue
        left = self._per_queue.get(queue, 1) - 1
        if left:
            self._per_queue[queue] = left
        else:
            self._per_queue.pop(queue, None)
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None
        return job
