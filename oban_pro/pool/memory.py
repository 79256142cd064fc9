"""Memory watch: sample the RSS of busy children while their jobs run.

A child past ``max_memory`` drains (takes no new jobs, finishes the ones it has, is replaced);
one that keeps growing past the hard ``ceiling`` while it drains is killed, because waiting for
its jobs could take the machine's memory with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .child import read_rss
from .processes import READY, ChildProcess

__all__ = ["MemoryWatch"]


class MemoryWatch:
    def __init__(
        self,
        *,
        max_memory: int,
        ceiling: int,
        interval: float,
        children: Callable[[], list[ChildProcess]],
        on_over: Callable[[ChildProcess], None],
        on_ceiling: Callable[[ChildProcess], None],
    ) -> None:
        self.max_memory = max_memory
        self.ceiling = ceiling or int(max_memory * 1.5)
        self.interval = interval
        self._children = children
        self._on_over = on_over
        self._on_ceiling = on_ceiling
        self._timer: asyncio.TimerHandle | None = None

    def watch(self) -> None:
        """Make sure sampling runs (a job was placed)."""
        if self.max_memory and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._check)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        busy = [c for c in self._children() if c.jobs and c.alive]
        for child in busy:
            rss = read_rss(child.pid)
            if not rss:
                continue
            child.rss = rss
            if rss > self.ceiling:
                self._on_ceiling(child)
            elif rss > self.max_memory and child.state is READY:
                self._on_over(child)
        if any(c.jobs and c.alive for c in self._children()):
            self.watch()
