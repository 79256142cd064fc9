"""Producer unit tests against a fake database seam and a fake dispatcher (no PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace

from oban_pro.coordinator.producer import Producer

ROW = (1, "app.W", "{}", "{}", 1, 20, 0, [], "[]", 0.0, 0.0, 0.0)


class FakeDb:
    """A connection pool whose fetch takes ``delay`` seconds (a frozen node: SIGSTOP)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    @contextlib.asynccontextmanager
    async def connection(self):
        async def execute(sql, params, binary=False):
            await asyncio.sleep(self.delay)

            async def fetchall():
                return [ROW]

            return SimpleNamespace(fetchall=fetchall)

        yield SimpleNamespace(execute=execute)


class FakeDispatcher:
    def __init__(self) -> None:
        self.dispatched: list = []
        self.given_back: list = []

    def dispatch(self, producer, rows) -> None:
        self.dispatched += rows

    def give_back(self, producer, rows, why) -> None:
        self.given_back.append((rows, why))


def _producer(delay: float, dispatcher: FakeDispatcher) -> Producer:
    return Producer(queue="q", limit=5, name="Oban", node="n", db=FakeDb(delay),
                    queries=SimpleNamespace(fetch_jobs="FETCH"), dispatcher=dispatcher,
                    poll_interval=1.0, heartbeat_ttl=0.05)  # type: ignore[arg-type]  # fmt: skip


async def test_a_fetch_slower_than_the_ttl_gives_its_jobs_back_unrun():
    dispatcher = FakeDispatcher()
    assert await _producer(0.2, dispatcher)._fetch(5) == 1
    assert dispatcher.dispatched == []
    ((rows, why),) = dispatcher.given_back
    assert rows == [ROW] and "longer than heartbeat_ttl" in why


async def test_a_normal_fetch_dispatches():
    dispatcher = FakeDispatcher()
    assert await _producer(0.0, dispatcher)._fetch(5) == 1
    assert dispatcher.dispatched == [ROW] and dispatcher.given_back == []
