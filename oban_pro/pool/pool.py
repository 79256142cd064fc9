"""The worker pool: N child processes, each running many jobs at once, driven from the event loop.

This module decides what happens to *jobs*; the files beside it hold one concern each:
:mod:`.processes` (starting, reaping and replacing children), :mod:`.ledger` (which job is
where), :mod:`.placement` (which child a job goes to), :mod:`.deadlines` (timeouts and the kill
grace) and :mod:`.memory` (RSS limits).

What runs where is always known: a child reports when each job starts and ends. So:

- a cancel (pkill) first tells the job (its ``job.cancelled()`` turns True) and gives it
  ``cancel_grace`` seconds to return by itself;
- then, and at a timeout, the child is asked to stop that one job (its task is cancelled, its
  thread gets an exception); only if it has not stopped within ``kill_grace`` is the child
  killed, and the other jobs that were running in it are *given back* (``on_released``: back to
  available, attempt returned, never charged), with an error entry naming the job that caused
  the kill;
- when a child dies by itself, a job that was alone in it is charged (``on_failed(..., "crash")``,
  which counts toward the poison-job guard); when several were running, nobody knows which one
  did it, so each is given back and marked to run isolated next time;
- jobs sent to a child that never started there are placed again, elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from typing import Any

from .._aio import wait_event
from .child import read_rss
from .deadlines import Deadlines
from .ledger import Ledger, PoolJob
from .memory import MemoryWatch
from .messages import (
    Done,
    InstanceInfo,
    Interrupt,
    NotBegun,
    Ready,
    RequestCancel,
    Resize,
    Run,
    RunNext,
    Started,
    Withdraw,
    Withdrawn,
    decode_to_parent,
)
from .placement import Placement
from .processes import (
    DEAD,
    DRAINING,
    GONE,
    READY,
    STARTING,
    STOPPING,
    ChildProcess,
    PoolClosedError,
    PoolError,
    PoolStartError,
    Supervisor,
    describe_exit,
)
from .stats import KILL_REASONS, RESTART_REASONS, ChildStats, PoolStats

__all__ = [
    "WorkerPool",
    "PoolStats",
    "ChildStats",
    "PoolError",
    "PoolClosedError",
    "PoolStartError",
    "RESTART_REASONS",
    "KILL_REASONS",
    "default_threads",
]

log = logging.getLogger(__name__)

_MIB = 1024 * 1024
_KILL_OF_REASON = {"timeout": "timeout", "cancelled": "cancel", "rescued": "rescued"}


def default_threads(limits: Iterable[int]) -> int:
    """Threads per child when not configured: enough for every queue at its limit in one child.

    Threads start lazily (only as many as sync jobs run at once), so a generous cap costs
    nothing; it is what lets a sync, blocking queue at limit 50 run 50 jobs at once even when
    placement or isolation leaves most of them on one child.
    """
    return max(1, sum(limits))


class WorkerPool:
    """A pool of worker processes fed by the event loop; each child runs many jobs at once.

    Use from one event loop: ``await start()``, then ``submit``/``submit_many`` jobs (the pool
    itself never refuses one: limits are the dispatcher's business). Outcomes arrive through
    callbacks that run on the event loop and must not block:

    - ``on_done(run, done)``: the job ran to an outcome in its child;
    - ``on_failed(run, reason, text)``: the parent ended it; reason is "crash" (it was alone
      in a child that died), "memory" (alone in a child killed past the memory ceiling),
      "timeout", "cancelled" or "rescued" (see :meth:`stop_job`);
    - ``on_released(run, text, isolate)``: given back without being charged (its child was
      killed for another job, or died while it was not alone: then ``isolate`` is True);
    - ``on_started(run)``: the child reported that the job's code began.

    ``await stop(timeout)`` returns the runs of jobs that did not finish. ``instance`` (the
    node's database and instance name) lets job code use ``Oban.get_instance()`` in the
    children.
    """

    def __init__(
        self,
        processes: int,
        *,
        on_done: Callable[[Run, Done], None],
        on_failed: Callable[[Run, str, str], None],
        on_released: Callable[[Run, str, bool], None] | None = None,
        on_capacity: Callable[[], None] | None = None,
        on_restart: Callable[[str], None] | None = None,
        on_started: Callable[[Run], None] | None = None,
        ledger: Ledger | None = None,
        start_method: str = "forkserver",
        imports: Iterable[str] = (),
        threads: int = 64,
        max_jobs_per_child: int = 0,
        max_memory: int = 0,
        memory_ceiling: int = 0,
        memory_check_interval: float = 0.25,
        kill_grace: float = 3.0,
        cancel_grace: float = 1.0,
        start_timeout: float = 60.0,
        instance: InstanceInfo | None = None,
    ) -> None:
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.processes = processes
        self.max_jobs_per_child = max_jobs_per_child
        self.max_memory = max_memory
        self.ledger = ledger if ledger is not None else Ledger()
        self._on_done = on_done
        self._on_failed = on_failed
        self._on_released = on_released
        self._on_capacity = on_capacity
        self._on_restart = on_restart
        self._on_started = on_started
        self._supervisor = Supervisor(
            processes,
            start_method=start_method,
            imports=list(imports),
            threads=threads,
            start_timeout=start_timeout,
            on_frame=self._on_frame,
            on_exit=self._on_exit,
            on_restart=self._count_restart,
            instance=instance,
        )
        self._placement = Placement(lambda: self._supervisor.children)
        self._deadlines = Deadlines(
            kill_grace=kill_grace,
            on_timeout=self._on_timeout,
            on_grace_over=self._on_grace_over,
            cancel_grace=cancel_grace,
            on_cancel_grace_over=self._on_cancel_grace_over,
        )
        self._memory = MemoryWatch(
            max_memory=max_memory,
            ceiling=memory_ceiling,
            interval=memory_check_interval,
            children=lambda: self._supervisor.children,
            on_over=lambda child: self._drain(child, "memory"),
            on_ceiling=self._on_memory_ceiling,
        )
        self._restarts: Counter[str] = Counter()
        self._kills: Counter[str] = Counter()
        self._jobs_done = 0
        self._jobs_failed = 0
        self._jobs_released = 0
        self._import_errors_logged: set[str] = set()
        self._started = False
        self._closing = False
        self._changed: asyncio.Event | None = None  # set whenever a job or child settles
        self._withdrawn_on_stop: list[Run] = []  # on-deck jobs given back while stopping
        self._deadline = 0.0  # when stop() stops waiting for busy children

    @property
    def start_method(self) -> str:
        return self._supervisor.start_method

    @property
    def kill_grace(self) -> float:
        return self._deadlines.kill_grace

    @property
    def threads(self) -> int:
        """Threads each child may start for sync jobs."""
        return self._supervisor.threads

    def set_threads(self, threads: int) -> None:
        """Let every child (and every replacement) start up to ``threads`` threads."""
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self._supervisor.threads = threads
        for child in self._supervisor.children:
            child.send([Resize(threads)])

    # ================================================================ lifecycle

    async def start(self) -> None:
        """Start the children and wait until every one is ready.

        Raises :class:`PoolStartError` (after cleaning up) when a child cannot start.
        """
        if self._started:
            raise PoolError("the pool is already started")
        self._changed = asyncio.Event()
        self._started = True
        await self._supervisor.start()
        log.debug(
            "worker pool started: %d %s children in %.3f s",
            self.processes,
            self.start_method,
            self._supervisor.last_start,
        )

    async def stop(self, timeout: float = 15.0) -> list[Run]:
        """Stop every child; return the runs of jobs that did not finish.

        Idle children are told to stop at once; busy ones take no new jobs and get up to
        ``timeout`` seconds to finish (their results are still delivered through ``on_done``),
        then are killed. Every child process is reaped before this returns.
        """
        sup = self._supervisor
        if not self._started or self._closing:
            if self._closing:
                await sup.wait_reaped(10.0)
            return []
        self._closing = True
        sup.closing = True
        assert self._changed is not None
        unfinished = self._take_waiting()
        self._withdraw_from_decks(list(self.ledger))  # they have not begun: they go back
        # Launches in flight finish (they take milliseconds); their children are stopped below.
        await sup.wait_launches()
        for child in list(sup.children):
            if child.state is READY:
                child.state = DRAINING
            self._stop_if_idle(child)
        self._deadline = time.monotonic() + max(timeout, 0.0)
        while any(c.jobs for c in sup.children if c.alive or c.state is STOPPING):
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                break
            self._changed.clear()
            await wait_event(self._changed, remaining)
        for child in list(sup.children):
            if child.state in (DEAD, GONE) or not child.jobs:
                continue
            jobs = list(child.jobs.values())
            sup.kill(child)
            for job in jobs:
                if job.stop_reason is not None:
                    text = (
                        f"{job.stop_text}; the node stopped before it did, so its child "
                        f"process (pid {child.pid}) was killed"
                    )
                    self._fail(job, job.stop_reason, text)
                else:
                    self.ledger.remove(job.job_id)
                    unfinished.append(job.run)
        # Jobs placed again while we waited (their child died) never started again, nor did
        # the on-deck jobs their children gave back.
        unfinished.extend(self._take_waiting())
        unfinished.extend(self._withdrawn_on_stop)
        self._withdrawn_on_stop = []
        # Children told to stop exit within milliseconds; give them a moment, then kill.
        await sup.wait_reaped(3.0)
        for child in list(sup.children):
            sup.kill(child)
        await sup.wait_reaped(10.0)
        sup.cancel_replacements()
        self._memory.stop()
        sup.shutdown_executor()
        return unfinished

    def hurry(self) -> None:
        """Cut a running :meth:`stop` short: busy children are killed now."""
        self._deadline = 0.0
        if self._changed is not None:
            self._changed.set()

    def _take_waiting(self) -> list[Run]:
        runs = []
        for job in self._placement.take_all():
            self.ledger.remove(job.job_id)
            runs.append(job.run)
        return runs

    # ================================================================ inspection

    @property
    def size(self) -> int:
        """Children alive (at most ``processes`` plus draining ones being replaced)."""
        return sum(1 for c in self._supervisor.children if c.alive)

    @property
    def busy_count(self) -> int:
        """Children running at least one job."""
        return sum(1 for c in self._supervisor.children if c.jobs and c.alive)

    @property
    def idle_count(self) -> int:
        """Ready children running nothing."""
        return sum(1 for c in self._supervisor.children if c.state is READY and not c.jobs)

    @property
    def waiting(self) -> int:
        """Jobs waiting for a child (isolated ones while no child is empty)."""
        return len(self._placement)

    def waiting_in(self, queue: str) -> int:
        """Jobs of ``queue`` waiting for a child."""
        return self._placement.waiting_in(queue)

    def pids(self) -> list[int]:
        """Pids of the children alive now."""
        return [c.pid for c in self._supervisor.children if c.alive]

    def running_jobs(self) -> dict[int, int]:
        """Job id -> pid of the child holding it (running, or sent and about to start)."""
        return {job.job_id: job.child.pid for job in self.ledger if job.child is not None}

    def load(self) -> dict[int, int]:
        """Pid -> jobs placed in that child, for every live child."""
        return {c.pid: len(c.jobs) for c in self._supervisor.children if c.alive}

    @property
    def stats(self) -> PoolStats:
        """A snapshot of counts and gauges for metrics.

        Safe to call from another thread (a metrics scrape): it only reads, from copies.
        """
        children = list(self._supervisor.children)  # one atomic copy
        live = [c for c in children if c.alive]
        per_child = []
        for c in live:
            jobs = list(c.jobs.values())
            per_child.append(
                ChildStats(
                    slot=c.slot,
                    pid=c.pid,
                    state=c.state,
                    jobs=len(jobs),
                    threads_busy=sum(1 for j in jobs if j.started and j.thread),
                    rss=c.rss,
                )
            )
        return PoolStats(
            processes=self.processes,
            ready=len(live),
            busy=sum(1 for s in per_child if s.jobs),
            idle=sum(1 for c in live if c.state is READY and not c.jobs),
            starting=sum(1 for c in children if c.state is STARTING),
            restarts={reason: self._restarts.get(reason, 0) for reason in RESTART_REASONS},
            rss={s.pid: s.rss for s in per_child},
            jobs_done=self._jobs_done,
            jobs_failed=self._jobs_failed,
            jobs_released=self._jobs_released,
            kills={reason: self._kills.get(reason, 0) for reason in KILL_REASONS},
            waiting=len(self._placement),
            on_deck=self.ledger.on_deck,
            last_start_seconds=self._supervisor.last_start,
            children=per_child,
        )

    # ================================================================ dispatch

    def submit(self, run: Run, *, isolated: bool = False) -> None:
        """Send one job to the least-loaded child (see :meth:`submit_many`)."""
        self.submit_many((run,), isolated=(run.job_id,) if isolated else ())

    def submit_many(self, runs: Iterable[Run], *, isolated: Collection[int] = ()) -> None:
        """Place jobs on children, one frame per child.

        Jobs whose id is in ``isolated`` run alone in a child. Raises
        :class:`PoolClosedError` once stopping, and ``ValueError`` (before placing anything)
        when a job id is already in the pool.
        """
        if not self._started or self._closing:
            raise PoolClosedError("the worker pool is not running (never started, or stopping)")
        runs = list(runs)
        seen: set[int] = set()
        for run in runs:
            if run.job_id in self.ledger or run.job_id in seen:
                raise ValueError(f"job {run.job_id} is already running in this pool")
            seen.add(run.job_id)
        frames: dict[ChildProcess, list[Any]] = {}
        now = time.monotonic()
        placement = self._placement
        for run in runs:
            job = PoolJob(run, run.job_id in isolated, now)
            self.ledger.add(job)
            child = None if placement.has_waiting() else placement.choose(job)
            if child is None:
                placement.wait(job)
            else:
                self._place(job, child, frames)
        self._place_waiting(frames)
        self._send(frames)

    def _place(
        self, job: PoolJob, child: ChildProcess, frames: dict[ChildProcess, list[Any]]
    ) -> None:
        message: Run | RunNext = job.run
        behind = 0
        if job.isolated and child.jobs:  # on deck behind the isolated job running there
            (ahead,) = child.jobs.values()
            behind = ahead.job_id
            message = RunNext(behind, job.run)
        self.ledger.place(job, child, behind=behind)
        batch = frames.get(child)
        if batch is None:
            frames[child] = [message]
        else:
            batch.append(message)
        child.jobs_taken += 1
        if self.max_jobs_per_child and child.jobs_taken >= self.max_jobs_per_child:
            # It runs what it took, then is replaced: max_jobs_per_child counts jobs given
            # to a child, since a child runs many at once.
            self._drain(child, "recycle", place_waiting=False)

    def _place_waiting(self, frames: dict[ChildProcess, list[Any]] | None = None) -> None:
        """Place whatever waiting jobs the children can take now; a child left empty takes
        an on-deck job back from a busy one."""
        placement = self._placement
        if self._closing or not (placement.has_waiting() or self.ledger.on_deck):
            return
        own = frames is None
        frames = {} if frames is None else frames
        if placement.has_waiting():
            blocked: set[tuple[str, bool]] = set()
            while (found := placement.next_placeable(blocked)) is not None:
                self._place(found[0], found[1], frames)
            placement.release_reservations()
        if self.ledger.on_deck:
            self._withdraw_for_empty_children(frames)
        if own:
            self._send(frames)

    def _withdraw_for_empty_children(self, frames: dict[ChildProcess, list[Any]]) -> None:
        """An on-deck job waits for the job ahead of it, which may run for long: once a child
        is empty (nothing waiting could be placed on it), ask for one back to place it there."""
        children = self._supervisor.children
        empty = sum(1 for c in children if c.state is READY and not c.jobs)
        for child in children:
            for job in child.jobs.values():
                if empty and self._ask_back(job):
                    frames.setdefault(child, []).append(Withdraw(job.job_id))
                    empty -= 1

    def _withdraw_from_decks(self, jobs: Iterable[PoolJob]) -> None:
        """Ask for these jobs back if they are on deck (stopping, or their child drains)."""
        for job in jobs:
            if job.child is not None and self._ask_back(job):
                job.child.send([Withdraw(job.job_id)])

    def _ask_back(self, job: PoolJob) -> bool:
        """Whether a Withdraw is to be sent for ``job``: on deck and not asked back yet."""
        if not job.behind or job.withdrawing:
            return False
        job.withdrawing = True
        return True

    def _send(self, frames: dict[ChildProcess, list[Any]]) -> None:
        for child, batch in frames.items():
            child.send(batch)
        if frames:
            self._memory.watch()

    # ================================================================ stopping one job

    def stop_job(self, job_id: int, reason: str = "cancelled") -> bool:
        """Stop a job: first cooperatively, then by killing its child after the kill grace.

        ``reason`` ("cancelled", "rescued", ...) ends up in ``on_failed(run, reason, text)``.
        A "cancelled" job is told first (``job.cancelled()``) and gets the cancel grace to
        return by itself; a "rescued" one belongs to another node now and is stopped at once.
        Returns False when the job is not in the pool (or had already finished).
        """
        job = self.ledger.get(job_id)
        if job is None:
            return False
        if job.stop_reason is not None:
            if job.stop_reason == "timeout" and reason != "timeout":
                # A timeout's stop is withdrawn if the job had not begun (NotBegun); this one
                # must not be.
                self._ask_to_stop(job, reason, f"job was {reason}")
            return True  # already being stopped
        child = job.child
        if child is None:  # still waiting for a child
            self._placement.withdraw(job)
            self._placement.release_reservations()
            self._fail(job, reason, f"job was {reason} before it started")
            return True
        child.read_pending()  # a result already in the pipe wins over the stop
        if self.ledger.get(job_id) is not job:
            return False
        # An on-deck job has not begun: nothing to wait for, it comes off the deck at once.
        if reason == "cancelled" and self._deadlines.cancel_grace > 0 and not job.behind:
            self._tell_cancelled(job)
        else:
            self._ask_to_stop(job, reason, f"job was {reason}")
        return True

    def kill_job(self, job_id: int, reason: str = "cancelled") -> bool:
        """The pkill of a job (see :meth:`stop_job`)."""
        return self.stop_job(job_id, reason)

    def _tell_cancelled(self, job: PoolJob) -> None:
        """The first step of a cancel: the job sees ``job.cancelled()`` and may return."""
        assert job.child is not None
        job.stop_reason = "cancelled"
        job.stop_text = "job was cancelled"
        job.child.send([RequestCancel(job.job_id)])
        self._deadlines.cancel_requested(job)

    def _on_cancel_grace_over(self, job: PoolJob) -> None:
        child = job.child
        if child is None:
            return
        child.read_pending()  # it may have returned just now
        if self.ledger.get(job.job_id) is not job:
            return
        self._ask_to_stop(job, "cancelled", job.stop_text)

    def _ask_to_stop(self, job: PoolJob, reason: str, text: str) -> None:
        assert job.child is not None
        job.stop_reason = reason
        job.stop_text = text
        job.child.send([Interrupt(job.job_id, timeout=reason == "timeout")])
        self._deadlines.stop_requested(job)

    def _on_timeout(self, job: PoolJob) -> None:
        child = job.child
        if child is None:
            return
        child.read_pending()  # the job may have finished just now
        if self.ledger.get(job.job_id) is not job or job.stop_reason is not None:
            return
        if child.dying():
            # Its child is dead or dumping core and its pipe is not closed yet (a core dump
            # can hold it open for a second): the job is settled with the child's death. When
            # it died cannot be told, so the job is not charged a timeout it may never reach.
            return
        self._ask_to_stop(job, "timeout", f"job exceeded its timeout of {job.run.timeout:g} s")

    def _on_grace_over(self, job: PoolJob) -> None:
        child = job.child
        if child is None or not child.alive and child.state is not STOPPING:
            return
        child.read_pending()
        if self.ledger.get(job.job_id) is not job:
            return
        self._kill_child(child, job.stop_reason or "cancelled")
        given_back = sum(1 for j in child.jobs.values() if j.stop_reason is None and j.started)
        shared = f"job {job.job_id} ({job.run.worker}): {job.stop_text} and did not stop"
        for other in list(child.jobs.values()):
            if other.stop_reason is not None:
                self._fail(other, other.stop_reason, self._killed_text(other, child))
            elif other.started:
                self._release(
                    other,
                    f"given back without being charged: its child process (pid {child.pid}) "
                    f"was killed because {shared} within the kill grace of "
                    f"{self.kill_grace:g} s",
                    isolate=False,
                )
            else:
                self._place_again(other)
        log.warning(
            "killed worker process %d: %s (%d other jobs given back)",
            child.pid,
            shared,
            given_back,
        )
        self._settled()

    def _killed_text(self, job: PoolJob, child: ChildProcess) -> str:
        return (
            f"{job.stop_text}; it did not stop within the kill grace of {self.kill_grace:g} s, "
            f"so its child process (pid {child.pid}) was killed"
        )

    # ================================================================ messages

    def _on_frame(self, child: ChildProcess, payload: bytes) -> None:
        if child.state in (DEAD, GONE):
            return  # already settled; whatever it said last is stale
        try:
            messages = decode_to_parent(payload)
        except Exception as exc:  # noqa: BLE001 - a corrupt stream: that child is unusable
            log.error("worker process %d sent an undecodable frame: %s", child.pid, exc)
            self._kill_child(child, "crash")
            self._settle_lost_jobs(
                child, "crash", f"sent an undecodable message ({exc}) and was killed"
            )
            self._settled()
            return
        for message in messages:
            if isinstance(message, Started):
                job = child.jobs.get(message.job_id)
                if job is not None:
                    self.ledger.off_deck(job)  # an on-deck job's turn came (Withdraw is moot)
                    job.started = True
                    job.thread = message.thread
                    self._deadlines.job_started(job)
                    if self._on_started is not None:
                        self._call(self._on_started, job.run)
            elif isinstance(message, Done):
                self._on_job_done(child, message)
            elif isinstance(message, NotBegun):
                self._on_not_begun(child, message.job_id)
            elif isinstance(message, Withdrawn):
                self._on_withdrawn(child, message.job_id)
            elif isinstance(message, Ready):
                self._on_ready(child, message)

    def _on_not_begun(self, child: ChildProcess, job_id: int) -> None:
        """The job's timeout ran out while it waited for a thread in its child: it has not
        run yet, so its stop is withdrawn and its timeout starts again."""
        job = child.jobs.get(job_id)
        if job is None or job.stop_reason != "timeout":
            return
        log.debug("job %d waits for a thread in worker process %d; its timeout starts again",
                  job_id, child.pid)  # fmt: skip
        job.stop_reason = None
        job.stop_text = ""
        self._deadlines.cancel(job)
        self._deadlines.job_started(job)

    def _on_withdrawn(self, child: ChildProcess, job_id: int) -> None:
        """An on-deck job came back unbegun: place it again (or hand it back, stopping)."""
        job = child.jobs.get(job_id)
        if job is None or job.started or not job.behind:
            return
        self.ledger.off_deck(job)
        if job.stop_reason is not None:  # stopped while it came back: it ends here
            self._fail(job, job.stop_reason, f"{job.stop_text} before it started")
        elif self._closing:
            self.ledger.remove(job_id)
            self._withdrawn_on_stop.append(job.run)
        else:
            self._place_again(job)
        self._settled()

    def _on_ready(self, child: ChildProcess, ready: Ready) -> None:
        child.import_errors = dict(ready.import_errors)
        for module, text in ready.import_errors.items():
            if module not in self._import_errors_logged:
                self._import_errors_logged.add(module)
                log.error(
                    "worker module %r failed to import in the worker processes (pid %d): %s; "
                    "its jobs will fail until it is fixed",
                    module,
                    ready.pid,
                    text,
                )
        self._supervisor.child_ready(child)
        child.rss = read_rss(child.pid)
        if not child.initial and child.state is READY:
            self._place_waiting()
            if self._on_capacity is not None:
                self._call(self._on_capacity)

    def _on_job_done(self, child: ChildProcess, done: Done) -> None:
        job = child.jobs.get(done.job_id)
        if job is None:
            log.warning("child %d reported job %d it was not running", child.pid, done.job_id)
            return
        self.ledger.remove(done.job_id)
        child.rss = done.rss
        child.jobs_done += 1
        if job.stop_reason is not None and done.kind in ("interrupted", "error"):
            self._count_failure(job.stop_reason)
            self._call(self._on_failed, job.run, job.stop_reason, job.stop_text)
        else:
            if done.kind == "interrupted":  # never expected without a stop request
                done = Done(done.job_id, "error", error="job was interrupted", rss=done.rss)
            self._jobs_done += 1
            self._call(self._on_done, job.run, done)
        if child.state is READY and self.max_memory and done.rss > self.max_memory:
            self._drain(child, "memory")
        self._stop_if_idle(child)
        self._settled()

    def _call(self, callback: Callable[..., Any], *args: Any) -> None:
        try:
            callback(*args)
        except Exception:  # noqa: BLE001 - a callback bug must not break the pool
            log.exception("worker pool callback %r raised", callback)

    # ================================================================ outcomes decided here

    def _count_failure(self, reason: str) -> None:
        self._jobs_failed += 1
        kill = _KILL_OF_REASON.get(reason) or ("memory" if reason == "memory" else None)
        if kill is not None:
            self._kills[kill] += 1

    def _fail(self, job: PoolJob, reason: str, text: str) -> None:
        self.ledger.remove(job.job_id)
        self._count_failure(reason)
        self._call(self._on_failed, job.run, reason, text)

    def _release(self, job: PoolJob, text: str, *, isolate: bool) -> None:
        self.ledger.remove(job.job_id)
        self._jobs_released += 1
        self._kills["collateral"] += 1
        if self._on_released is not None:
            self._call(self._on_released, job.run, text, isolate)
        else:  # nobody to give it back to: report it as a failure rather than lose it
            self._call(self._on_failed, job.run, "crash", text)

    def _place_again(self, job: PoolJob) -> None:
        """A job sent to a child that is gone, before it started there."""
        self.ledger.unplace(job)
        self._deadlines.cancel(job)
        self._placement.wait(job, first=True)

    def _settled(self) -> None:
        self._place_waiting()
        if self._changed is not None:
            self._changed.set()

    # ================================================================ recycling and memory

    def _drain(self, child: ChildProcess, reason: str, *, place_waiting: bool = True) -> None:
        """Take no more jobs; stop once idle; start the replacement now."""
        if child.state is not READY:
            return
        child.state = DRAINING
        child.drain_reason = reason
        self._withdraw_from_decks(list(child.jobs.values()))  # for the replacement to run
        self._count_restart(reason)
        log.info(
            "recycling worker process %d (%s) after taking %d jobs; it finishes its %d "
            "running jobs",
            child.pid,
            reason,
            child.jobs_taken,
            len(child.jobs),
        )
        self._supervisor.replace()
        if place_waiting:
            self._place_waiting()

    def _stop_if_idle(self, child: ChildProcess) -> None:
        if child.jobs:
            return
        if child.state is DRAINING or (self._closing and child.state in (READY, STARTING)):
            self._supervisor.ask_to_stop(child)

    def _on_memory_ceiling(self, child: ChildProcess) -> None:
        watch = self._memory
        how = (
            f"exceeded max_memory: RSS {child.rss / _MIB:.1f} MiB > limit "
            f"{watch.max_memory / _MIB:.1f} MiB, and grew past the ceiling of "
            f"{watch.ceiling / _MIB:.1f} MiB; it was killed"
        )
        log.warning("worker process %d %s", child.pid, how)
        self._kill_child(child, "memory")
        self._settle_lost_jobs(child, "memory", how)
        self._settled()

    # ================================================================ killing and dying

    def _kill_child(self, child: ChildProcess, restart_reason: str) -> None:
        """SIGKILL a child (its jobs stay on it for the caller to settle); refill the pool."""
        was = child.state
        self._supervisor.kill(child)
        if was is READY:  # a draining child's replacement was started (and counted) already
            self._count_restart(restart_reason)
            self._supervisor.replace()

    def _count_restart(self, reason: str) -> None:
        self._restarts[reason] += 1
        if self._on_restart is not None:
            self._call(self._on_restart, reason)

    def _settle_lost_jobs(self, child: ChildProcess, reason: str, how: str) -> None:
        """Decide the fate of the jobs of a child that died (or was killed for itself).

        Jobs that never started go to another child. A job alone in the child is charged
        (``reason`` counts toward the poison guard); when several ran, none is charged and
        each runs isolated next time. A job being stopped (timeout, cancel, rescue) fails for
        that reason: its timeout ran out while its child was alive (see :meth:`_on_timeout`).
        """
        jobs = list(child.jobs.values())
        started = [j for j in jobs if j.started]
        rss = f"last RSS {child.rss / _MIB:.1f} MiB"
        for job in jobs:
            if not job.started and job.stop_reason is None:
                self._place_again(job)
            elif job.stop_reason is not None:
                self._fail(job, job.stop_reason, f"{job.stop_text}; its child process "
                           f"(pid {child.pid}) {how}")  # fmt: skip
            elif len(started) == 1:
                if reason == "memory":
                    text = f"child process (pid {child.pid}) {how}"
                else:
                    text = (
                        f"child process (pid {child.pid}) died while running the job: {how}; {rss}"
                    )
                self._fail(job, reason, text)
            else:
                ids = [str(j.job_id) for j in started if j is not job]
                others = ", ".join(ids[:10]) + (
                    f" and {len(ids) - 10} more" if len(ids) > 10 else ""
                )
                self._release(
                    job,
                    f"child process (pid {child.pid}) {how} while running {len(started)} jobs "
                    f"(this one and {others}); {rss}. Which job caused it is not known, so this "
                    f"one was given back without being charged and runs isolated next time",
                    isolate=True,
                )

    def _on_exit(self, child: ChildProcess, code: int | None, was: str) -> None:
        how = describe_exit(code)
        if was in (READY, DRAINING, STOPPING):
            if child.jobs:
                log.error(
                    "worker process %d died running %d jobs: %s", child.pid, len(child.jobs), how
                )
                self._count_restart("crash")
                self._settle_lost_jobs(child, "crash", how)
            elif was is not STOPPING:
                self._count_restart("crash")
                log.error("idle worker process %d died: %s", child.pid, how)
            if was is READY:
                self._supervisor.replace()  # a draining child's one already started
        self._settled()
