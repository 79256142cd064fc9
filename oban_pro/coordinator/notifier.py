"""LISTEN/NOTIFY: one dedicated connection, reconnecting with backoff, plain-callback listeners.

Payloads are decoded in every form of compat.md §3; a malformed one is logged and dropped, and
the listener keeps working. LISTEN needs a session-level connection: behind PgBouncer in
transaction mode notifications are lost, and producers fall back to their jittered poll.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import psycopg

from .._aio import cancel_and_wait, wait_event
from ..errors import PayloadError
from ..naming import channel
from ..payloads import decode_payload
from ..store import listening

log = logging.getLogger(__name__)

EVENTS = ("insert", "signal", "leader", "gossip")
Listener = Callable[[dict[str, Any]], None]


class Notifier:
    """Listens on ``<prefix>.oban_<event>`` channels and calls listeners with decoded payloads."""

    def __init__(self, dsn: str, prefix: str, *, on_reconnect: Callable[[], None] | None = None):
        self._dsn = dsn
        self._prefix = prefix
        self._listeners: dict[str, list[Listener]] = defaultdict(list)
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._on_reconnect = on_reconnect
        self._channels = {channel(prefix, event): event for event in EVENTS}

    def listen(self, event: str, listener: Listener) -> None:
        """Call ``listener(payload)`` for each ``event`` notification (insert, signal, ...)."""
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}; expected one of {', '.join(EVENTS)}")
        self._listeners[event].append(listener)

    async def start(self, timeout: float = 10.0) -> None:
        self._task = asyncio.create_task(self._run(), name="oban-notifier")
        if not await wait_event(self._connected, timeout):
            raise TimeoutError(f"could not LISTEN within {timeout}s; is the database reachable?")

    async def stop(self) -> None:
        if self._task:
            await cancel_and_wait(self._task)  # which closes its connection

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def _run(self) -> None:
        delay = 0.1
        first = True
        while True:
            try:
                await self._listen_forever(first)
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                self._connected.clear()
                log.warning("notifier connection lost (%s); reconnecting in %.1fs", exc, delay)
            first = False
            await asyncio.sleep(delay * (1 + random.random() / 2))
            delay = min(delay * 2, 5.0)

    async def _listen_forever(self, first: bool) -> None:
        async with listening(self._dsn, self._channels) as notices:
            self._connected.set()
            if not first and self._on_reconnect:
                self._on_reconnect()
            async for channel_name, raw in notices:
                self._dispatch(channel_name, raw)

    def _dispatch(self, channel_name: str, raw: str) -> None:
        event = self._channels.get(channel_name)
        if event is None:
            return
        try:
            payload = decode_payload(raw)
        except PayloadError as exc:
            log.warning("ignored malformed %s notification: %s", event, exc)
            return
        for listener in self._listeners[event]:
            try:
                listener(payload)
            except Exception:  # a buggy listener must not kill the notifier
                log.exception("%s listener failed on payload %r", event, payload)
