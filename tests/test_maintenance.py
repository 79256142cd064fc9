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
from plugin_support import FakeNode, store

from oban_pro import Job
from oban_pro.client import Client
from oban_pro.coordinator.leader import Leader
from oban_pro.coordinator.notifier import Notifier
from oban_pro.cron import CronEntry
from oban_pro.plugins.lifeline import Lifeline
from oban_pro.plugins.pruner import Pruner
from oban_pro.plugins.scheduler import Scheduler
from oban_pro.plugins.stager import Stager
from oban_pro.queries import Queries
from oban_pro.store import Store

pytestmark = pytest.mark.asyncio


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


def add_producer(dsn, prefix, uuid, node, queue="default", age=0.0, meta="{}"):
    query(
        dsn,
        f'INSERT INTO "{prefix}".oban_producers (uuid, name, node, queue, meta, '
        f"started_at, updated_at) VALUES (%s, 'Oban', %s, %s, %s::jsonb, "
        f"timezone('UTC', now()), timezone('UTC', now()) - make_interval(secs => %s))",
        (uuid, node, queue, meta, age),
    )


# Conformance: every test here runs on the embedded PostgreSQL 18 and on Debian's 15.
@pytest.fixture
def oban_dsn(any_server_dsn):
    return any_server_dsn


# -- stager --------------------------------------------------------------------------------


async def test_stager_makes_due_jobs_available_and_notifies(oban_dsn, oban_prefix, pool):
    client = Client(oban_dsn, prefix=oban_prefix)
    soon = client.enqueue(Job("app.W", queue="mail", schedule_in=30))
    later = client.enqueue(Job("app.W", queue="mail", schedule_in=3600))
    node = FakeNode()
    stager = Stager(store(pool, oban_prefix), node, interval=1.0)
    listener = psycopg.connect(oban_dsn, autocommit=True)
    listener.execute(f'LISTEN "{oban_prefix}.oban_insert"')
    try:
        assert await stager.step() == 0
        assert await stager.step(now=naive(datetime.now(UTC) + timedelta(seconds=60))) == 1
        assert job_row(oban_dsn, oban_prefix, soon.id)["state"] == "available"
        assert job_row(oban_dsn, oban_prefix, later.id)["state"] == "scheduled"
        assert node.staged == ["mail"]
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
    pruner = Pruner(store(pool, oban_prefix), interval=60, max_age=3600, limit=2)
    assert await pruner.step() == 2
    assert await pruner.step() == 1
    assert await pruner.step() == 0
    left = {r[0] for r in query(oban_dsn, f"SELECT id FROM {p}.oban_jobs")}
    assert left == {ids[3], ids[4]}
    # with the clock moved a day ahead the recent discarded job goes too, the available stays
    later = naive(datetime.now(UTC) + timedelta(days=1))
    assert await pruner.step(now=later) == 1
    assert await Pruner(store(pool, oban_prefix), interval=60, max_age=0, limit=10).step() == 0


# -- lifeline ------------------------------------------------------------------------------


async def test_lifeline_rescues_only_jobs_of_producers_known_to_heartbeat(
    oban_dsn, oban_prefix, pool
):
    """compat.md §4: liveness judges only jobs whose producer uuid is known to heartbeat (a row
    that exists, or one the lifeline remembers having seen); the queue proves nothing."""
    import uuid as uuidlib

    # Heartbeats are judged from the later of the last beat and the server's start, so the ttl
    # here must be shorter than the (test) server's uptime.
    uptime = await wait_until(lambda: (u := server_uptime(oban_dsn)) >= 4 and u, timeout=10)
    ttl = min(30.0, uptime / 2)
    p = f'"{oban_prefix}"'
    with Client(oban_dsn, prefix=oban_prefix) as client:
        dead, alive, remembered, elixir, py_recent, py_dead, spent = client.enqueue_many(
            [Job("app.W") for _ in range(6)] + [Job("app.W", max_attempts=1)]
        )
    dead_uuid, live_uuid, gone_uuid = (str(uuidlib.uuid4()) for _ in range(3))
    py_recent_uuid, py_dead_uuid = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    own_meta = json.dumps({"heartbeat_ttl": ttl})
    add_producer(oban_dsn, oban_prefix, dead_uuid, "dead-node", age=ttl + 60, meta=own_meta)
    add_producer(oban_dsn, oban_prefix, live_uuid, "live-node", age=0, meta=own_meta)
    add_producer(oban_dsn, oban_prefix, gone_uuid, "gone-node", age=ttl + 60, meta=own_meta)
    # Oban.py's rows carry no heartbeat_ttl (it refreshes them every 15 s): they are judged by
    # foreign_ttl (60 s by default; shorter here, within the young test server's uptime).
    add_producer(oban_dsn, oban_prefix, py_recent_uuid, "py-node", age=uptime / 2)
    add_producer(oban_dsn, oban_prefix, py_dead_uuid, "py-dead", age=uptime + 60)
    long_ago = naive(datetime.now(UTC) - timedelta(hours=2))
    set_executing(oban_dsn, oban_prefix, dead.id, "dead-node", dead_uuid)
    set_executing(oban_dsn, oban_prefix, alive.id, "live-node", live_uuid, attempted_at=long_ago)
    set_executing(oban_dsn, oban_prefix, remembered.id, "gone-node", gone_uuid)
    # Elixir's open-source engine: a valid uuid that never heartbeats, on a queue that a
    # heartbeating producer (live-node) also serves.
    set_executing(oban_dsn, oban_prefix, elixir.id, "elixir@host", str(uuidlib.uuid4()))
    set_executing(oban_dsn, oban_prefix, py_recent.id, "py-node", py_recent_uuid)
    set_executing(oban_dsn, oban_prefix, py_dead.id, "py-dead", py_dead_uuid)
    set_executing(oban_dsn, oban_prefix, spent.id, "dead-node", dead_uuid)

    def lifeline(node=None, **kw):
        options = {"heartbeat_ttl": ttl, "reconnect_bound": 0.0, "rescue_after": 3600,
                   "foreign_ttl": uptime * 0.75} | kw  # fmt: skip
        return Lifeline(store(pool, oban_prefix), node or FakeNode(), interval=5, **options)

    # Silence counts from no earlier than the server's start plus the slowest reconnect.
    assert await lifeline(reconnect_bound=uptime).step() == 0
    node = FakeNode()
    lifeline_ = lifeline(node)
    await lifeline_.observe()  # it sees gone-node's row; then the row vanishes
    query(oban_dsn, f"DELETE FROM {p}.oban_producers WHERE uuid = %s", (gone_uuid,))
    assert gone_uuid in lifeline_.known_producers
    assert await lifeline_.step() == 4
    states = {j.id: job_row(oban_dsn, oban_prefix, j.id)["state"]
              for j in (dead, alive, remembered, elixir, py_recent, py_dead, spent)}  # fmt: skip
    assert states == {dead.id: "available", alive.id: "executing", remembered.id: "available",
                      elixir.id: "executing", py_recent.id: "executing",
                      py_dead.id: "available", spent.id: "discarded"}  # fmt: skip
    row = job_row(oban_dsn, oban_prefix, dead.id)
    assert row["meta"]["rescued"] == 1
    error = row["errors"][-1]["error"]
    assert "dead-node" in error and "stopped heartbeating" in error, error
    assert (
        "stopped heartbeating"
        in job_row(oban_dsn, oban_prefix, remembered.id)["errors"][-1]["error"]
    )
    # the Elixir job waits for the long time-based fallback, and then only
    later = naive(datetime.now(UTC) + timedelta(hours=1, minutes=1))
    query(oban_dsn, f"UPDATE {p}.oban_producers SET updated_at = %s", (later,))  # still beating
    assert await lifeline().step(now=later) == 1
    error = job_row(oban_dsn, oban_prefix, elixir.id)["errors"][-1]["error"]
    assert "rescue_after" in error and "never seen heartbeating" in error, error
    # dead producer rows were deleted once none of their jobs was executing
    uuids = {r[0] for r in query(oban_dsn, f"SELECT uuid::text FROM {p}.oban_producers")}
    assert uuids == {live_uuid, py_recent_uuid}
    assert node.rescued == [{"default"}]  # the spent job was discarded, not given back


async def test_lifeline_on_a_follower_observes_but_never_rescues(oban_dsn, oban_prefix, pool):
    import uuid as uuidlib

    uptime = await wait_until(lambda: (u := server_uptime(oban_dsn)) >= 4 and u, timeout=10)
    with Client(oban_dsn, prefix=oban_prefix) as client:
        job = client.enqueue(Job("app.W"))
    dead_uuid = str(uuidlib.uuid4())
    add_producer(oban_dsn, oban_prefix, dead_uuid, "dead-node", age=120)
    set_executing(oban_dsn, oban_prefix, job.id, "dead-node", dead_uuid)
    follower = Lifeline(
        store(pool, oban_prefix),
        FakeNode(is_leader=False),
        interval=5,
        heartbeat_ttl=uptime / 2,
        reconnect_bound=0.0,
        rescue_after=3600,
    )
    assert await follower.step() == 0
    assert follower.known_producers == {dead_uuid}
    assert job_row(oban_dsn, oban_prefix, job.id)["state"] == "executing"


def server_uptime(dsn: str) -> float:
    rows = query(dsn, "SELECT extract(epoch FROM now() - pg_postmaster_start_time())::float8")
    return float(rows[0][0])


# -- leadership ----------------------------------------------------------------------------


async def test_leader_lease_takeover_and_resign(oban_dsn, oban_prefix, pool):
    queries = Queries(oban_prefix)
    a = Leader(store=Store(pool, queries), name="Oban", node="a", ttl=30)
    b = Leader(store=Store(pool, queries), name="Oban", node="b", ttl=30)
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
    db = store(pool, oban_prefix)
    first, second = Scheduler(db, FakeNode(), [entry]), Scheduler(db, FakeNode(), [entry])
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


async def test_reboot_entries_are_inserted_once_by_the_node_leading_at_its_first_evaluation(
    oban_dsn, oban_prefix, pool
):
    """@reboot runs once per node start, on the leader (as in Elixir Oban): at the first
    evaluation, never again on that node; a follower's first evaluation settles it too, so a
    follower that becomes leader later inserts none."""
    boot = CronEntry(expression="@reboot", worker="app.Boot")
    every = CronEntry(expression="* * * * *", worker="app.Every")
    db = store(pool, oban_prefix)
    leader, follower = FakeNode(), FakeNode(is_leader=False)
    booted, other = Scheduler(db, leader, [boot, every]), Scheduler(db, follower, [boot, every])
    minute = datetime(2026, 11, 22, 10, 5, 1, tzinfo=UTC)
    assert sorted(j.worker for j in await booted.step(now=minute)) == ["app.Boot", "app.Every"]
    assert await other.step(now=minute) == []  # not leading: nothing, and its boot is settled
    later = minute + timedelta(minutes=1)
    assert [j.worker for j in await booted.step(now=later)] == ["app.Every"]
    follower.is_leader, leader.is_leader = True, False
    assert [j.worker for j in await other.step(now=later + timedelta(minutes=1))] == ["app.Every"]
    workers = query(oban_dsn, f'SELECT worker FROM "{oban_prefix}".oban_jobs ORDER BY id')
    assert [w for (w,) in workers] == ["app.Boot", "app.Every", "app.Every", "app.Every"]


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


# -- heartbeat -----------------------------------------------------------------------------


class _FakeProducer:
    def __init__(self, uuid: str, queue: str) -> None:
        self.uuid, self.queue = uuid, queue

    def meta_json(self) -> str:
        return json.dumps({"local_limit": 1, "heartbeat_ttl": 30.0})


async def test_heartbeat_does_not_bring_back_the_row_of_a_producer_stopped_during_the_beat(
    oban_dsn, oban_prefix, caplog
):
    import uuid as uuidlib

    from oban_pro.coordinator.heartbeat import Heartbeat

    stopped = str(uuidlib.uuid4())
    calls: list[int] = []

    def producers() -> list:
        calls.append(1)  # running when the beat starts, stopped (row deleted) by its end
        return [_FakeProducer(stopped, "extra")] if len(calls) == 1 else []

    heartbeat = Heartbeat(
        conninfo=oban_dsn, connect_kwargs={}, queries=Queries(oban_prefix), name="Oban",
        node="me", interval=1.0, producers=producers, running=lambda: [], on_lost=print,
    )  # fmt: skip
    try:
        await heartbeat.beat()
    finally:
        await heartbeat.stop()
    rows = query(oban_dsn, f'SELECT uuid FROM "{oban_prefix}".oban_producers WHERE uuid = %s',
                 (stopped,))  # fmt: skip
    assert rows == [] and len(calls) == 2
    assert "registered it again" not in caplog.text


async def test_heartbeat_registers_vanished_rows_and_reports_jobs_no_longer_ours(
    oban_dsn, oban_prefix, caplog
):
    import uuid as uuidlib

    from oban_pro.coordinator.heartbeat import Heartbeat, RunningJob

    p = f'"{oban_prefix}"'
    mine, other = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    with Client(oban_dsn, prefix=oban_prefix) as client:
        ours, rescued, rerun, deleted, cancelled = client.enqueue_many(
            [Job("app.W") for _ in range(5)]
        )
    for job in (ours, rescued, rerun, deleted, cancelled):
        set_executing(oban_dsn, oban_prefix, job.id, "me", mine)
    query(oban_dsn, f"UPDATE {p}.oban_jobs SET state = 'available' WHERE id = %s", (rescued.id,))
    set_executing(oban_dsn, oban_prefix, rerun.id, "elsewhere", other, attempt=2)
    query(oban_dsn, f"DELETE FROM {p}.oban_jobs WHERE id = %s", (deleted.id,))
    query(oban_dsn, f"UPDATE {p}.oban_jobs SET state = 'cancelled' WHERE id = %s",
          (cancelled.id,))  # fmt: skip
    lost: list = []
    heartbeat = Heartbeat(
        conninfo=oban_dsn, connect_kwargs={}, queries=Queries(oban_prefix), name="Oban",
        node="me", interval=1.0, producers=lambda: [_FakeProducer(mine, "default")],
        running=lambda: [RunningJob(j.id, 1, mine)
                         for j in (ours, rescued, rerun, deleted, cancelled)],
        on_lost=lost.extend,
    )  # fmt: skip
    try:
        await heartbeat.beat()  # no row yet: registered (again)
        assert "was gone; registered it again" in caplog.text
        rows = query(oban_dsn, f"SELECT node, queue, meta->>'heartbeat_ttl' "
                               f"FROM {p}.oban_producers WHERE uuid = %s", (mine,))  # fmt: skip
        assert rows == [("me", "default", "30.0")]
        assert {(x.job_id, x.attempt, x.state, x.node) for x in lost} == {
            (rescued.id, 1, "available", None),
            (rerun.id, 1, "executing", "elsewhere"),
            (deleted.id, 1, "deleted", None),
            (cancelled.id, 1, "cancelled", None),
        }
        # a broken connection is replaced at the next beat
        conn = heartbeat._connection._conn
        assert conn is not None
        await conn.close()
        lost.clear()
        caplog.clear()
        await heartbeat.beat()
        assert len(lost) == 4 and "registered it again" not in caplog.text
    finally:
        await heartbeat.stop()


async def test_after_a_stall_of_every_process_the_common_silence_is_not_death(
    oban_dsn, oban_prefix, pool
):
    """A stalled machine or VM stops every heartbeat, the judge's included: silence is counted
    up to the freshest heartbeat in the table, so nothing is rescued until heartbeats flow
    again and one producer still stays silent."""
    import uuid as uuidlib

    uptime = await wait_until(lambda: (u := server_uptime(oban_dsn)) >= 4 and u, timeout=10)
    ttl = uptime / 4
    meta = json.dumps({"heartbeat_ttl": ttl})
    with Client(oban_dsn, prefix=oban_prefix) as client:
        on_a, on_b = client.enqueue_many([Job("app.W"), Job("app.W")])
    a, b = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    add_producer(oban_dsn, oban_prefix, a, "a", age=uptime / 2, meta=meta)
    add_producer(oban_dsn, oban_prefix, b, "b", age=uptime / 2, meta=meta)
    set_executing(oban_dsn, oban_prefix, on_a.id, "a", a)
    set_executing(oban_dsn, oban_prefix, on_b.id, "b", b)
    lifeline = Lifeline(store(pool, oban_prefix), FakeNode(), interval=5, heartbeat_ttl=ttl,
                        reconnect_bound=0.0, rescue_after=3600)  # fmt: skip
    assert await lifeline.step() == 0  # both silent alike: the stall, not death
    query(oban_dsn, f'UPDATE "{oban_prefix}".oban_producers SET updated_at = '
                    f"timezone('UTC', now()) WHERE uuid = %s", (a,))  # fmt: skip
    assert await lifeline.step() == 1  # a beats again, b does not
    assert job_row(oban_dsn, oban_prefix, on_b.id)["state"] == "available"
    assert job_row(oban_dsn, oban_prefix, on_a.id)["state"] == "executing"
