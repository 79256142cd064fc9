"""Producer unit tests against a fake Store and a fake dispatcher (no PostgreSQL)."""

from __future__ import annotations

import asyncio

from oban_pro.coordinator.producer import Producer
from oban_pro.store import FetchedJob

JOB = FetchedJob(1, "app.W", "{}", "{}", 1, 20, 0, [], "[]", 0.0, 0.0, 0.0)


class FakeStore:
    """A Store whose fetch takes ``delay`` seconds (a frozen node: SIGSTOP)."""

    prefix = "public"

    def __init__(self, delay: float) -> None:
        self.delay = delay

    async def fetch_jobs(self, *, queue, demand, node, uuid):
        await asyncio.sleep(self.delay)
        return [JOB]


class FakeDispatcher:
    def __init__(self) -> None:
        self.dispatched: list = []
        self.given_back: list = []

    def dispatch(self, producer, rows) -> None:
        self.dispatched += rows

    def give_back(self, producer, rows, why) -> None:
        self.given_back.append((rows, why))


def _producer(delay: float, dispatcher: FakeDispatcher) -> Producer:
    return Producer(queue="q", limit=5, name="Oban", node="n", store=FakeStore(delay),
                    dispatcher=dispatcher, poll_interval=1.0,
                    heartbeat_ttl=0.05)  # type: ignore[arg-type]  # fmt: skip


async def test_a_fetch_slower_than_the_ttl_gives_its_jobs_back_unrun():
    dispatcher = FakeDispatcher()
    assert await _producer(0.2, dispatcher)._fetch(5) == 1
    assert dispatcher.dispatched == []
    ((rows, why),) = dispatcher.given_back
    assert rows == [JOB] and "longer than heartbeat_ttl" in why


async def test_a_normal_fetch_dispatches():
    dispatcher = FakeDispatcher()
    assert await _producer(0.0, dispatcher)._fetch(5) == 1
    assert dispatcher.dispatched == [JOB] and dispatcher.given_back == []
