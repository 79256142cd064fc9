"""Workers for the Oban.py compatibility tests, written the way Oban.py's docs write them.

Child processes import this module by name (``compat.compat_workers``); the tests' ``tests/``
folder is on their PYTHONPATH.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from oban_pro import Record, current_job, job, worker


@worker(queue="default", max_attempts=3, tags=["Compat", " compat ", "API"])
class WhoAmI:
    """Records what ``current_job()`` says inside the child, next to the job it was given."""

    async def process(self, job):
        seen = current_job()
        return Record(
            {
                "same": seen is job,
                "id": seen.id if seen else None,
                "attempt": seen.attempt if seen else None,
                "extra": dict(job.extra),
                "cancelled": job.cancelled(),
            }
        )


@worker(queue="default")
class SyncWhoAmI:
    def process(self, job):
        seen = current_job()
        return Record({"same": seen is job, "id": seen.id if seen else None})


@job(queue="default")
def greet(name, punctuation="!"):
    """A function worker: it gets no ``job`` argument, so it asks ``current_job()``."""
    running = current_job()
    return Record({"text": f"hello {name}{punctuation}", "id": running.id if running else None})


@worker(queue="default")
class WaitForFile:
    """Runs until the file named by ``args["path"]`` exists (or 60 s pass)."""

    async def process(self, job):
        path = Path(job.args["path"])
        for _ in range(6000):
            if path.exists():
                return None
            await asyncio.sleep(0.01)
        raise TimeoutError(f"{path} never appeared")


@worker(queue="default")
class Touch:
    def process(self, job):
        Path(job.args["path"]).write_text(str(os.getpid()))
