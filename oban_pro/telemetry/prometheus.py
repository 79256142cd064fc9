"""The Prometheus metrics as a subscriber of the engine's telemetry events.

The engine does not call :class:`~oban_pro.metrics.Metrics`; it emits events, and this
subscriber turns those of one instance into metrics:

===============================  ==============================================================
event                            metrics
===============================  ==============================================================
``oban.job.stop``/``exception``  ``oban_pro_jobs_total``, ``_job_duration_seconds``,
                                 ``_job_wait_seconds`` (a snooze, state ``scheduled``, is
                                 counted as ``snoozed``)
``oban.producer.get.stop``       ``oban_pro_jobs_fetched_total``, ``_fetch_duration_seconds``
``oban.acker.ack.stop``          ``oban_pro_ack_batch_size``, ``_ack_duration_seconds``,
                                 ``_acks_stale_total``, ``_ack_backlog``
``oban.heartbeat.beat.stop``     ``oban_pro_heartbeat_age_seconds``
``oban.lifeline.rescue.stop``    ``oban_pro_jobs_rescued_total``
``oban.leader.election.stop``    ``oban_pro_leader``
``oban.pool.restart``            ``oban_pro_child_restarts_total``
``oban.db.error``                ``oban_pro_db_errors_total``
``oban.notifier.reconnect``      ``oban_pro_notifier_reconnects_total``
===============================  ==============================================================

The rest are read when Prometheus scrapes (queue, pool and child gauges, from providers the
runtime gives :class:`~oban_pro.metrics.Metrics`) or pushed by the leader's periodic queue count
(``oban_pro_queue_jobs``), which are states rather than events.

Handlers are process-wide, so each subscriber keeps only the events whose ``name`` is its
instance's (two nodes in one process each count their own). Durations arrive in nanoseconds.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from . import core

if TYPE_CHECKING:
    from ..metrics import Metrics

__all__ = ["PrometheusSubscriber"]

_NS = 1e9
_ids = itertools.count(1)


class PrometheusSubscriber:
    """Feeds ``metrics`` from the events of the instance called ``name``."""

    def __init__(self, metrics: Metrics, name: str) -> None:
        self._metrics = metrics
        self._name = name
        self._id = f"oban-pro-metrics-{name}-{next(_ids)}"
        self._handlers = {
            "oban.job.stop": self._job_finished,
            "oban.job.exception": self._job_finished,
            "oban.producer.get.stop": self._fetched,
            "oban.acker.ack.stop": self._acked,
            "oban.heartbeat.beat.stop": self._beat,
            "oban.lifeline.rescue.stop": self._rescued,
            "oban.leader.election.stop": self._elected,
            "oban.pool.restart": lambda meta: metrics.child_restart(meta["reason"]),
            "oban.db.error": lambda meta: metrics.db_error(meta["operation"]),
            "oban.notifier.reconnect": lambda meta: metrics.notifier_reconnect(),
        }

    def attach(self) -> None:
        for event, record in self._handlers.items():
            core.attach(self._id, [event], self._only_mine(record))

    def detach(self) -> None:
        core.detach(self._id)

    def _only_mine(self, record: Any) -> core.Handler:
        name = self._name

        def handle(event: str, meta: dict[str, Any]) -> None:
            if meta.get("name") == name:
                record(meta)

        return handle

    def _job_finished(self, meta: dict[str, Any]) -> None:
        state = meta["state"]
        self._metrics.job_finished(
            meta["queue"],
            meta["worker"],
            "snoozed" if state == "scheduled" else state,
            meta["duration"] / _NS,
            meta["queue_time"] / _NS,
        )

    def _fetched(self, meta: dict[str, Any]) -> None:
        self._metrics.jobs_fetched(meta["queue"], meta["count"], meta["duration"] / _NS)

    def _acked(self, meta: dict[str, Any]) -> None:
        metrics = self._metrics
        metrics.ack_batch(meta["count"], meta["duration"] / _NS)
        metrics.acks_stale(meta["stale"])
        metrics.set_ack_backlog(meta["backlog"])

    def _beat(self, meta: dict[str, Any]) -> None:
        self._metrics.heartbeat_sent()

    def _rescued(self, meta: dict[str, Any]) -> None:
        self._metrics.jobs_rescued(meta.get("rescued_count", 0))

    def _elected(self, meta: dict[str, Any]) -> None:
        self._metrics.set_leader(bool(meta.get("leader")))
