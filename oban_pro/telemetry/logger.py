"""A structured logger subscribed to telemetry events, in Oban.py's shape::

    from oban_pro.telemetry import logger
    logger.attach()            # JSON lines on logging.getLogger("oban")
    logger.detach()

Each event becomes one JSON object with ``event`` and its metadata (durations in
milliseconds). Job events log at ``level``; ``*.exception`` events at ERROR; the rest at DEBUG.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from . import EVENTS, core

HANDLER_ID = "oban-logger"
JOB_FIELDS = ("id", "worker", "queue", "attempt", "max_attempts", "args", "meta", "tags")
#: Events logged by default: the end of every span (start events would double the volume).
DEFAULT_EVENTS = [e for e in EVENTS if not e.endswith(".start")]


class _Handler:
    def __init__(self, level: int, logger: logging.Logger) -> None:
        self._level = level
        self._logger = logger

    def __call__(self, name: str, meta: dict[str, Any]) -> None:
        level = logging.ERROR if name.endswith(".exception") else (
            self._level if name.startswith("oban.job") else logging.DEBUG
        )  # fmt: skip
        if self._logger.isEnabledFor(level):
            self._logger.log(level, json.dumps(_format(name, meta), default=str))


def _format(name: str, meta: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {"event": name}
    job = meta.pop("job", None)
    if job is not None:
        data.update({field: getattr(job, field, None) for field in JOB_FIELDS})
    meta.pop("system_time", None)
    meta.pop("traceback", None)  # the error entry of the job keeps it; a log line need not
    for key in ("duration", "queue_time"):
        if isinstance(meta.get(key), int):
            meta[key] = round(meta[key] / 1_000_000, 2)
    data.update(meta)
    return data


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
