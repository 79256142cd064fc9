"""The worker-process pool: children that run jobs, fed by the coordinator's event loop.

``WorkerPool`` is the parent side; :mod:`.child` runs in every worker process; they talk in
:mod:`.messages` over the length-prefixed pipes of :mod:`.framing`.
"""

from .messages import Done, Ready, Run, Skip, Stop
from .pool import (
    RESTART_REASONS,
    PoolClosedError,
    PoolError,
    PoolFullError,
    PoolStartError,
    PoolStats,
    WorkerPool,
)

__all__ = [
    "WorkerPool",
    "PoolStats",
    "PoolError",
    "PoolFullError",
    "PoolClosedError",
    "PoolStartError",
    "RESTART_REASONS",
    "Run",
    "Done",
    "Ready",
    "Stop",
    "Skip",
]
