"""Runs the plugins (:mod:`oban_pro.plugins.base`): one loop each, every ``interval`` seconds
(jittered +-5%), skipped on followers when ``leader_only``; an error is logged and counted and
the loop goes on (:class:`~.periodic.Periodic`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..plugins.base import NodeView, Plugin
from .periodic import Periodic

__all__ = ["PluginRunner"]


class PluginRunner:
    """Runs plugins in loops of their own."""

    def __init__(
        self,
        plugins: Sequence[Plugin],
        node: NodeView,
        *,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.plugins = list(plugins)
        self._node = node
        self._on_error = on_error
        # A plugin held to the clock (cron) says when it runs next: seconds_to_next_run().
        self._loops = [
            Periodic(p.name, p.interval, self._step_of(p), on_error=on_error,
                     wait=getattr(p, "seconds_to_next_run", None))
            for p in plugins
        ]  # fmt: skip

    def start(self) -> None:
        for loop in self._loops:
            loop.start()

    async def stop(self) -> None:
        for loop in self._loops:
            await loop.stop()

    def trigger(self, name: str) -> None:
        """Run plugin ``name`` now rather than at its next interval."""
        for loop in self._loops:
            if loop.name == name:
                loop.trigger()

    def _step_of(self, plugin: Plugin) -> Callable[[], Any]:
        node = self._node

        async def step() -> object:
            if plugin.leader_only and not node.is_leader:
                return None
            return await plugin.step(None)

        return step
