"""Oban.py's job events, emitted by the coordinator.

- ``oban.job.start`` when a child reports that a job's code began (``job``, ``monotonic_time``);
- ``oban.job.stop`` once its outcome is written, or ``oban.job.exception`` when that outcome
  is a failed attempt (state ``retryable`` or ``discarded``), with ``job``, ``monotonic_time``,
  ``duration`` and ``queue_time`` (nanoseconds), ``state`` (what the ack statement decided:
  ``completed``, ``cancelled``, ``scheduled`` for a snooze, ``retryable``, ``discarded``) and,
  for exceptions, ``error_type``, ``error_message`` and ``traceback``.

Oban.py emits them inside the process that runs the job; here jobs run in worker processes and
handlers run in the coordinator, so the events follow the child's reports and the written acks.
Every event also carries ``queue`` and ``worker`` (so a subscriber need not touch the job) and
the instance's ``name`` and ``node`` (handlers are process-wide; a subscriber of one node tells
its events apart by them).

Cost: nothing is built unless a handler listens (:func:`~oban_pro.telemetry.listening`), and
the ``job`` given to handlers is an :class:`EventJob`, whose args, meta, errors and timestamps
are decoded only if a handler reads them: the coordinator never decodes job args on its own.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..job import Job
from ..telemetry import execute, listening

if TYPE_CHECKING:
    from ..pool.messages import Run
    from .acker import Ack

__all__ = ["JOB_START", "JOB_STOP", "JOB_EXCEPTION", "EventJob", "JobEvents"]

JOB_START = "oban.job.start"
JOB_STOP = "oban.job.stop"
JOB_EXCEPTION = "oban.job.exception"

#: States that end an attempt as a failure: reported as ``oban.job.exception`` (as Oban.py).
FAILED_STATES = frozenset({"retryable", "discarded"})

_NS = 1_000_000_000


class EventJob(Job):
    """The ``job`` of a job event: a :class:`~oban_pro.job.Job` whose cheap fields (``id``,
    ``worker``, ``queue``, ``attempt``, ``max_attempts``, ``state``) are set at once and whose
    other fields are built from the job's :class:`~oban_pro.pool.messages.Run` on first use.

    Building a whole Job costs ~7 us (JSON decoding, timestamps), more than the coordinator's
    budget per job, for fields a handler such as the metrics never reads.
    """

    __slots__ = ("_run",)
    _run: Run

    @classmethod
    def of(cls, run: Run, state: str) -> EventJob:
        job = object.__new__(cls)
        job._run = run
        job.id = run.job_id
        job.worker = run.worker
        job.queue = run.queue
        job.attempt = run.attempt
        job.max_attempts = run.max_attempts
        job.state = state
        return job

    def __getattr__(self, name: str) -> Any:
        # Only reached for an attribute not set yet (a slot left empty by ``of``): build the
        # rest of the job once, then answer normally.
        if name.startswith("__") or name == "_run":
            raise AttributeError(name)
        from ..runner import job_from_run  # here: the runner imports the pool, which imports us

        full = job_from_run(object.__getattribute__(self, "_run"), self.state)
        for slot in Job.__slots__:
            try:
                object.__getattribute__(self, slot)
            except AttributeError:
                object.__setattr__(self, slot, getattr(full, slot))
        return object.__getattribute__(self, name)


class JobEvents:
    """Emits the job events of one instance (``name``, ``node``)."""

    def __init__(self, name: str, node: str) -> None:
        self.name = name
        self.node = node

    def started(self, run: Run) -> None:
        """A child reported that ``run``'s code began."""
        if not listening(JOB_START):
            return
        execute(
            JOB_START,
            {
                "job": EventJob.of(run, "executing"),
                "monotonic_time": time.monotonic_ns(),
                "queue": run.queue,
                "worker": run.worker,
                "name": self.name,
                "node": self.node,
            },
        )

    def finished(self, ack: Ack, state: str) -> None:
        """``ack``'s outcome was written; the job is now in ``state``."""
        failed = state in FAILED_STATES
        event = JOB_EXCEPTION if failed else JOB_STOP
        if not listening(event) or ack.run is None:
            return
        meta: dict[str, Any] = {
            "job": EventJob.of(ack.run, state),
            "monotonic_time": time.monotonic_ns(),
            "duration": int(ack.duration * _NS),
            "queue_time": int(max(0.0, ack.wait) * _NS),
            "state": state,
            "queue": ack.queue,
            "worker": ack.worker,
            "name": self.name,
            "node": self.node,
        }
        if failed:
            text = ack.text or ""
            meta["error_type"] = ack.error_type or "Exception"
            meta["error_message"] = ack.error_message or _last_line(text)
            meta["traceback"] = text
        execute(event, meta)


def _last_line(text: str) -> str:
    stripped = text.strip()
    return stripped.splitlines()[-1] if stripped else ""
