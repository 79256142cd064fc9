"""Signals (compat.md §3): pause, resume, scale and pkill, for this node or for any node.

A payload whose ``ident`` is neither ``"any"`` nor this node's ``"<name>.<node>"`` is for
another node and is ignored, as are malformed ones (with a log line).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..errors import ValidationError
from ..limits import LIMIT_OPTIONS, rescale

if TYPE_CHECKING:
    from ..oban import Oban
    from .producer import Producer

log = logging.getLogger(__name__)


def apply_signal(oban: Oban, payload: dict[str, Any]) -> None:
    ident = payload.get("ident", "any")
    if ident not in ("any", oban.ident):
        return
    action = payload.get("action")
    if action == "pkill":
        job_id = payload.get("job_id")
        if isinstance(job_id, int) and not isinstance(job_id, bool):
            oban.kill_job(job_id)
        else:
            log.warning("ignored pkill signal without an integer job_id: %r", payload)
        return
    queue = payload.get("queue")
    targets = (
        list(oban.producers.values())
        if queue == "*"
        else ([oban.producers[queue]] if isinstance(queue, str) and queue in oban.producers else [])
    )
    for producer in targets:
        if action == "pause":
            producer.pause()
        elif action == "resume":
            producer.resume()
        elif action == "scale":
            _scale(producer, payload)
        else:
            log.warning("ignored signal with unknown action: %r", payload)


def _scale(producer: Producer, payload: dict[str, Any]) -> None:
    """A scale signal: ``limit`` (local) and/or Oban Pro's ``global_limit`` / ``rate_limit``
    (a ``None`` value removes that limit). Nothing changes if any part is bad."""
    limit = payload.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        log.warning("ignored scale signal with a bad limit: %r", payload)
        return
    changes = {k: payload[k] for k in LIMIT_OPTIONS if k in payload}
    if limit is None and not changes:
        log.warning("ignored scale signal with nothing to change: %r", payload)
        return
    if changes:
        try:
            limits = rescale(producer.limits, changes, producer.queue)
        except ValidationError as exc:
            log.warning("ignored scale signal: %s (%r)", exc, payload)
            return
        producer.set_limits(limits)
    if limit is not None:
        producer.scale(limit)
