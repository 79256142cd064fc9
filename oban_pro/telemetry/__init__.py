"""Telemetry events, as Oban.py names and shapes them (``oban.<component>.<action>.<phase>``).

``attach(id, events, handler)`` subscribes, ``detach(id)`` unsubscribes, ``span`` wraps a
piece of work in start/stop/exception events, ``execute`` emits one event. The structured logger
in :mod:`oban_pro.telemetry.logger` is one subscriber; Prometheus metrics are another.

:data:`EVENTS` lists every event the engine emits, so integrations can check their subscriptions
(attaching to an event that is never emitted fails silently). oban_pro emits Oban.py's
maintenance events and one of its own (``oban.heartbeat.beat``); the job, producer and queue
events are not emitted yet.
"""

from .core import Collector, attach, detach, execute, listening, span

EVENTS = [
    "oban.heartbeat.beat.exception",
    "oban.heartbeat.beat.start",
    "oban.heartbeat.beat.stop",
    "oban.leader.election.exception",
    "oban.leader.election.start",
    "oban.leader.election.stop",
    "oban.lifeline.rescue.exception",
    "oban.lifeline.rescue.start",
    "oban.lifeline.rescue.stop",
    "oban.pruner.prune.exception",
    "oban.pruner.prune.start",
    "oban.pruner.prune.stop",
    "oban.scheduler.evaluate.exception",
    "oban.scheduler.evaluate.start",
    "oban.scheduler.evaluate.stop",
    "oban.stager.stage.exception",
    "oban.stager.stage.start",
    "oban.stager.stage.stop",
]

__all__ = ["EVENTS", "Collector", "attach", "detach", "execute", "listening", "span"]
