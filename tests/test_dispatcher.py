"""The dispatcher against a fake pool and acker: limits from the ledger, one copy per job."""

from __future__ import annotations

from typing import Any

from oban_pro.coordinator.dispatcher import Dispatcher, RunningJob
from oban_pro.pool.ledger import PoolJob
from oban_pro.store import FetchedJob


class FakeAcker:
    def __init__(self) -> None:
        self.acks: list[Any] = []

    def add(self, ack: Any) -> None:
        self.acks.append(ack)


class FakePool:
    def __init__(self, ledger: Any, **_callbacks: Any) -> None:
        self.ledger = ledger
        self.stopped: list[tuple[int, str]] = []
        self.threads = 1
        self.processes = 2
        self.waiting: dict[str, int] = {}  # queue -> jobs waiting for a child

    def waiting_in(self, queue: str) -> int:
        return self.waiting.get(queue, 0)

    def submit_many(self, runs: list[Any], *, isolated: Any = ()) -> None:
        for run in runs:
            self.ledger.add(PoolJob(run, run.job_id in isolated, 0.0))

    def stop_job(self, job_id: int, reason: str = "cancelled") -> bool:
        self.stopped.append((job_id, reason))
        return job_id in self.ledger


class FakeProducer:
    def __init__(self, queue: str, limit: int) -> None:
        self.queue, self.limit, self.uuid = queue, limit, f"uuid-{queue}"

    def wake(self) -> None:
        pass


def row(job_id: int, attempt: int = 1) -> FetchedJob:
    return FetchedJob(job_id, "w.W", "{}", "{}", attempt, 20, 0, [], "[]", 0.0, 0.0, 0.0)


def make() -> tuple[Dispatcher, FakeAcker, FakeProducer]:
    acker = FakeAcker()
    dispatcher = Dispatcher(acker, FakePool, isolated_queues=["solo"])  # type: ignore[arg-type]
    producer = FakeProducer("q", 3)
    dispatcher.register(producer)  # type: ignore[arg-type]
    return dispatcher, acker, producer


def test_demand_is_the_limit_minus_the_queues_jobs_in_the_ledger() -> None:
    dispatcher, _acker, producer = make()
    assert dispatcher.demand(producer) == 3  # type: ignore[arg-type]
    dispatcher.dispatch(producer, [row(1), row(2)])  # type: ignore[arg-type]
    assert dispatcher.demand(producer) == 1  # type: ignore[arg-type]
    assert dispatcher.running() == [RunningJob(1, 1, "uuid-q"), RunningJob(2, 1, "uuid-q")]
    assert dispatcher.running()[0].producer_uuid == "uuid-q"


def test_while_each_child_has_a_job_waiting_the_room_is_fetched_half_the_limit_at_once() -> None:
    acker = FakeAcker()
    dispatcher = Dispatcher(acker, FakePool)  # type: ignore[arg-type]
    producer = FakeProducer("cpu", 10)
    dispatcher.register(producer)  # type: ignore[arg-type]
    dispatcher.dispatch(producer, [row(i) for i in range(1, 10)])  # type: ignore[arg-type]
    assert dispatcher.demand(producer) == 1  # type: ignore[arg-type]
    dispatcher.pool.waiting["cpu"] = 7  # isolated jobs queued behind the 2 busy children
    assert dispatcher.demand(producer) == 0  # type: ignore[arg-type]
    for job_id in (9, 8, 7):
        dispatcher.pool.ledger.remove(job_id)
    assert dispatcher.demand(producer) == 0  # type: ignore[arg-type]  # 4 free, 2+ waiting
    dispatcher.pool.ledger.remove(6)
    assert dispatcher.demand(producer) == 5  # type: ignore[arg-type]  # half the limit
    dispatcher.pool.waiting["cpu"] = 1  # fewer waiting than children: fetch what is free
    dispatcher.dispatch(producer, [row(6)])  # type: ignore[arg-type]
    assert dispatcher.demand(producer) == 4  # type: ignore[arg-type]
    dispatcher.pool.waiting["cpu"] = 0  # nothing waits: every free slot is fetched at once
    assert dispatcher.demand(producer) == 4  # type: ignore[arg-type]


def test_a_job_fetched_again_while_its_old_attempt_runs_here_keeps_one_copy() -> None:
    dispatcher, acker, producer = make()
    dispatcher.dispatch(producer, [row(1, attempt=1)])  # type: ignore[arg-type]
    dispatcher.dispatch(producer, [row(1, attempt=2)])  # rescued, then fetched again here
    assert dispatcher.pool.stopped == [(1, "rescued")]
    assert [(a.job_id, a.attempt, a.kind) for a in acker.acks] == [(1, 2, "release")]


def test_abandon_stops_only_the_attempt_named() -> None:
    dispatcher, _acker, producer = make()
    dispatcher.dispatch(producer, [row(7, attempt=3)])  # type: ignore[arg-type]
    assert dispatcher.abandon(7, "rescued elsewhere", attempt=2) is False
    assert dispatcher.abandon(7, "rescued elsewhere", attempt=3) is True
    assert dispatcher.pool.stopped == [(7, "rescued")]
    assert dispatcher.abandon(8, "never here") is False


def test_isolated_queues_mark_their_jobs_isolated() -> None:
    dispatcher, _acker, _producer = make()
    solo = FakeProducer("solo", 2)
    dispatcher.register(solo)  # type: ignore[arg-type]
    dispatcher.dispatch(solo, [row(5)])  # type: ignore[arg-type]
    assert dispatcher.ledger.get(5).isolated is True  # type: ignore[union-attr]
