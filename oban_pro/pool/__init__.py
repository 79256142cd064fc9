"""The worker-process pool: children that each run many jobs at once, fed by the event loop.

``WorkerPool`` is the parent side (:mod:`.pool`, with :mod:`.processes`, :mod:`.ledger`,
:mod:`.placement`, :mod:`.deadlines` and :mod:`.memory`); :mod:`.child` runs in every worker
process; they talk in :mod:`.messages` over the length-prefixed pipes of :mod:`.framing`.
"""

from .ledger import Ledger, PoolJob
from .messages import Done, Interrupt, Ready, Run, Started, Stop
from .pool import (
    KILL_REASONS,
    RESTART_REASONS,
    ChildStats,
    PoolClosedError,
    PoolError,
    PoolStartError,
    PoolStats,
    WorkerPool,
    default_threads,
)

__all__ = [
    "WorkerPool",
    "PoolStats",
    "ChildStats",
    "PoolError",
    "PoolClosedError",
    "PoolStartError",
    "RESTART_REASONS",
    "KILL_REASONS",
    "Ledger",
    "PoolJob",
    "default_threads",
    "Run",
    "Done",
    "Ready",
    "Started",
    "Stop",
    "Interrupt",
]
