"""What happens once a job's outcome is written: its telemetry event and its log line.

Subscribed to the acker's ``on_written``, so both use the state the ack statement decided
(``RETURNING``): a job discarded by the poison-job guard or at its last attempt is reported as
discarded, never as retryable, and an ack fenced out (the job was rescued) is not reported.
The events (``oban.job.stop`` / ``oban.job.exception``, :mod:`.job_events`) are what the
Prometheus metrics and the JSON logger subscribe to.
"""

from __future__ import annotations

import logging
from typing import Protocol

from .acker import Ack
from .job_events import JobEvents

__all__ = ["JobOutcomes", "OutcomeRecorder"]

log = logging.getLogger(__name__)

#: Ack kinds that end an attempt (a release gives the attempt back: not an outcome).
_OUTCOME_KINDS = frozenset({"completed", "record", "error", "crash", "cancel", "snooze"})


class OutcomeRecorder(Protocol):
    """Something that counts outcomes directly (the testing helpers' drain does)."""

    def job_finished(
        self, queue: str, worker: str, state: str, duration: float, wait: float
    ) -> None: ...


class JobOutcomes:
    """``recorder`` (optional) is told of every outcome with the state as a metric labels it
    (``snoozed`` for a snooze); ``events`` emits them as telemetry."""

    def __init__(self, recorder: OutcomeRecorder | None, events: JobEvents | None = None) -> None:
        self._recorder = recorder
        self._events = events

    def written(self, acks: list[tuple[Ack, str]]) -> None:
        recorder, events = self._recorder, self._events
        for ack, state in acks:
            if ack.kind not in _OUTCOME_KINDS:
                continue
            if events is not None:
                events.finished(ack, state)
            if recorder is not None:
                # The database says "scheduled" for a snooze; the metric's label is "snoozed".
                label = "snoozed" if ack.kind == "snooze" else state
                recorder.job_finished(ack.queue, ack.worker, label, ack.duration, ack.wait)
            if ack.text is not None:
                _log_failure(ack, state)


def _log_failure(ack: Ack, state: str) -> None:
    # The last line of a traceback names the exception; the whole text is in the job's errors.
    text = ack.text or ""
    last = text.strip().splitlines()[-1] if text.strip() else text
    log.warning(
        "job %s (%s, queue %s, attempt %d) failed, now %s: %s",
        ack.job_id,
        ack.worker,
        ack.queue,
        ack.attempt,
        state,
        last,
        extra={"job_id": ack.job_id},
    )
