"""What a plugin is, what it sees of its node, and how the runtime runs it.

A plugin is periodic maintenance: it has a ``name``, an ``interval`` (seconds, from Config),
says whether only the leader runs it (``leader_only``), and does its work in
``async step(now)``. It gets what it needs at construction: the :class:`~oban_pro.store.Store`
for its statements and a :class:`NodeView` of its node. It imports nothing of the coordinator.

The runtime runs every plugin the same way
(:class:`~oban_pro.coordinator.plugin_runner.PluginRunner`): one loop each, every ``interval``
seconds (jittered +-5%), skipped on followers when ``leader_only``; an error is logged and
counted and the loop goes on. A plugin never ends its node. A plugin held to the clock
(cron: minute boundaries) also has ``seconds_to_next_run()``; its loop waits that long before
each step instead.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import msgspec

__all__ = ["NodeView", "Plugin", "QueueCheck"]


class QueueCheck(msgspec.Struct, frozen=True):
    """One queue this node serves, as gossip reports it (compat.md §3)."""

    uuid: str
    name: str
    node: str
    queue: str
    limit: int
    paused: bool
    running: list[int]
    started_at: float  # epoch seconds
    limits: dict[str, Any]  # global_limit / rate_limit in Oban Pro's fields, or empty


class NodeView(Protocol):
    """What a plugin may read of its node, and the two events it may report."""

    @property
    def name(self) -> str: ...

    @property
    def node(self) -> str: ...

    @property
    def is_leader(self) -> bool: ...

    def seconds_since_db_error(self) -> float:
        """Seconds since this node last failed to reach the database (inf: never)."""
        ...

    async def queue_checks(self) -> list[QueueCheck]:
        """The queues this node serves now, with their limits' use freshly read."""
        ...

    def jobs_staged(self, queue: str) -> None:
        """Jobs of ``queue`` became available: local producers need not wait for the notice."""
        ...

    def jobs_rescued(self, queues: set[str]) -> None:
        """Jobs of ``queues`` were given back by a rescue."""
        ...


@runtime_checkable
class Plugin(Protocol):
    name: str
    interval: float
    leader_only: bool

    async def step(self, now: datetime | None = None) -> object:
        """One round of work. ``now``: act as of this moment (tests); None: the database's
        clock."""
        ...
