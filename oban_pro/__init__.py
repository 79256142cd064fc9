"""oban_pro: an Oban-compatible PostgreSQL job engine that runs jobs on worker processes.

Public names keep Oban.py's shapes, so code written for Oban.py runs after changing its imports::

    from oban_pro import Oban, worker

    @worker(queue="default")
    class Hello:
        def process(self, job):
            print("hello", job.args)

    async with Oban(queues={"default": 10}) as oban:
        await oban.enqueue(Hello.new({"name": "world"}))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import Config, load_config
from .errors import (
    ConfigError,
    InvalidPrefixError,
    MigrationError,
    ObanError,
    SchemaNotReadyError,
    UnknownWorkerError,
    ValidationError,
)
from .job import Cancel, Job, JobState, Record, Snooze, current_job
from .worker import Worker, job, worker

if TYPE_CHECKING:
    from .client import Client
    from .oban import Oban, QueueInfo


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("oban-pro")
    except PackageNotFoundError:  # running from a source tree
        return "0+unknown"


__version__ = _version()

__all__ = [
    "Cancel",
    "Client",
    "Config",
    "ConfigError",
    "InvalidPrefixError",
    "Job",
    "JobState",
    "MigrationError",
    "Oban",
    "ObanError",
    "QueueInfo",
    "SchemaNotReadyError",
    "Record",
    "Snooze",
    "UnknownWorkerError",
    "ValidationError",
    "Worker",
    "current_job",
    "job",
    "load_config",
    "migrate",
    "worker",
]


def __getattr__(name: str) -> Any:
    # Imported lazily: child processes import oban_pro for Job/worker without the runtime.
    if name == "Oban":
        from .oban import Oban

        return Oban
    if name == "QueueInfo":
        from .oban import QueueInfo

        return QueueInfo
    if name == "Client":
        from .client import Client

        return Client
    if name == "migrate":
        from .migrations import migrate_up

        return migrate_up
    raise AttributeError(f"module 'oban_pro' has no attribute {name!r}")
