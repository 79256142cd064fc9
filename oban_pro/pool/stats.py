"""What the pool reports for metrics: snapshots of its children and counters of its events."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ChildStats", "PoolStats", "RESTART_REASONS", "KILL_REASONS"]

#: Keys of :attr:`PoolStats.restarts`: why a child was replaced.
RESTART_REASONS = (
    "timeout", "crash", "memory", "recycle", "cancelled", "rescued", "start_failure",
)  # fmt: skip
#: Keys of :attr:`PoolStats.kills`: jobs the pool stopped, by why. "collateral" counts jobs
#: given back because their child was killed or died for (or with) other jobs.
KILL_REASONS = ("timeout", "cancel", "rescued", "memory", "collateral")


@dataclass(slots=True)
class ChildStats:
    """One live child, for metrics."""

    #: Small stable number (0..2*processes): the ``child`` metrics label (pids churn).
    slot: int
    pid: int
    state: str
    #: Jobs placed in it (running, or sent and about to start, or on deck behind another).
    jobs: int
    #: Of those, started sync jobs: threads busy.
    threads_busy: int
    rss: int


@dataclass(slots=True)
class PoolStats:
    """A snapshot for metrics, taken at scrape time (see :attr:`WorkerPool.stats`)."""

    #: Configured number of children.
    processes: int
    #: Children alive (ready or draining).
    ready: int
    #: Children running at least one job.
    busy: int
    #: Ready children running nothing.
    idle: int
    #: Children being started (replacements).
    starting: int
    #: Child restarts by reason (see :data:`RESTART_REASONS`).
    restarts: dict[str, int] = field(default_factory=dict)
    #: Last RSS (bytes) seen per live child pid.
    rss: dict[int, int] = field(default_factory=dict)
    #: Jobs that finished in a child (any outcome reported through ``on_done``).
    jobs_done: int = 0
    #: Jobs failed by the parent (crash, timeout, memory, cancelled).
    jobs_failed: int = 0
    #: Jobs given back without being charged (their child was killed or died with others).
    jobs_released: int = 0
    #: Jobs the pool stopped, by reason (see :data:`KILL_REASONS`).
    kills: dict[str, int] = field(default_factory=dict)
    #: Jobs waiting for a child (isolated jobs while every child is busy).
    waiting: int = 0
    #: Jobs on deck in a child, to begin when the isolated job ahead of them ends.
    on_deck: int = 0
    #: Seconds the last child took from launch to ready.
    last_start_seconds: float = 0.0
    #: Every live child.
    children: list[ChildStats] = field(default_factory=list)
