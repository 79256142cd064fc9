"""Store conformance: every Store method against PostgreSQL 18 (embedded) and 15 (Debian), on
each schema layout of compat.md §1 (oban_pro's own, Elixir Oban's migrations, Oban.py's
installer), with rows written the way each engine writes them."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from helpers import query
from psycopg_pool import AsyncConnectionPool
from test_migrations import load_fixture

from oban_pro.migrations import migrate_up, migration_status
from oban_pro.naming import channel
from oban_pro.queries import Queries
from oban_pro.store import (
    ChangedJob,
    FetchedJob,
    KnownProducer,
    LocalProducer,
    RescueRules,
    RunningJob,
    Store,
)

LAYOUTS = ["oban_pro", "elixir", "obanpy"]


@pytest.fixture
def oban_dsn(any_server_dsn):
    return any_server_dsn


@pytest.fixture(params=LAYOUTS)
async def store(request, oban_dsn, oban_empty_prefix):
    layout = request.param
    if layout != "oban_pro":
        fixture = {"elixir": "elixir_v14", "obanpy": "obanpy"}[layout]
        load_fixture(oban_dsn, oban_empty_prefix, fixture)
    migrate_up(oban_dsn, prefix=oban_empty_prefix)
    assert migration_status(oban_dsn, prefix=oban_empty_prefix).layout == layout
    async with AsyncConnectionPool(oban_dsn, min_size=1, max_size=2, open=False,
                                   kwargs={"autocommit": True}) as pool:  # fmt: skip
        yield Store(pool, Queries(oban_empty_prefix))


def insert(dsn, prefix, state, *, queue="q", at=None, uuid_=None, max_attempts=20, meta="{}"):
    """A job row with the columns every engine fills (Elixir's Basic engine shape)."""
    at = at or datetime.now(UTC).replace(tzinfo=None)
    rows = query(
        dsn,
        f'INSERT INTO "{prefix}".oban_jobs (state, queue, worker, args, meta, attempt, '
        f"max_attempts, scheduled_at, attempted_at, completed_at, attempted_by) VALUES "
        f"(%s::text::\"{prefix}\".oban_job_state, %s, 'app.W', '{{}}', %s::jsonb, "
        f"CASE WHEN %s IN ('executing', 'completed') THEN 1 ELSE 0 END, %s, %s, "
        f"CASE WHEN %s IN ('executing', 'completed') THEN %s END, "
        f"CASE WHEN %s = 'completed' THEN %s END, "
        f"CASE WHEN %s = 'executing' THEN ARRAY['n1', %s] ELSE '{{}}'::text[] END) RETURNING id",
        (state, queue, meta, state, max_attempts, at, state, at, state, at, state, uuid_),
    )
    return rows[0][0]


def naive(dt: datetime) -> datetime:
    return dt.astimezone(UTC).replace(tzinfo=None)


async def test_stage_due_makes_due_jobs_available_per_queue(store, oban_dsn):
    prefix = store.prefix
    past = naive(datetime.now(UTC) - timedelta(seconds=5))
    for queue in ("a", "a", "b"):
        insert(oban_dsn, prefix, "scheduled", queue=queue, at=past)
    later = insert(oban_dsn, prefix, "scheduled", at=naive(datetime.now(UTC) + timedelta(hours=1)))
    staged = await store.stage_due(limit=10, channel=channel(prefix, "insert"))
    assert sorted((s.queue, s.count) for s in staged) == [("a", 2), ("b", 1)]
    assert await store.stage_due(limit=10, channel=channel(prefix, "insert")) == []
    state = query(oban_dsn, f'SELECT state::text FROM "{prefix}".oban_jobs WHERE id = %s', (later,))
    assert state == [("scheduled",)]


async def test_prune_finished_deletes_old_ones_in_batches(store, oban_dsn):
    prefix = store.prefix
    old = naive(datetime.now(UTC) - timedelta(hours=2))
    for _ in range(3):
        insert(oban_dsn, prefix, "completed", at=old)
    insert(oban_dsn, prefix, "available")
    assert await store.prune_finished(max_age=3600, limit=2) == 2
    assert await store.prune_finished(max_age=3600, limit=2) == 1
    assert await store.prune_finished(max_age=3600, limit=2) == 0


async def test_producer_rows_rescue_and_dead_producer_deletion(store, oban_dsn):
    prefix = store.prefix
    dead, foreign = str(uuid.uuid4()), str(uuid.uuid4())
    query(oban_dsn,
          f'INSERT INTO "{prefix}".oban_producers (uuid, name, node, queue, meta, started_at, '
          f"updated_at) VALUES (%s, 'Oban', 'n1', 'q', %s::jsonb, timezone('UTC', now()), "
          f"timezone('UTC', now()) - interval '10 minutes')",
          (dead, json.dumps({"heartbeat_ttl": 30})))  # fmt: skip
    orphan = insert(oban_dsn, prefix, "executing", uuid_=dead)
    spent = insert(oban_dsn, prefix, "executing", uuid_=dead, max_attempts=1)
    elixir = insert(oban_dsn, prefix, "executing", uuid_=foreign)  # no row: never heartbeats
    beats = await store.producer_beats(ttl=30, foreign_ttl=60)
    assert [(b.uuid, b.ttl) for b in beats] == [(dead, 30.0)]
    assert isinstance(beats[0].updated_at, datetime)
    rules = RescueRules(ttl=30, foreign_ttl=60, grace=0, rescue_after=3600)
    known = [KnownProducer(b.uuid, b.updated_at, b.ttl) for b in beats]
    # The server may have started moments ago: judge as of 50 minutes from now, with a live
    # producer beating then (silence is counted up to the freshest heartbeat in the table).
    later = naive(datetime.now(UTC) + timedelta(minutes=50))
    query(oban_dsn,
          f'INSERT INTO "{prefix}".oban_producers (uuid, name, node, queue, meta, started_at, '
          f"updated_at) VALUES (%s, 'Oban', 'n2', 'q', '{{}}', %s, %s)",
          (str(uuid.uuid4()), later, later))  # fmt: skip
    rescued = await store.rescue_orphans(rules=rules, known=known, limit=10, now=later)
    assert sorted((r.id, r.queue, r.state) for r in rescued) == [
        (orphan, "q", "available"), (spent, "q", "discarded")
    ]  # fmt: skip
    left = query(oban_dsn, f'SELECT state::text FROM "{prefix}".oban_jobs WHERE id = %s', (elixir,))
    assert left == [("executing",)]  # its producer was never seen heartbeating
    deleted = await store.delete_dead_producers(rules=rules, now=later)
    assert [(d.uuid, d.node) for d in deleted] == [(dead, "n1")]


async def test_gauges_count_jobs_and_workflows(store, oban_dsn):
    prefix = store.prefix
    insert(oban_dsn, prefix, "available", queue="a")
    insert(oban_dsn, prefix, "available", queue="a")
    insert(oban_dsn, prefix, "scheduled", queue="b")
    wf = json.dumps({"workflow_id": "w1", "name": "s1", "deps": []})
    insert(oban_dsn, prefix, "executing", queue="a", uuid_=str(uuid.uuid4()), meta=wf)
    counts = await store.job_counts()
    assert counts[("a", "available")] == 2 and counts[("b", "scheduled")] == 1
    assert await store.workflow_counts() == {"executing": 1}


async def test_notify_sends_every_payload(store, oban_dsn):
    import psycopg

    prefix = store.prefix
    with psycopg.connect(oban_dsn, autocommit=True) as listener:
        listener.execute(f'LISTEN "{prefix}.oban_gossip"')
        await store.notify(channel(prefix, "gossip"), ['{"a": 1}', '{"b": 2}'])
        got = [n.payload for n in listener.notifies(timeout=5, stop_after=2)]
    assert got == ['{"a": 1}', '{"b": 2}']


async def test_leadership_lease_and_resignation(store, oban_dsn):
    import psycopg

    prefix = store.prefix
    assert await store.elect_leader(name="Oban", node="a", ttl=30) is True
    assert await store.elect_leader(name="Oban", node="b", ttl=30) is False
    assert await store.elect_leader(name="Oban", node="a", ttl=30) is True  # a refresh
    later = naive(datetime.now(UTC) + timedelta(minutes=1))  # a's lease has expired by then
    assert await store.elect_leader(name="Oban", node="b", ttl=30, now=later) is True
    with psycopg.connect(oban_dsn, autocommit=True) as listener:
        listener.execute(f'LISTEN "{prefix}.oban_leader"')
        await store.resign_leader(name="Oban", node="b", channel=channel(prefix, "leader"),
                                  payload='{"down": "Oban"}')  # fmt: skip
        got = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
    assert got == ['{"down": "Oban"}']
    assert query(oban_dsn, f'SELECT count(*) FROM "{prefix}".oban_leaders') == [(0,)]


@pytest.mark.parametrize("workflow", [True, False], ids=["with_release", "plain"])
async def test_fetch_takes_available_jobs_as_structs_and_ack_fences_by_attempt(
    store, oban_dsn, workflow
):
    prefix = store.prefix
    me = str(uuid.uuid4())
    first = insert(oban_dsn, prefix, "available")
    second = insert(oban_dsn, prefix, "available")
    insert(oban_dsn, prefix, "available", queue="other")
    jobs = await store.fetch_jobs(queue="q", demand=5, node="n1", uuid=me)
    assert all(isinstance(j, FetchedJob) for j in jobs)
    assert sorted(j.id for j in jobs) == [first, second]
    job = next(j for j in jobs if j.id == first)
    assert (job.worker, json.loads(job.args), json.loads(job.meta), job.attempt) == (
        "app.W", {}, {}, 1
    )  # fmt: skip
    assert job.max_attempts == 20 and isinstance(job.attempted_at, float)
    assert await store.fetch_jobs(queue="q", demand=5, node="n1", uuid=me) == []
    states = await store.ack_jobs(
        ids=[first, second, second], attempts=[1, 1, 2], uuids=[me, str(uuid.uuid4()), me],
        kinds=["completed", "completed", "error"], delays=[0.0, 0.0, 0.0],
        errors=[None, None, json.dumps({"attempt": 2, "error": "x"})], metas=[None] * 3,
        max_crashes=3, workflow=workflow,
    )  # fmt: skip
    # The second job's acks name another producer and another attempt: fenced out, unchanged.
    assert states == {first: "completed"}
    rows = dict(query(oban_dsn, f'SELECT id, state::text FROM "{prefix}".oban_jobs '
                                f"WHERE queue = 'q'"))  # fmt: skip
    assert rows == {first: "completed", second: "executing"}


@pytest.mark.parametrize("workflow", [True, False], ids=["with_release", "plain"])
async def test_both_ack_statements_decide_the_same_states(store, oban_dsn, workflow):
    """The plain ack (no workflow release) writes what the full one writes for jobs nobody
    waits for: completed, retried, discarded at the last attempt, cancelled, snoozed (attempt
    given back, meta merged), crashed (counted)."""
    prefix, me = store.prefix, str(uuid.uuid4())
    attempts_allowed = (5, 5, 1, 5, 5, 5)
    ids = [
        insert(oban_dsn, prefix, "executing", uuid_=me, max_attempts=m) for m in attempts_allowed
    ]
    kinds = ["completed", "error", "error", "cancel", "snooze", "crash"]
    error = json.dumps({"attempt": 1, "error": "boom"})
    states = await store.ack_jobs(
        ids=ids, attempts=[1] * 6, uuids=[me] * 6, kinds=kinds, delays=[0, 30, 30, 0, 60, 30],
        errors=[None, error, error, error, None, error],
        metas=[None, None, None, None, json.dumps({"why": "later"}), None],
        max_crashes=3, ages=[0.0] * 6, workflow=workflow,
    )  # fmt: skip
    assert [states[i] for i in ids] == [
        "completed", "retryable", "discarded", "cancelled", "scheduled", "retryable"
    ]  # fmt: skip
    rows = query(oban_dsn, f'SELECT attempt, meta, errors FROM "{prefix}"'
                           f".oban_jobs WHERE id = ANY(%s) ORDER BY id", (ids,))  # fmt: skip
    assert [len(r[2]) for r in rows] == [0, 1, 1, 1, 0, 1]
    assert rows[4][0] == 0 and rows[4][1] == {"why": "later", "snoozed": 1}
    assert rows[5][1] == {"crashes": 1}


async def test_producer_registration_heartbeat_and_deletion(store, oban_dsn):
    prefix = store.prefix
    me, gone = str(uuid.uuid4()), str(uuid.uuid4())
    await store.register_producer(uuid=me, name="Oban", node="n1", queue="q",
                                  meta=json.dumps({"local_limit": 5}))  # fmt: skip
    mine = insert(oban_dsn, prefix, "executing", uuid_=me)
    rescued = insert(oban_dsn, prefix, "available")
    answer = await store.beat(
        name="Oban", node="n1",
        producers=[LocalProducer(me, "q", "{}"), LocalProducer(gone, "q", "{}")],
        running=[RunningJob(mine, 1, me), RunningJob(rescued, 1, me)],
    )  # fmt: skip
    assert answer.registered_again == [gone]  # its row was missing: written again
    assert answer.changed == [ChangedJob(rescued, "available", None)]
    await store.delete_producers([me, gone])
    assert query(oban_dsn, f'SELECT count(*) FROM "{prefix}".oban_producers') == [(0,)]


async def test_workflow_repair_seals_finished_jobs_and_settles_orphaned_steps(store, oban_dsn):
    prefix = store.prefix
    waiting = insert(oban_dsn, prefix, "suspended", meta=json.dumps({"wf_wait": 1}))
    orphan = insert(oban_dsn, prefix, "suspended", meta=json.dumps({"wf_wait": 1}))
    # Completed outside an ack (by another engine, say): still holds wf_next.
    insert(oban_dsn, prefix, "completed", meta=json.dumps({"wf_next": [waiting]}))
    assert await store.repair_unsealed(limit=10) == (1, 1)
    assert await store.repair_unsealed(limit=10) == (0, 0)
    # The orphan waits for a job nobody holds its id for (deleted): cancelled.
    last, looked, moved = await store.repair_deleted(after=0, limit=10)
    assert (looked, moved) == (1, 1) and last == orphan
    rows = dict(query(oban_dsn, f'SELECT id, state::text FROM "{prefix}".oban_jobs '
                                f"WHERE id IN (%s, %s)", (waiting, orphan)))  # fmt: skip
    assert rows == {waiting: "available", orphan: "cancelled"}


async def test_tool_reads_status_staging_of_one_queue_and_reset(store, oban_dsn):
    """What the schema check, ``oban-pro status``, the demo and the testing helpers read."""
    prefix = store.prefix
    assert await store.missing_tables() == []
    me = str(uuid.uuid4())
    await store.register_producer(uuid=me, name="Oban", node="n1", queue="q", meta="{}")
    assert await store.elect_leader(name="Oban", node="n1", ttl=30.0)
    done = insert(oban_dsn, prefix, "completed")
    waiting = insert(oban_dsn, prefix, "available", meta=json.dumps({"k": 1}))
    future = naive(datetime.now(UTC) + timedelta(hours=1))
    later = insert(oban_dsn, prefix, "scheduled", queue="other", at=future)
    assert await store.count_finished([done, waiting, later]) == 1
    assert sorted(await store.job_outcomes([done, waiting])) == [
        ("available", {"k": 1}), ("completed", {})
    ]  # fmt: skip
    status = await store.cluster_status()
    assert [(leader.name, leader.node) for leader in status.leaders] == [("Oban", "n1")]
    assert [(p.node, p.queue) for p in status.producers] == [("n1", "q")]
    assert status.producers[0].seconds_since_beat < 60
    assert sorted(status.counts) == [("other", "scheduled", 1), ("q", "available", 1)]
    # Staging one queue as of a moment: only that queue's jobs due by then.
    insert(oban_dsn, prefix, "scheduled", at=future)
    await store.stage_queue(queue="other", now=future + timedelta(seconds=1))
    states = dict(
        query(
            oban_dsn,
            f'SELECT queue, state::text FROM "{prefix}".oban_jobs '
            f"WHERE state IN ('scheduled', 'available') AND queue = 'other'",
        )
    )
    assert states == {"other": "available"}
    assert query(oban_dsn, f"SELECT count(*) FROM \"{prefix}\".oban_jobs WHERE queue = 'q' "
                           f"AND state = 'scheduled'") == [(1,)]  # fmt: skip
    await store.reset_tables()
    for table in ("oban_jobs", "oban_leaders", "oban_producers"):
        assert query(oban_dsn, f'SELECT count(*) FROM "{prefix}".{table}') == [(0,)]


async def test_a_batch_that_only_completed_is_written_as_the_full_ack_writes_it(store, oban_dsn):
    """All-completed batches without workflow steps take the lightest statement; its rows are
    those of the full ack (state, completed_at from the age, nothing else touched) and it is
    fenced the same way (wrong attempt, producer or state: left alone, absent from states)."""
    prefix, me, other = store.prefix, str(uuid.uuid4()), str(uuid.uuid4())
    columns = "state::text, attempt, errors, meta, scheduled_at, completed_at"

    async def ack_batch(workflow: bool) -> tuple[list[int], dict[int, str], list[tuple]]:
        ids = [insert(oban_dsn, prefix, "executing", uuid_=me) for _ in range(2)]
        stale_attempt = insert(oban_dsn, prefix, "executing", uuid_=me)
        foreign = insert(oban_dsn, prefix, "executing", uuid_=other)
        finished = insert(oban_dsn, prefix, "completed", uuid_=me)
        batch = [*ids, stale_attempt, foreign, finished]
        before = query(oban_dsn, f'SELECT {columns} FROM "{prefix}".oban_jobs '
                                 f"WHERE id = ANY(%s) ORDER BY id", (batch[2:],))  # fmt: skip
        states = await store.ack_jobs(
            ids=batch, attempts=[1, 1, 2, 1, 1], uuids=[me] * 5, kinds=["completed"] * 5,
            delays=[0.0] * 5, errors=[None] * 5, metas=[None] * 5, max_crashes=3,
            ages=[10.0, 0.0, 0.0, 0.0, 0.0], workflow=workflow,
        )  # fmt: skip
        after = query(oban_dsn, f'SELECT {columns} FROM "{prefix}".oban_jobs '
                                f"WHERE id = ANY(%s) ORDER BY id", (batch[2:],))  # fmt: skip
        assert after == before  # the fenced-out rows are untouched
        rows = query(
            oban_dsn,
            f"SELECT state::text, attempt, errors, meta, scheduled_at = attempted_at, "
            f"extract(epoch FROM timezone('UTC', now()) - completed_at)::float8 "
            f'FROM "{prefix}".oban_jobs WHERE id = ANY(%s) ORDER BY id',
            (ids,),
        )
        return ids, states, rows

    full_ids, full_states, full_rows = await ack_batch(workflow=True)
    light_ids, light_states, light_rows = await ack_batch(workflow=False)
    assert full_states == dict.fromkeys(full_ids, "completed")
    assert light_states == dict.fromkeys(light_ids, "completed")
    assert [r[:5] for r in light_rows] == [r[:5] for r in full_rows]
    assert light_rows[0][:4] == ("completed", 1, [], {})
    for rows in (full_rows, light_rows):
        assert 9.0 < rows[0][5] < 60.0 and rows[1][5] < 9.0  # completed_at: when each ended
