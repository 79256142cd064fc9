"""Telemetry events, as Oban.py names and shapes them (``oban.<component>.<action>.<phase>``).

``attach(id, events, handler)`` subscribes, ``detach(id)`` unsubscribes, ``span`` wraps a
piece of work in start/stop/exception events, ``execute`` emits one event. The structured logger
in :mod:`oban_pro.telemetry.logger` is one subscriber; Prometheus metrics are another.

:data:`EVENTS` lists every event the engine emits, so integrations can check their subscriptions
(attaching to an event that is never emitted fails silently). oban_pro emits Oban.py's job
events (``oban.job.start``/``stop``/``exception``, from the coordinator as children report:
:mod:`oban_pro.coordinator.job_events`), ``oban.producer.get`` (one fetch),
``oban.queue.shutdown`` and the maintenance spans, and its own: ``oban.acker.ack`` (one ack
statement, for every queue of the node: it replaces Oban.py's per-queue
``oban.producer.ack``), ``oban.heartbeat.beat`` (Oban.py's ``oban.refresher.refresh``),
``oban.pool.restart`` (``reason``), ``oban.db.error`` (``operation``) and
``oban.notifier.reconnect``. Engine events carry the instance's ``name`` and ``node``.
"""

from .core import Collector, attach, detach, execute, listening, span

EVENTS = [
    "oban.acker.ack.exception",
    "oban.acker.ack.start",
    "oban.acker.ack.stop",
    "oban.db.error",
    "oban.heartbeat.beat.exception",
    "oban.heartbeat.beat.start",
    "oban.heartbeat.beat.stop",
    "oban.job.exception",
    "oban.job.start",
    "oban.job.stop",
    "oban.leader.election.exception",
    "oban.leader.election.start",
    "oban.leader.election.stop",
    "oban.lifeline.rescue.exception",
    "oban.lifeline.rescue.start",
    "oban.lifeline.rescue.stop",
    "oban.notifier.reconnect",
    "oban.pool.restart",
    "oban.producer.get.exception",
    "oban.producer.get.start",
    "oban.producer.get.stop",
    "oban.pruner.prune.exception",
    "oban.pruner.prune.start",
    "oban.pruner.prune.stop",
    "oban.queue.shutdown",
    "oban.scheduler.evaluate.exception",
    "oban.scheduler.evaluate.start",
    "oban.scheduler.evaluate.stop",
    "oban.stager.stage.exception",
    "oban.stager.stage.start",
    "oban.stager.stage.stop",
]

__all__ = ["EVENTS", "Collector", "attach", "detach", "execute", "listening", "span"]
