"""A stand-in for a plugin's node (oban_pro.plugins.base.NodeView) and the Store of a pool, for
tests that run one plugin against the real database without a whole node."""

from __future__ import annotations

from typing import Any

from oban_pro.plugins.base import QueueCheck
from oban_pro.queries import Queries
from oban_pro.store import Store


class FakeNode:
    """Records what plugins report; leads unless told otherwise."""

    def __init__(
        self, *, is_leader: bool = True, healthy_for: float = float("inf"), name: str = "t"
    ) -> None:
        self.name = name
        self.node = f"{name}-node"
        self.is_leader = is_leader
        self.healthy_for = healthy_for
        self.staged: list[str] = []
        self.rescued: list[set[str]] = []
        self.checks: list[QueueCheck] = []

    def seconds_since_db_error(self) -> float:
        return self.healthy_for

    async def queue_checks(self) -> list[QueueCheck]:
        return list(self.checks)

    def jobs_staged(self, queue: str) -> None:
        self.staged.append(queue)

    def jobs_rescued(self, queues: set[str]) -> None:
        self.rescued.append(queues)


def store(pool: Any, prefix: str) -> Store:
    return Store(pool, Queries(prefix))
