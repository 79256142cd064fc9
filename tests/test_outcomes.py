"""A finished job's state is decided once, by the ack statement: logs and metrics use it."""

from __future__ import annotations

import logging

from oban_pro.coordinator.acker import Ack
from oban_pro.coordinator.outcomes import JobOutcomes


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def job_finished(self, queue: str, worker: str, state: str, duration: float, wait: float):
        self.calls.append((queue, worker, state))


def ack(kind: str, job_id: int = 1, text: str | None = None) -> Ack:
    return Ack(job_id, 3, "u", kind, queue="q", worker="w", text=text)


def test_states_come_from_the_database_not_from_the_ack_kind(caplog) -> None:
    metrics = Recorder()
    outcomes = JobOutcomes(metrics)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="oban_pro.coordinator.outcomes"):
        outcomes.written(
            [
                (ack("completed", 1), "completed"),
                # the poison guard discarded it although attempts were left
                (ack("crash", 2, "child process (pid 9) died"), "discarded"),
                (ack("error", 3, "Traceback\nValueError: x"), "retryable"),
                (ack("snooze", 4), "scheduled"),
                (ack("release", 5, "given back"), "available"),  # not an outcome
            ]
        )
    assert metrics.calls == [
        ("q", "w", "completed"),
        ("q", "w", "discarded"),
        ("q", "w", "retryable"),
        ("q", "w", "snoozed"),
    ]
    lines = [r.getMessage() for r in caplog.records]
    assert any("job 2 " in line and "now discarded" in line for line in lines), lines
    assert any("job 3 " in line and "now retryable: ValueError: x" in line for line in lines)
    assert not any("job 5 " in line for line in lines)
