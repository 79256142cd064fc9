"""A small helper for loops that run every N seconds and survive database errors."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import psycopg

from .._aio import cancel_and_wait, wait_event

log = logging.getLogger(__name__)


class Periodic:
    """Run ``step()`` every ``interval`` seconds (jittered +-5%); ``trigger()`` runs it now.
    With ``wait``, each step (the first too) comes ``wait()`` seconds after the previous one
    ended instead: a loop held to the clock (cron's minute boundaries).

    A database error is logged and reported to ``on_error`` and the loop goes on: a maintenance
    loop must never die because PostgreSQL restarted.
    """

    def __init__(
        self,
        name: str,
        interval: float,
        step: Callable[[], Awaitable[object]],
        *,
        on_error: Callable[[str], None] | None = None,
        wait: Callable[[], float] | None = None,
    ) -> None:
        self.name = name
        self.interval = interval
        self._step = step
        self._wait = wait
        self._on_error = on_error
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"oban-{self.name}")

    def trigger(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task:
            await cancel_and_wait(self._task)
            self._task = None

    async def _run(self) -> None:
        while True:
            if self._wait is not None:
                await self._pause(self._wait())
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                log.warning("%s failed: %s", self.name, exc)
                if self._on_error:
                    self._on_error(self.name)
            except Exception:
                log.exception("%s failed unexpectedly", self.name)
            if self._wait is None:
                await self._pause(self.interval * random.uniform(0.95, 1.05))

    async def _pause(self, seconds: float) -> None:
        await wait_event(self._wake, seconds)
        self._wake.clear()
