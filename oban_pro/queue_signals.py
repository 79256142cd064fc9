"""Queue operations sent as signals (compat.md §3), the same for the node's
:class:`~oban_pro.Oban` and for the instance job code gets in a worker process
(:class:`~oban_pro.pool.child_instance.ChildOban`): the payloads, checked before anything is
sent, and the methods that only send them. A class using :class:`QueueSignals` provides
``async _signal(payload, node)``.
"""

from __future__ import annotations

from typing import Any

from .errors import ValidationError
from .limits import LIMIT_OPTIONS, QueueLimits, rescale
from .naming import validate_name


def check_limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValidationError("limit", f"must be an integer >= 1, got {limit!r}")
    return limit


def scale_payload(queue: str, limit: int | None, options: dict[str, Any]) -> dict[str, Any]:
    """A scale signal: the local ``limit`` and/or Oban Pro's ``global_limit`` / ``rate_limit``
    (``None`` removes one). Raises :class:`ValidationError` on any bad part."""
    validate_name("queue", queue)
    if limit is not None:
        check_limit(limit)
    unknown = sorted(set(options) - set(LIMIT_OPTIONS))
    if unknown:
        raise ValidationError(
            unknown[0], "is not a queue option; scale limit, global_limit or rate_limit"
        )
    if limit is None and not options:
        raise ValidationError("limit", "give limit, global_limit or rate_limit to change")
    rescale(None, options, queue)  # validates every given option
    payload: dict[str, Any] = {"action": "scale", "queue": queue, **options}
    if limit is not None:
        payload["limit"] = limit
    return payload


def start_payload(
    queue: str, limit: int, paused: bool, global_limit: Any, rate_limit: Any
) -> tuple[dict[str, Any], QueueLimits | None]:
    """A start signal and the queue's limits across nodes, parsed; raises on bad input."""
    validate_name("queue", queue)
    check_limit(limit)
    if not isinstance(paused, bool):
        raise ValidationError("paused", f"must be True or False, got {paused!r}")
    given = {"global_limit": global_limit, "rate_limit": rate_limit}
    options = {k: v for k, v in given.items() if v is not None}
    limits = QueueLimits.parse(options, queue)
    return {"action": "start", "queue": queue, "limit": limit, "paused": paused, **options}, limits


class QueueSignals:
    async def _signal(self, payload: dict[str, Any], node: str | None) -> None:
        raise NotImplementedError  # pragma: no cover - provided by the class

    async def pause_queue(self, queue: str, *, node: str | None = None) -> None:
        await self._signal({"action": "pause", "queue": validate_name("queue", queue)}, node)

    async def resume_queue(self, queue: str, *, node: str | None = None) -> None:
        await self._signal({"action": "resume", "queue": validate_name("queue", queue)}, node)

    async def pause_all_queues(self, *, node: str | None = None) -> None:
        await self._signal({"action": "pause", "queue": "*"}, node)

    async def resume_all_queues(self, *, node: str | None = None) -> None:
        await self._signal({"action": "resume", "queue": "*"}, node)

    async def scale_queue(
        self, queue: str, *, limit: int | None = None, node: str | None = None, **options: Any
    ) -> None:
        """Change ``queue``'s limits on every node (or on ``node``).

        ``limit`` is the local limit; ``global_limit`` and ``rate_limit`` (Oban Pro's options:
        an int or ``{"allowed": n, "partition": ...}``, ``{"allowed": n, "period": s}``) change
        the limits across nodes, and ``None`` removes one. Options are checked here first: a bad
        value raises :class:`ValidationError` and no signal is sent.
        """
        await self._signal(scale_payload(queue, limit, options), node)
