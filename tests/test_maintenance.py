"""Stager, pruner, lifeline, leadership, cron and the notifier against a real database.

Time-sensitive statements take ``now`` so these tests move the clock instead of sleeping.
"""

from __future__ import annotations

import base64
import gzip
import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from helpers import job_row, query, wait_until
from psycopg_pool import AsyncConnectionPool

from oban_pro import Job
from oban_pro.client import Client
from oban_pro.coordinator.leader import Leader
from oban_pro.coordinator.notifier import Notifier
from oban_pro.cron import CronEntry
from oban_pro.enqueue import insert_steps, run_async
from oban_pro.plugins.lifeline import Lifeline
from oban_pro.plugins.pruner import Pruner
from oban_pro.plugins.scheduler import Scheduler
from oban_pro.plugins.stager import Stager
from oban_pro.queries import Queries

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def pool(oban_dsn):
    async with AsyncConnectionPool(
        oban_dsn, min_size=1, max_size=2, open=False, kwargs={"autocommit": True}
    ) as pool:
        yield pool


def naive(dt: datetime) -> datetime:
    return dt.astimezone(UTC).replace(tzinfo=None)


def set_executing(dsn, prefix, job_id, node, uuid, attempted_at=None, attempt=1):
    query(
        dsn,
        f"UPDATE \"{prefix}\".oban_jobs SET state = 'executing', attempt = %s, "
        f"attempted_by = ARRAY[%s, %s], attempted_at = coalesce(%s, timezone('UTC', now())) "
        f"WHERE id = %s",
        (attempt, node, uuid, attempted_at, job_id),
    )


def add_producer(dsn, prefix, uuid, node, queue="default", age=0.0):
    query(
        dsn,
        f'INSERT INTO "{prefix}".oban_producers (uuid, name, node, queue, meta, '
        f"started_at, updated_at) VALUES (%s, 'Oban', %s, %s, '{{}}', "
        f"timezone('UTC', now()), timezone('UTC', now()) - make_interval(secs => %s))",
        (uuid, node, queue, age),
    )


# -- stager --------------------------------------------------------------------------------


async def test_stager_makes_due_jobs_available_and_notifies(oban_dsn, oban_prefix, pool):
    client = Client(oban_dsn, prefix=oban_prefix)
    soon = client.enqueue(Job("app.W", queue="mail", schedule_in=30))
    later = client.enqueue(Job("app.W", queue="mail", schedule_in=3600))
    woken: list[str] = []
    stager = Stager(pool, Queries(oban_prefix), woken.append)
    listener = psycopg.connect(oban_dsn, autocommit=True)
    listener.execute(f'LISTEN "{oban_prefix}.oban_insert"')
    try:
        assert await stager.step() == 0
        assert await stager.step(now=naive(datetime.now(UTC) + timedelta(seconds=60))) == 1
        assert job_row(oban_dsn, oban_prefix, soon.id)["state"] == "available"
        assert job_row(oban_dsn, oban_prefix, later.id)["state"] == "scheduled"
        assert woken == ["mail"]
        notices = [n.payload for n in listener.notifies(timeout=2, stop_after=1)]
        assert [json.loads(n) for n in notices] == [{"queue": "mail"}]
    finally:
        listener.close()
        client.close()


# -- pruner --------------------------------------------------------------------------------


async def test_pruner_deletes_old_finished_jobs_in_batches(oban_dsn, oban_prefix, pool):
    with Client(oban_dsn, prefix=oban_prefix) as client:
        jobs = client.enqueue_many([Job("app.W") for _ in range(5)])
    ids = [j.id for j in jobs]
    p = f'"{oban_prefix}"'
    query(
        oban_dsn,
        f"UPDATE {p}.oban_jobs SET state = 'completed', completed_at = "
        f"timezone('UTC', now()) - interval '2 hours' WHERE id = ANY(%s)",
        (ids[:3],),
    )
    query(
        oban_dsn,
        f"UPDATE {p}.oban_jobs SET state = 'discarded', discarded_at = "
        f"timezone('UTC', now()) WHERE id = %s",
        (ids[3],),
    )
    pruner = Pruner(pool, Queries(oban_prefix), max_age=3600, limit=2)
    assert await pruner.step() == 2
    assert await pruner.step() == 1
    assert await pruner.step() == 0
    left = {r[0] for r in query(oban_dsn, f"SELECT id FROM {p}.oban_jobs")}
    assert left == {ids[3], ids[4]}
    # with the clock moved a day ahead the recent discarded job goes too, the available stays
    later = naive(datetime.now(UTC) + timedelta(days=1))
    assert await pruner.step(now=later) == 1
    assert await Pruner(pool, Queries(oban_prefix), max_age=0, limit=10).step() == 0


# -- lifeline ------------------------------------------------------------------------------


async def test_lifeline_rescues_only_jobs_of_dead_producers(oban_dsn, oban_prefix, pool):
    import uuid as uuidlib

    # Heartbeats are judged from the later of the last beat and the server's start, so the ttl
    # here must be shorter than the (test) server's uptime.
    uptime = await wait_until(lambda: (u := server_uptime(oban_dsn)) >= 4 and u, timeout=10)

    with Client(oban_dsn, prefix=oban_prefix) as client:
        dead, alive, missing, foreign, spent = client.enqueue_many(
            [Job("app.W") for _ in range(4)] + [Job("app.W", queue="elixir", max_attempts=1)]
        )
    dead_uuid, live_uuid = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    add_producer(oban_dsn, oban_prefix, dead_uuid, "dead-node", age=120)
    add_producer(oban_dsn, oban_prefix, live_uuid, "live-node", age=0)
    long_ago = naive(datetime.now(UTC) - timedelta(hours=2))
    set_executing(oban_dsn, oban_prefix, dead.id, "dead-node", dead_uuid)
    set_executing(oban_dsn, oban_prefix, alive.id, "live-node", live_uuid, attempted_at=long_ago)
    set_executing(oban_dsn, oban_prefix, missing.id, "gone-node", str(uuidlib.uuid4()))
    # An Elixir (open-source) job: valid uuid, but its queue has no heartbeating producers.
    set_executing(oban_dsn, oban_prefix, foreign.id, "elixir@host", str(uuidlib.uuid4()))
    query(
        oban_dsn,
        f"UPDATE \"{oban_prefix}\".oban_jobs SET queue = 'elixir' WHERE id = %s",
        (foreign.id,),
    )
    set_executing(oban_dsn, oban_prefix, spent.id, "dead-node", dead_uuid)
    young = Lifeline(pool, Queries(oban_prefix), heartbeat_ttl=uptime + 60, rescue_after=3600)
    assert await young.step() == 0  # a server younger than the ttl: every producer has a grace
    rescued: list[int] = []
    lifeline = Lifeline(
        pool,
        Queries(oban_prefix),
        heartbeat_ttl=min(30.0, uptime / 2),
        rescue_after=3600,
        on_rescued=lambda n, queues: rescued.append(n),
    )
    assert await lifeline.step() == 3
    row = job_row(oban_dsn, oban_prefix, dead.id)
    assert row["state"] == "available" and row["meta"]["rescued"] == 1
    assert (
        "dead-node" in row["errors"][-1]["error"]
        and "stopped heartbeating" in row["errors"][-1]["error"]
    )
    assert job_row(oban_dsn, oban_prefix, missing.id)["state"] == "available"
    assert "no producer row" in job_row(oban_dsn, oban_prefix, missing.id)["errors"][-1]["error"]
    assert job_row(oban_dsn, oban_prefix, spent.id)["state"] == "discarded"
    # the live producer's job is never rescued, however long it has been running
    assert job_row(oban_dsn, oban_prefix, alive.id)["state"] == "executing"
    # the foreign job waits for the long time-based fallback
    assert job_row(oban_dsn, oban_prefix, foreign.id)["state"] == "executing"
    later = naive(datetime.now(UTC) + timedelta(hours=1, minutes=1))
    lifeline_late = Lifeline(pool, Queries(oban_prefix), heartbeat_ttl=10**9, rescue_after=3600)
    assert await lifeline_late.step(now=later) == 1
    assert "rescue_after" in job_row(oban_dsn, oban_prefix, foreign.id)["errors"][-1]["error"]
    # the dead producer row was deleted once none of its jobs was executing
    uuids = {
        r[0] for r in query(oban_dsn, f'SELECT uuid::text FROM "{oban_prefix}".oban_producers')
    }
    assert uuids == {live_uuid}
    assert rescued == [3]


def server_uptime(dsn: str) -> float:
    rows = query(dsn, "SELECT extract(epoch FROM now() - pg_postmaster_start_time())::float8")
    return float(rows[0][0])


# -- leadership ----------------------------------------------------------------------------


async def test_leader_lease_takeover_and_resign(oban_dsn, oban_prefix, pool):
    queries = Queries(oban_prefix)
    a = Leader(pool=pool, queries=queries, name="Oban", node="a", ttl=30)
    b = Leader(pool=pool, queries=queries, name="Oban", node="b", ttl=30)
    assert await a.elect() is True
    assert await b.elect() is False
    assert await a.elect() is True  # refresh keeps it
    ((elected, expires),) = query(
        oban_dsn, f'SELECT elected_at, expires_at FROM "{oban_prefix}".oban_leaders'
    )
    assert abs((expires - elected).total_seconds() - 30) < 2  # a real 30 s lease, not 3
    listener = psycopg.connect(oban_dsn, autocommit=True)
    listener.execute(f'LISTEN "{oban_prefix}.oban_leader"')
    try:
        await a.resign()
        notice = [n.payload for n in listener.notifies(timeout=2, stop_after=1)]
        assert [json.loads(n) for n in notice] == [{"down": "Oban"}]
    finally:
        listener.close()
    assert await b.elect() is True and a.is_leader is False
    # an expired lease is taken over
    query(
        oban_dsn,
        f'UPDATE "{oban_prefix}".oban_leaders SET expires_at = '
        f"timezone('UTC', now()) - interval '1 second'",
    )
    assert await a.elect() is True


# -- cron ----------------------------------------------------------------------------------


async def test_cron_inserts_each_minute_once_across_schedulers(oban_dsn, oban_prefix, pool):
    entry = CronEntry(expression="*/5 * * * *", worker="app.Cron", args={"k": 1})
    queries = Queries(oban_prefix)

    async def insert(jobs):
        async with pool.connection() as conn:
            return await run_async(conn, insert_steps(queries, jobs))

    first, second = Scheduler([entry], insert), Scheduler([entry], insert)
    minute = datetime(2026, 11, 22, 10, 5, 17, tzinfo=UTC)
    assert len(await first.step(now=minute)) == 1
    assert await second.step(now=minute) == []  # e.g. a new leader after failover
    assert await first.step(now=minute.replace(minute=6)) == []  # not due
    assert len(await second.step(now=minute.replace(minute=10))) == 1
    rows = query(oban_dsn, f'SELECT meta FROM "{oban_prefix}".oban_jobs ORDER BY id')
    assert len(rows) == 2
    meta = rows[0][0]
    assert meta["cron"] is True and meta["cron_expr"] == "*/5 * * * *"
    assert meta["cron_name"] == entry.name and meta["cron_tz"] == "Etc/UTC"


# -- notifier ------------------------------------------------------------------------------


async def test_notifier_decodes_every_form_and_survives_garbage(oban_dsn, oban_prefix, caplog):
    got: list[dict] = []
    notifier = Notifier(oban_dsn, oban_prefix)
    notifier.listen("insert", got.append)
    await notifier.start()
    try:
        packed = base64.b64encode(gzip.compress(b'{"queue":"b"}')).decode()
        payloads = ['{"queue":"a"}', packed, "Z:" + packed, "not json", "H4sIgarbage", "[1,2]"]
        channel = f"{oban_prefix}.oban_insert"
        for payload in payloads:
            query(oban_dsn, "SELECT pg_notify(%s, %s)", (channel, payload))
        query(oban_dsn, "SELECT pg_notify(%s, %s)", (channel, '{"queue":"after"}'))
        await wait_until(lambda: len(got) == 4, timeout=5, message="4 decoded notices")
        assert [p["queue"] for p in got] == ["a", "b", "b", "after"]
        assert sum("malformed" in r.message for r in caplog.records) == 3
    finally:
        await notifier.stop()
