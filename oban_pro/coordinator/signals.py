"""Signals (compat.md §3): pause, resume, scale and pkill, for this node or for any node.

A payload whose ``ident`` is neither ``"any"`` nor this node's ``"<name>.<node>"`` is for
another node and is ignored, as are malformed ones (with a log line).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..oban import Oban

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
            limit = payload.get("limit")
            if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1:
                producer.scale(limit)
            else:
                log.warning("ignored scale signal with a bad limit: %r", payload)
        else:
            log.warning("ignored signal with unknown action: %r", payload)
