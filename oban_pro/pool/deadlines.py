"""Deadlines: a job's timeout, the grace a cancelled job gets to notice it, and the grace a job
asked to stop gets before its child is killed.

All are one timer per job (:attr:`~.ledger.PoolJob.timer`): the timeout is armed when the child
reports the job started; when it fires the pool asks the child to stop the job cooperatively and
the timer becomes the kill grace. A cancel (pkill) first only tells the job
(``job.cancelled()``) and arms the cancel grace; when that passes, the job is asked to stop as
for a timeout. A job that ends cancels its timer through the ledger.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .ledger import PoolJob

__all__ = ["Deadlines"]


class Deadlines:
    def __init__(
        self,
        *,
        kill_grace: float,
        on_timeout: Callable[[PoolJob], None],
        on_grace_over: Callable[[PoolJob], None],
        cancel_grace: float = 0.0,
        on_cancel_grace_over: Callable[[PoolJob], None] | None = None,
    ) -> None:
        self.kill_grace = kill_grace
        self.cancel_grace = cancel_grace
        self._on_timeout = on_timeout
        self._on_grace_over = on_grace_over
        self._on_cancel_grace_over = on_cancel_grace_over

    def job_started(self, job: PoolJob) -> None:
        if job.run.timeout > 0 and job.stop_reason is None and job.timer is None:
            loop = asyncio.get_running_loop()
            job.timer = loop.call_later(job.run.timeout, self._fire_timeout, job)

    def cancel_requested(self, job: PoolJob) -> None:
        """Start the cancel grace of a job told it is cancelled (replaces its timeout)."""
        self.cancel(job)
        loop = asyncio.get_running_loop()
        job.timer = loop.call_later(self.cancel_grace, self._fire_cancel_grace, job)

    def stop_requested(self, job: PoolJob) -> None:
        """Start the kill grace of a job asked to stop (replaces its timeout)."""
        self.cancel(job)
        loop = asyncio.get_running_loop()
        job.timer = loop.call_later(self.kill_grace, self._fire_grace, job)

    def cancel(self, job: PoolJob) -> None:
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None

    def _fire_timeout(self, job: PoolJob) -> None:
        job.timer = None
        self._on_timeout(job)

    def _fire_cancel_grace(self, job: PoolJob) -> None:
        job.timer = None
        if self._on_cancel_grace_over is not None:
            self._on_cancel_grace_over(job)

    def _fire_grace(self, job: PoolJob) -> None:
        job.timer = None
        self._on_grace_over(job)
