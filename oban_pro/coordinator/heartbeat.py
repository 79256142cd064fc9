"""Producer heartbeats, on a connection of their own, and the ownership check of running jobs.

Rescue judges a node by its heartbeats, so a live node must heartbeat again within moments of
the database coming back. The connection pool cannot promise that: after an outage it
reconnects with an exponential backoff (seen at 8 s), and under load all its connections may be
busy. So the heartbeat keeps one dedicated connection and, when it breaks, tries again every
:func:`retry_delay` seconds with a short connect timeout, beating at once when it is back.
:func:`reconnect_bound` is therefore the longest a live node stays silent after the server
accepts connections again, and the lifeline allows for it after an outage.

Each beat is one statement that refreshes this node's producer rows (registering again any row
that vanished: a lifeline that judged this node dead, a restored database) and, in the same
round trip, lists the jobs this node is running that the database no longer gives to it (same
id, ``executing``, same attempt, same producer uuid). Those were rescued and may run elsewhere,
or were cancelled or deleted: the node stops its local copy at once rather than letting two
copies finish unnoticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from .. import telemetry
from .._aio import cancel_and_wait, wait_event
from ..store import LocalProducer, RunningJob, Store
from .producer import Producer

log = logging.getLogger(__name__)

#: Seconds the heartbeat waits for a new connection before trying again.
CONNECT_TIMEOUT = 2.0


def retry_delay(interval: float) -> float:
    """Seconds between reconnect attempts of the heartbeat connection."""
    return min(1.0, interval)


def reconnect_bound(interval: float) -> float:
    """The longest a live node's heartbeat stays silent once the server accepts connections
    again: one retry delay, one connect timeout, and a second for the beat itself."""
    return retry_delay(interval) + CONNECT_TIMEOUT + 1.0


@dataclass(frozen=True, slots=True)
class LostJob:
    """A running job whose row no longer belongs to this attempt here."""

    job_id: int
    attempt: int
    #: What the row says now: its state (``available`` after a rescue, ``executing`` when it
    #: runs elsewhere or again, ``cancelled``...) or ``deleted``.
    state: str
    #: The node named by the row's ``attempted_by`` now (None when not executing anywhere).
    node: str | None


class Heartbeat:
    def __init__(
        self,
        *,
        conninfo: str,
        connect_kwargs: dict[str, Any],
        queries: Any,
        name: str,
        node: str,
        interval: float,
        producers: Callable[[], Sequence[Producer]],
        running: Callable[[], Sequence[RunningJob]],
        on_lost: Callable[[list[LostJob]], None],
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self._connection = _DedicatedConnection(conninfo, connect_kwargs)
        self._store = Store(self._connection, queries)
        self._name = name
        self._node = node
        self._interval = interval
        self._producers = producers
        self._running = running
        self._on_lost = on_lost
        self._on_error = on_error
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="oban-heartbeat")

    def trigger(self) -> None:
        """Beat now (tests, and a producer whose state peers should see at once)."""
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        await self._connection.close()

    async def _run(self) -> None:
        down = False
        while True:
            try:
                await self.beat()
                if down:
                    log.info("heartbeat connection is back")
                down = False
                wait = self._interval * random.uniform(0.95, 1.05)
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                if not down:
                    log.warning("heartbeat failed: %s; retrying every %ss", exc,
                                retry_delay(self._interval))  # fmt: skip
                down = True
                await self._connection.close()
                if self._on_error:
                    self._on_error("heartbeat")
                wait = retry_delay(self._interval)
            except Exception:
                log.exception("heartbeat failed unexpectedly")
                await self._connection.close()
                wait = retry_delay(self._interval)
            await wait_event(self._wake, wait)
            self._wake.clear()

    async def beat(self) -> None:
        """Refresh every producer row of this node and stop running jobs that are not ours."""
        producers = list(self._producers())
        running = list(self._running())
        if not producers and not running:
            return
        # Bounded: a server that accepts the connection but never answers must not silence
        # the node for longer than a failed connect would.
        with telemetry.span(
            "oban.heartbeat.beat", {"name": self._name, "node": self._node}
        ) as context:
            async with asyncio.timeout(max(self._interval, CONNECT_TIMEOUT)):
                answer = await self._store.beat(
                    name=self._name,
                    node=self._node,
                    producers=[LocalProducer(p.uuid, p.queue, p.meta_json()) for p in producers],
                    running=running,
                )
            context.add({"producer_count": len(producers), "running_count": len(running)})
        attempts = {r.job_id: r.attempt for r in running}
        queues = {p.uuid: p.queue for p in producers}
        if answer.registered_again:
            await self._registered_again(answer.registered_again, queues)
        if answer.changed:
            self._on_lost(
                [LostJob(c.job_id, attempts[c.job_id], c.state, c.node) for c in answer.changed]
            )

    async def _registered_again(self, uuids: list[str], queues: dict[str, str]) -> None:
        """Rows this beat wrote again because they were gone. A producer stopped while the beat
        was in flight (its queue stopped: it deleted its row) must not be brought back."""
        current = {p.uuid for p in self._producers()}
        stopped = [u for u in uuids if u not in current]
        for uuid in uuids:
            if uuid in current:
                log.warning("producer row of queue %r was gone; registered it again",
                            queues.get(uuid, uuid))  # fmt: skip
        if stopped:
            await self._store.delete_producers(stopped)


class _DedicatedConnection:
    """The heartbeat's own connection as a Store's connection source: opened on first use
    with a short connect timeout and kept; :meth:`close` drops it, and the next use
    connects again."""

    def __init__(self, conninfo: str, connect_kwargs: dict[str, Any]) -> None:
        self._conninfo = conninfo
        self._connect_kwargs = {
            k: v for k, v in connect_kwargs.items() if k not in ("autocommit", "row_factory")
        }
        self._conn: psycopg.AsyncConnection[Any] | None = None

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self._conninfo,
                autocommit=True,
                row_factory=tuple_row,
                connect_timeout=int(CONNECT_TIMEOUT),
                **self._connect_kwargs,
            )
        yield self._conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:  # a broken connection may fail to close; it is gone either way
                pass
