"""Oban.py-style programs on a real oban_pro node: the pool given as ``Oban(pool=...)``, the job
and queue operations Oban.py has, and ``current_job()`` inside worker processes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from helpers import FAST_TIMINGS, job_row, query, wait_until
from psycopg_pool import AsyncConnectionPool

from compat.compat_workers import SyncWhoAmI, Touch, WaitForFile, WhoAmI, greet
from oban_pro import Job, Oban, QueueInfo
from oban_pro.errors import JobNotFoundError, ValidationError
from oban_pro.term import decode_recorded

pytestmark = pytest.mark.asyncio

FAST = dict(FAST_TIMINGS, processes=2, imports=["compat.compat_workers"], shutdown_grace_period=5.0)


async def completed(dsn, prefix, job_id, state="completed"):
    return await wait_until(
        lambda: (row := job_row(dsn, prefix, job_id)).get("state") == state and row,
        timeout=30,
        message=f"job {job_id} {state}",
    )


def recorded(row):
    return decode_recorded(row["meta"]["return"])


async def test_documented_node_start_with_a_pool_and_current_job_in_children(oban_dsn, oban_prefix):
    pool = await Oban.create_pool(oban_dsn, min_size=1, max_size=3)
    try:
        assert (pool.min_size, pool.max_size) == (1, 3)
        async with Oban(pool=pool, prefix=oban_prefix, queues={"default": 10}, **FAST) as oban:
            assert oban.config.dsn is None  # everything comes through the given pool
            async_job = await WhoAmI.enqueue({"n": 1}, trace="not stored")
            assert async_job.extra == {"trace": "not stored"}
            assert async_job.tags == ["api", "compat"]
            sync_job = await SyncWhoAmI.enqueue({})
            fn_job = await greet.enqueue("world", punctuation="?")
            for enqueued in (async_job, sync_job, fn_job):
                await completed(oban_dsn, oban_prefix, enqueued.id)
    finally:
        await pool.close()
    async_row = job_row(oban_dsn, oban_prefix, async_job.id)
    assert recorded(async_row) == {
        "same": True, "id": async_job.id, "attempt": 1, "extra": {}, "cancelled": False,
    }  # fmt: skip
    tags = query(oban_dsn, f'SELECT tags FROM "{oban_prefix}".oban_jobs WHERE id = {async_job.id}')
    assert tags == [(["api", "compat"],)]
    assert recorded(job_row(oban_dsn, oban_prefix, sync_job.id)) == {
        "same": True,
        "id": sync_job.id,
    }
    assert recorded(job_row(oban_dsn, oban_prefix, fn_job.id)) == {
        "text": "hello world?", "id": fn_job.id,
    }  # fmt: skip


async def test_a_pool_made_without_autocommit_works_too(oban_dsn, oban_prefix, tmp_path):
    """Oban.py's pools are plain psycopg pools (transactions, not autocommit)."""
    async with AsyncConnectionPool(oban_dsn, min_size=1, max_size=4, open=False) as pool:
        async with Oban(pool=pool, prefix=oban_prefix, queues={"default": 2}, name="compat-tx",
                        **FAST) as oban:  # fmt: skip
            job_ = await oban.enqueue(Touch.new({"path": str(tmp_path / "done")}))
            await completed(oban_dsn, oban_prefix, job_.id)
            assert (tmp_path / "done").exists()


async def test_enqueue_many_takes_jobs_or_an_iterable(oban_dsn, oban_prefix):
    oban = Oban(dsn=oban_dsn, prefix=oban_prefix, name="compat-many")
    try:
        jobs = [Job("app.W", args={"i": i}) for i in range(3)]
        assert [j.id is not None for j in await oban.enqueue_many(*jobs[:2])] == [True, True]
        assert len(await oban.enqueue_many([jobs[2]])) == 1
        assert len(await oban.enqueue_many(Job("app.W", args={"g": i}) for i in range(4))) == 4
        with pytest.raises(TypeError, match="not both"):
            await oban.enqueue_many([jobs[0]], jobs[1])
        with pytest.raises(TypeError, match="Job"):
            await oban.enqueue_many({"worker": "app.W"})
    finally:
        await oban.stop()


async def test_enqueue_state_and_scheduling_as_obanpy(oban_dsn, oban_prefix):
    oban = Oban(dsn=oban_dsn, prefix=oban_prefix, name="compat-state")
    try:
        far = datetime(2100, 1, 1, tzinfo=UTC)
        both = await oban.enqueue(Job("app.W", scheduled_at=far, scheduled_in=60))
        assert both.state == "scheduled"
        assert both.scheduled_at - datetime.now(UTC) < timedelta(seconds=61)
        past = await oban.enqueue(Job("app.W", scheduled_at=datetime(2000, 1, 1, tzinfo=UTC)))
        assert past.state == "scheduled"  # the stager makes it available, as in Oban.py
        held = await oban.enqueue(Job("app.W", state="suspended"))
        assert held.state == "suspended"
        done = await oban.enqueue(Job("app.W", state="completed"))
        assert job_row(oban_dsn, oban_prefix, done.id)["state"] == "completed"
    finally:
        await oban.stop()


async def test_update_job_and_update_many_jobs(oban_dsn, oban_prefix):
    oban = Oban(dsn=oban_dsn, prefix=oban_prefix, name="compat-update")
    try:
        job_ = await oban.enqueue(Job("app.W", args={"a": 1}, tags=["x"]))
        other = await oban.enqueue(Job("app.W", args={"b": 2}))
        updated = await oban.update_job(job_, {"priority": 3, "tags": ["Urgent", "x"]})
        assert (updated.priority, updated.tags) == (3, ["urgent", "x"])
        assert (job_.priority, job_.tags) == (3, ["urgent", "x"])  # the caller's object too
        moved = await oban.update_job(job_.id, {"scheduled_in": 300, "queue": "critical"})
        assert (moved.state, moved.queue) == ("scheduled", "critical")
        back = await oban.update_job(job_.id, {"schedule_in": 0})
        assert back.state == "available"
        many = await oban.update_many_jobs(
            [job_, other.id], lambda j: {"meta": {**j.meta, "batch": 7}, "tags": j.tags + ["b"]}
        )
        assert [j.meta["batch"] for j in many] == [7, 7]
        assert [j.tags for j in many] == [["b", "urgent", "x"], ["b"]]
        row = query(
            oban_dsn, f'SELECT meta, tags FROM "{oban_prefix}".oban_jobs WHERE id = {other.id}'
        )
        assert row == [({"batch": 7}, ["b"])]
        with pytest.raises(JobNotFoundError, match="999999"):
            await oban.update_job(999_999, {"priority": 1})
        with pytest.raises(ValueError):  # Oban.py raises ValueError for a missing job
            await oban.update_job(999_999, {"priority": 1})
        with pytest.raises(ValidationError) as err:
            await oban.update_job(job_, {"priority": 11})
        assert err.value.field == "priority"
        priority = f'SELECT priority FROM "{oban_prefix}".oban_jobs WHERE id = {job_.id}'
        assert query(oban_dsn, priority) == [(3,)] and job_.priority == 3  # nothing written
        with pytest.raises(ValidationError) as err:
            await oban.update_job(job_, {"attempt": 5})
        assert err.value.field == "attempt"
        with pytest.raises(ValidationError):
            await oban.retry_job(Job("app.W"))  # never enqueued: no id
    finally:
        await oban.stop()


async def test_start_stop_queue_paused_queues_and_queue_info(oban_dsn, oban_prefix, tmp_path):
    a = Oban(dsn=oban_dsn, prefix=oban_prefix, node="a", name="compat-q",
             queues={"default": 2, "held": {"limit": 1, "paused": True}}, **FAST)  # fmt: skip
    b = Oban(dsn=oban_dsn, prefix=oban_prefix, node="b", name="compat-q",
             queues={"default": 2}, **FAST)  # fmt: skip
    client = Oban(dsn=oban_dsn, prefix=oban_prefix, node="client", name="compat-q-client")
    await a.start()
    await b.start()
    try:
        info = a.check_queue("held")
        assert isinstance(info, QueueInfo) and info.paused and info.limit == 1
        assert info.node == "a" and info.started_at.tzinfo is UTC and info.uuid
        held = await a.enqueue(Touch.new({"path": str(tmp_path / "held")}, queue="held"))
        await asyncio.sleep(0.5)
        assert job_row(oban_dsn, oban_prefix, held.id)["state"] == "available"
        await a.resume_queue("held")
        await completed(oban_dsn, oban_prefix, held.id)

        # start a queue on every node (from a client), then only on one node
        await client.start_queue(queue="extra", limit=3)
        await wait_until(lambda: a.check_queue("extra") and b.check_queue("extra"), timeout=10)
        assert {q.queue for q in a.check_all_queues()} == {"default", "held", "extra"}
        await a.start_queue(queue="solo", limit=1, paused=True, node="b")
        await wait_until(lambda: b.check_queue("solo"), timeout=10)
        assert b.check_queue("solo").paused and a.check_queue("solo") is None

        # stop a queue everywhere: a running job finishes first
        gate = tmp_path / "gate"
        running = await a.enqueue(WaitForFile.new({"path": str(gate)}, queue="extra"))
        await wait_until(lambda: job_row(oban_dsn, oban_prefix, running.id)["state"] == "executing")
        stopping = asyncio.create_task(a.stop_queue("extra"))
        await asyncio.sleep(0.3)
        gate.write_text("go")
        await stopping
        await completed(oban_dsn, oban_prefix, running.id)
        await wait_until(lambda: a.check_queue("extra") is None and b.check_queue("extra") is None,
                         timeout=10)  # fmt: skip
        producers = query(
            oban_dsn, f'SELECT node, queue FROM "{oban_prefix}".oban_producers ORDER BY 1, 2'
        )
        assert ("a", "extra") not in producers and ("b", "extra") not in producers
        assert ("b", "solo") in producers

        with pytest.raises(ValidationError) as err:
            await a.start_queue(queue="bad", limit=0)
        assert err.value.field == "limit"
        await a.scale_queue(queue="default", limit=4, node="a")
        assert a.check_queue("default").limit == 4 and b.check_queue("default").limit == 2
    finally:
        await b.stop()
        await a.stop()
        await client.stop()


async def test_leadership_false_never_leads(oban_dsn, oban_prefix):
    follower = Oban(dsn=oban_dsn, prefix=oban_prefix, node="f", name="compat-lead",
                    queues={"default": 1}, leadership=False, **FAST)  # fmt: skip
    leader = Oban(dsn=oban_dsn, prefix=oban_prefix, node="l", name="compat-lead",
                  queues={"default": 1}, **FAST)  # fmt: skip
    await follower.start()
    try:
        await asyncio.sleep(1.0)
        assert not follower.is_leader
        await leader.start()
        await wait_until(lambda: leader.is_leader, timeout=10, message="the other node leads")
        assert not follower.is_leader
    finally:
        await leader.stop()
        await follower.stop()
    assert query(oban_dsn, f'SELECT node FROM "{oban_prefix}".oban_leaders') == []


async def test_enqueue_inside_a_sqlalchemy_async_session(oban_dsn, oban_prefix):
    sqlalchemy = pytest.importorskip("sqlalchemy")
    import psycopg
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    async def connect():
        return await psycopg.AsyncConnection.connect(oban_dsn)

    engine = create_async_engine("postgresql+psycopg://", async_creator=connect)
    oban = Oban(dsn=oban_dsn, prefix=oban_prefix, name="compat-sqla")
    try:
        async with AsyncSession(engine) as session:
            async with session.begin():
                await session.execute(sqlalchemy.text("SELECT 1"))
                kept = await oban.enqueue(Job("app.W", args={"kept": True}), conn=session)
        async with AsyncSession(engine) as session:
            async with session.begin():
                await oban.enqueue_many(
                    Job("app.W", args={"gone": 1}), Job("app.W", args={"gone": 2}), conn=session
                )
                await session.rollback()
        async with engine.connect() as conn:
            async with conn.begin():
                via_connection = await oban.enqueue(Job("app.W", args={"conn": 1}), conn=conn)
        args = query(oban_dsn, f'SELECT args FROM "{oban_prefix}".oban_jobs ORDER BY id')
        assert [a for (a,) in args] == [{"kept": True}, {"conn": 1}]
        assert kept.id and via_connection.id
        with pytest.raises(TypeError, match="psycopg"):
            await oban.enqueue(Job("app.W"), conn=object())
    finally:
        await oban.stop()
        await engine.dispose()
