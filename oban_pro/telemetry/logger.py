"""A structured logger subscribed to telemetry events, in Oban.py's shape::

    from oban_pro.telemetry import logger
    logger.attach()            # JSON lines on logging.getLogger("oban")
    logger.detach()

Each event becomes one JSON object with ``event`` and its metadata (durations in
milliseconds). Job events are shaped as Oban.py shapes them (the job's id, worker, queue,
attempt, max_attempts, args, meta and tags; then state, durations and, for exceptions, the
error's type and message) and log at ``level``, exceptions included, as in Oban.py; other
``*.exception`` events at ERROR; the rest at DEBUG.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from . import EVENTS, core

HANDLER_ID = "oban-logger"
JOB_FIELDS = ("id", "worker", "queue", "attempt", "max_attempts", "args", "meta", "tags")
#: Events logged by default (Oban.py's): every job event and the end of every other span.
DEFAULT_EVENTS = [e for e in EVENTS if e.startswith("oban.job.") or not e.endswith(".start")]
#: What a job event adds to the job's fields, by event (Oban.py's logger).
_JOB_EVENT_KEYS = {
    "oban.job.start": (),
    "oban.job.stop": ("state", "duration", "queue_time"),
    "oban.job.exception": ("state", "error_type", "error_message", "duration", "queue_time"),
}


class _Handler:
    def __init__(self, level: int, logger: logging.Logger) -> None:
        self._level = level
        self._logger = logger

    def __call__(self, name: str, meta: dict[str, Any]) -> None:
        if name == "oban.queue.shutdown":
            if not meta.get("orphaned"):
                return  # as Oban.py: only a shutdown that left jobs unfinished is news
            level = logging.WARNING
        elif name.startswith("oban.job."):
            level = self._level  # as Oban.py: a failed attempt is an ordinary job event
        else:
            level = logging.ERROR if name.endswith(".exception") else logging.DEBUG
        if self._logger.isEnabledFor(level):
            self._logger.log(level, json.dumps(_format(name, meta), default=str))


def _format(name: str, meta: dict[str, Any]) -> dict[str, Any]:
    keys = _JOB_EVENT_KEYS.get(name)
    if keys is not None:
        return _format_job(name, meta, keys)
    data: dict[str, Any] = {"event": name}
    job = meta.pop("job", None)
    if job is not None:
        data.update({field: getattr(job, field, None) for field in JOB_FIELDS})
    meta.pop("system_time", None)
    meta.pop("traceback", None)  # the error entry of the job keeps it; a log line need not
    for key in ("duration", "queue_time"):
        if key in meta:
            meta[key] = _ms(meta[key])
    data.update(meta)
    return data


def _format_job(name: str, meta: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    job = meta.get("job")
    data: dict[str, Any] = {field: getattr(job, field, None) for field in JOB_FIELDS}
    data["event"] = name
    for key in keys:
        value = meta.get(key)
        data[key] = _ms(value) if key in ("duration", "queue_time") else value
    return data


def _ms(value: Any) -> Any:
    return round(value / 1_000_000, 2) if isinstance(value, int) else value


def attach(
    *,
    level: int = logging.INFO,
    logger: logging.Logger | None = None,
    events: list[str] | None = None,
) -> None:
    """Log ``events`` (default: every stop and exception event) as JSON lines."""
    detach()
    core.attach(HANDLER_ID, list(events or DEFAULT_EVENTS),
                _Handler(level, logger or logging.getLogger("oban")))  # fmt: skip


def detach() -> None:
    """Stop logging telemetry events."""
    core.detach(HANDLER_ID)
