"""Placement: which child a job goes to, and the jobs that wait for one.

A job goes to the least-loaded child that takes jobs, so while a node runs no more jobs than it
has processes every job has a process to itself. An isolated job needs a child with nothing
else in it; when none is empty it may go *on deck* in a child that runs one isolated job (it
starts there the moment that job ends, without waiting for the parent: the pool takes it back
if another child empties first); otherwise one child is *reserved* (it gets no new jobs) until
its jobs are done. Jobs that cannot be placed wait, one line per queue (and one for its
isolated jobs, so that regular jobs are not held up while a child empties), and the lines are
served in turn so that one queue's backlog does not delay another's jobs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from .ledger import PoolJob
from .processes import READY, ChildProcess

__all__ = ["Placement"]


class Placement:
    def __init__(self, children: Callable[[], list[ChildProcess]]) -> None:
        self._children = children
        self._lines: dict[tuple[str, bool], deque[PoolJob]] = {}
        # (queue, isolated) of the lines with waiting jobs, in serving order
        self._turn: deque[tuple[str, bool]] = deque()

    def __len__(self) -> int:
        return sum(len(line) for line in self._lines.values())

    def choose(self, job: PoolJob) -> ChildProcess | None:
        """The child ``job`` should go to now, or None if it must wait."""
        if job.isolated:
            empty = [c for c in self._children() if c.state is READY and not c.jobs]
            if not empty:
                return self._deck_for(job)
            # A child kept empty for an isolated job is the one to take.
            return next((c for c in empty if c.reserved), empty[0])
        best: ChildProcess | None = None
        for child in self._children():
            if child.open_to_jobs and (best is None or len(child.jobs) < len(best.jobs)):
                best = child
                if not child.jobs:
                    break
        return best

    def _deck_for(self, job: PoolJob) -> ChildProcess | None:
        """A child whose only job is an isolated one, still running, with nobody on deck."""
        for child in self._children():
            if child.state is READY and child.isolated and len(child.jobs) == 1:
                (ahead,) = child.jobs.values()
                if ahead.isolated and ahead.stop_reason is None:
                    return child
        return None

    def has_waiting(self) -> bool:
        return bool(self._turn)

    def waiting_in(self, queue: str) -> int:
        """Jobs of ``queue`` waiting for a child."""
        return len(self._lines.get((queue, False), ())) + len(self._lines.get((queue, True), ()))

    def wait(self, job: PoolJob, *, first: bool = False) -> None:
        """Queue ``job`` until a child can take it (``first``: ahead of its queue's line)."""
        key = (job.run.queue, job.isolated)
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = deque()
        if not line:
            self._turn.append(key)
        if first:
            line.appendleft(job)
        else:
            line.append(job)

    def withdraw(self, job: PoolJob) -> bool:
        """Take a waiting job out of its line; False if it was not waiting."""
        key = (job.run.queue, job.isolated)
        line = self._lines.get(key)
        if not line or job not in line:
            return False
        line.remove(job)
        if not line:
            self._drop(key)
        return True

    def take_all(self) -> list[PoolJob]:
        """Every waiting job (the pool is stopping)."""
        jobs = [job for key in self._turn for job in self._lines[key]]
        self._lines.clear()
        self._turn.clear()
        return jobs

    def next_placeable(self, blocked: set[tuple[str, bool]]) -> tuple[PoolJob, ChildProcess] | None:
        """The next waiting job that a child can take now, or None.

        Lines whose first job cannot be placed are added to ``blocked`` (a job never passes
        the one ahead of it in its line); an isolated job that cannot be placed reserves the
        least-loaded child so that child empties for it.
        """
        for _ in range(len(self._turn)):
            key = self._turn[0]
            self._turn.rotate(-1)
            if key in blocked:
                continue
            line = self._lines[key]
            job = line[0]
            child = self.choose(job)
            if child is None:
                blocked.add(key)
                if job.isolated:
                    self._reserve()
                continue
            line.popleft()
            if not line:
                self._drop(key)
            if job.isolated:
                child.reserved = False
            return job, child
        return None

    def release_reservations(self) -> None:
        """Forget reservations whose isolated job no longer waits."""
        if any(j.isolated for line in self._lines.values() for j in line):
            return
        for child in self._children():
            child.reserved = False

    def _reserve(self) -> None:
        candidates = [c for c in self._children() if c.state is READY and not c.isolated]
        if not candidates or any(c.reserved for c in candidates):
            return  # one child drains for isolated jobs at a time; it serves them in turn
        min(candidates, key=lambda c: len(c.jobs)).reserved = True

    def _drop(self, key: tuple[str, bool]) -> None:
        del self._lines[key]
        try:
            self._turn.remove(key)
        except ValueError:
            pass
