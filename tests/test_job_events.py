"""The engine's telemetry events on a real node (real PostgreSQL, 2 worker processes): Oban.py's
job events with their documented metadata for completed, failed, discarded, cancelled and
snoozed jobs; the producer, acker and shutdown events; and the Prometheus metrics fed by them,
one node's events never counted by another's."""

from __future__ import annotations

import pytest
from engine_workers import AsyncNoop, CancelSelf, Fail, Noop, SnoozeOnce
from helpers import FAST_TIMINGS, wait_until

from oban_pro import Job, Oban, telemetry

pytestmark = pytest.mark.asyncio

JOB_EVENTS = ["oban.job.start", "oban.job.stop", "oban.job.exception"]
OTHER_EVENTS = ["oban.producer.get.stop", "oban.acker.ack.stop", "oban.queue.shutdown"]
FAST = dict(FAST_TIMINGS, processes=2, imports=["engine_workers"], shutdown_timeout=5.0)


def node(dsn: str, prefix: str, node_name: str = "n1", **overrides) -> Oban:
    opts = {**FAST, "queues": {"default": 10}, "name": f"Oban-{prefix}-{node_name}", **overrides}
    return Oban(dsn=dsn, prefix=prefix, node=node_name, **opts)


@pytest.fixture
def seen():
    events: list[tuple[str, dict]] = []
    telemetry.attach("test-job-events", JOB_EVENTS + OTHER_EVENTS,
                     lambda name, meta: events.append((name, meta)))  # fmt: skip
    try:
        yield events
    finally:
        telemetry.detach("test-job-events")


def of_job(events, job_id):
    return [(name, meta) for name, meta in events if name.startswith("oban.job.")
            and meta["job"].id == job_id]  # fmt: skip


def ends(events, job_id):
    return [(n, m) for n, m in of_job(events, job_id) if n != "oban.job.start"]


async def test_job_events_carry_oban_py_metadata(oban_dsn, oban_prefix, seen):
    async with node(oban_dsn, oban_prefix) as oban:
        done = await oban.enqueue(Noop.new({"n": 1}, tags=["Alpha"]))
        async_done = await oban.enqueue(AsyncNoop.new({}))
        failed = await oban.enqueue(Fail.new({}))  # max_attempts 3: retryable
        discarded = await oban.enqueue(Fail.new({}, max_attempts=1))
        cancelled = await oban.enqueue(CancelSelf.new({}))
        snoozed = await oban.enqueue(SnoozeOnce.new({}))
        jobs = [done, async_done, failed, discarded, cancelled]
        await wait_until(
            lambda: all(ends(seen, j.id) for j in jobs) and len(ends(seen, snoozed.id)) == 2,
            timeout=30,
            message="every job's end event (the snoozed one twice)",
        )
        name = oban.name
    by_job = {j.id: of_job(seen, j.id) for j in [*jobs, snoozed]}

    # Each attempt: one start, then its end, for the instance that ran it.
    for job_id, events in by_job.items():
        names = [n for n, _ in events]
        assert names[0] == "oban.job.start", (job_id, names)
        for _, meta in events:
            assert meta["name"] == name and meta["node"] == "n1"
            assert meta["queue"] == "default" and meta["worker"] == meta["job"].worker
            assert isinstance(meta["monotonic_time"], int)

    start, stop = (meta for _, meta in by_job[done.id])
    assert isinstance(start["job"], Job) and start["job"].state == "executing"
    assert stop["state"] == "completed" and stop["job"].state == "completed"
    assert isinstance(stop["duration"], int) and stop["duration"] > 0
    assert isinstance(stop["queue_time"], int) and stop["queue_time"] >= 0
    assert stop["monotonic_time"] > start["monotonic_time"]
    # The whole job, decoded only because this handler reads it.
    job = stop["job"]
    assert (job.args, job.tags, job.attempt, job.max_attempts) == ({"n": 1}, ["alpha"], 1, 20)
    assert job.attempted_at is not None and job.inserted_at is not None
    assert [n for n, _ in by_job[async_done.id]] == ["oban.job.start", "oban.job.stop"]

    name_, exc = ends(seen, failed.id)[0]
    assert name_ == "oban.job.exception" and exc["state"] == "retryable"
    assert exc["error_type"] == "RuntimeError" and exc["error_message"] == "boom on attempt 1"
    assert "Traceback" in exc["traceback"] and "boom on attempt 1" in exc["traceback"]

    name_, exc = ends(seen, discarded.id)[0]
    assert name_ == "oban.job.exception" and exc["state"] == "discarded"

    name_, meta = ends(seen, cancelled.id)[0]
    assert name_ == "oban.job.stop" and meta["state"] == "cancelled"

    # A snooze ends its attempt in "scheduled" (as Oban.py reports it); the next one completes.
    assert [(n, m["state"]) for n, m in ends(seen, snoozed.id)] == [
        ("oban.job.stop", "scheduled"),
        ("oban.job.stop", "completed"),
    ]

    fetches = [m for n, m in seen if n == "oban.producer.get.stop" and m["name"] == name]
    assert sum(m["count"] for m in fetches) == 7  # six jobs, the snoozed one twice
    assert all(m["queue"] == "default" and m["duration"] >= 0 for m in fetches)
    acks = [m for n, m in seen if n == "oban.acker.ack.stop" and m["name"] == name]
    assert sum(m["count"] for m in acks) >= 7 and all(m["stale"] == 0 for m in acks)
    shutdown = [m for n, m in seen if n == "oban.queue.shutdown" and m["name"] == name]
    assert [(m["queue"], m["orphaned"]) for m in shutdown] == [("default", [])]


async def test_no_event_is_built_when_nobody_listens(oban_dsn, oban_prefix, monkeypatch):
    """With no handler attached, the engine builds no job for events (the hot path)."""
    from oban_pro.coordinator import job_events

    built = []
    real = job_events.EventJob.of
    monkeypatch.setattr(
        job_events.EventJob, "of", classmethod(lambda cls, *a: built.append(a) or real(*a))
    )
    assert not any(telemetry.listening(event) for event in JOB_EVENTS)
    async with node(oban_dsn, oban_prefix) as oban:
        job = await oban.enqueue(Noop.new({}))
        await wait_until(lambda: _completed(oban_dsn, oban_prefix, job.id), message="completed")
    assert built == []


def _completed(dsn, prefix, job_id) -> bool:
    from helpers import job_row

    return job_row(dsn, prefix, job_id).get("state") == "completed"


def jobs_total(oban: Oban, queue: str, worker: type, state: str = "completed") -> float:
    value = oban.metrics.registry.get_sample_value(
        "oban_pro_jobs_total",
        {"node": oban.node, "queue": queue, "worker": worker.new({}).worker, "state": state},
    )
    return value or 0.0


async def test_metrics_count_each_instances_own_events(oban_dsn, oban_prefix):
    # Two nodes in this process (handlers are process-wide), each running its own queue.
    first = node(oban_dsn, oban_prefix, "n1", metrics_port=0, queues={"one": 5})
    second = node(oban_dsn, oban_prefix, "n2", metrics_port=0, queues={"two": 5})
    async with first, second:
        await first.enqueue_many([Noop.new({}, queue="one") for _ in range(3)])
        await second.enqueue_many(
            [Noop.new({}, queue="two") for _ in range(2)] + [Fail.new({}, queue="two")]
        )
        await wait_until(
            lambda: (
                jobs_total(first, "one", Noop) == 3
                and jobs_total(second, "two", Noop) == 2
                and jobs_total(second, "two", Fail, "retryable") >= 1
            ),
            message="each node's metrics to count its own jobs",
        )
        assert jobs_total(first, "two", Noop) == 0 and jobs_total(second, "one", Noop) == 0
        registry = first.metrics.registry
        assert (
            registry.get_sample_value("oban_pro_jobs_fetched_total", {"node": "n1", "queue": "one"})
            == 3
        )
        assert registry.get_sample_value("oban_pro_ack_batch_size_count", {"node": "n1"}) >= 1
        assert registry.get_sample_value("oban_pro_leader", {"node": "n1"}) in (0.0, 1.0)
    # Stopped nodes detach: nothing stays subscribed.
    assert not telemetry.listening("oban.job.stop")
