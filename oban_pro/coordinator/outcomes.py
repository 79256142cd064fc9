"""What happens once a job's outcome is written: its log line and its metrics.

Subscribed to the acker's ``on_written``, so both use the state the ack statement decided
(``RETURNING``): a job discarded by the poison-job guard or at its last attempt is logged and
counted as discarded, never as retryable, and an ack fenced out (the job was rescued) is neither.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .acker import Ack

if TYPE_CHECKING:
    from ..metrics import Metrics

__all__ = ["JobOutcomes"]

log = logging.getLogger(__name__)

#: Ack kinds that end an attempt (a release gives the attempt back: not an outcome).
_OUTCOME_KINDS = frozenset({"completed", "record", "error", "crash", "cancel", "snooze"})


class JobOutcomes:
    def __init__(self, metrics: Metrics | None) -> None:
        self._metrics = metrics

    def written(self, acks: list[tuple[Ack, str]]) -> None:
        metrics = self._metrics
        for ack, state in acks:
            if ack.kind not in _OUTCOME_KINDS:
                continue
            if metrics is not None:
                # The database says "scheduled" for a snooze; the metric's label is "snoozed".
                label = "snoozed" if ack.kind == "snooze" else state
                metrics.job_finished(ack.queue, ack.worker, label, ack.duration, ack.wait)
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
