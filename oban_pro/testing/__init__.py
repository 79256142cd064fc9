"""Helpers for testing applications that use oban_pro: Oban.py's ``oban.testing``, and more.

Oban.py's names, with its call shapes and behaviour:

- :func:`process_job` runs one job's worker here, without the database, and returns what it
  returned (``await process_job(job)`` inside an async test).
- :func:`mode` switches the testing mode: ``"inline"`` runs enqueued jobs at once, here;
  ``"manual"`` (the default) inserts them.
- :func:`assert_enqueued`, :func:`refute_enqueued`, :func:`all_enqueued` (async) look at
  waiting jobs of the instance named ``oban`` ("Oban"), optionally waiting ``timeout`` seconds.
- :func:`drain_queue` (async) runs a queue's jobs here through the real fetch and ack path,
  with ``with_recursion``, ``with_safety`` and ``with_scheduled``.
- :func:`reset_oban` empties the job tables.

oban_pro's own: :func:`perform_job` (the outcome of one job, never raising), and a DSN-first
form of the assertions and of :func:`drain_queue` that needs no instance. Fixtures for a real,
migrated database come from the pytest plugin (:mod:`oban_pro.pytest_plugin`).
"""

from __future__ import annotations

from .drain import FAR_FUTURE, drain_queue
from .enqueued import (
    SCHEDULED_IN_DELTA,
    all_enqueued,
    assert_enqueued,
    refute_enqueued,
    reset_oban,
)
from .mode import mode
from .process import perform_job, process_job

__all__ = [
    "FAR_FUTURE",
    "SCHEDULED_IN_DELTA",
    "all_enqueued",
    "assert_enqueued",
    "drain_queue",
    "mode",
    "perform_job",
    "process_job",
    "refute_enqueued",
    "reset_oban",
]
