"""Enqueue: validation, transactions, bulk inserts, notices and unique jobs on a real database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from multiprocessing import get_context

import psycopg
import pytest
from helpers import query

from oban_pro import Cancel, Client, Job, Oban, Record, Snooze, ValidationError, job, worker
from oban_pro.client import enqueue_sync


# Conformance: every test here runs on the embedded PostgreSQL 18 and on Debian's 15.
@pytest.fixture
def oban_dsn(any_server_dsn):
    return any_server_dsn


@worker(queue="mail", max_attempts=5, priority=2, tags=["mail"])
class Mailer:
    def process(self, job):
        return None


@job(queue="reports")
def build_report(month: str) -> None:
    return None


def count(dsn: str, prefix: str, where: str = "true") -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f'SELECT count(*) FROM "{prefix}".oban_jobs WHERE {where}').fetchone()[
            0
        ]


def listen(dsn: str, prefix: str) -> psycopg.Connection:
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute(f'LISTEN "{prefix}.oban_insert"')
    return conn


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"queue": ""}, "queue"),
        ({"queue": "   "}, "queue"),
        ({"queue": "q" * 128}, "queue"),
        ({"priority": 10}, "priority"),
        ({"priority": -1}, "priority"),
        ({"priority": "1"}, "priority"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"args": [1, 2]}, "args"),
        ({"args": {"when": datetime.now()}}, "args"),
        ({"args": {1: "x"}}, "args"),
        ({"args": {"x": float("nan")}}, "args"),
        ({"meta": "nope"}, "meta"),
        ({"tags": "a,b"}, "tags"),
        ({"unique": {"period": -1}}, "unique.period"),
        ({"unique": {"colour": 1}}, "unique"),
        ({"schedule_in": "soon"}, "schedule_in"),
    ],
)
def test_job_validation_names_the_field(kwargs, field):
    with pytest.raises(ValidationError) as err:
        Job("app.Worker", **kwargs)
    assert err.value.field == field
    assert field.split(".")[0] in str(err.value)


def test_blank_worker_and_unknown_option_are_rejected():
    with pytest.raises(ValidationError) as err:
        Job("")
    assert err.value.field == "worker"
    with pytest.raises(TypeError):
        Job("app.Worker", colour="red")  # type: ignore[call-arg]


def test_unknown_worker_options_go_to_extra_as_in_obanpy():
    @worker(queue="x", colour="red")
    class Painter:
        def process(self, job):
            return None

    job_ = Painter.new({}, shade="dark")  # type: ignore[attr-defined]
    assert job_.extra == {"colour": "red", "shade": "dark"} and job_.queue == "x"
    with pytest.raises(ValidationError) as err:
        worker(queue="x", timeout=-1)
    assert err.value.field == "timeout"


def test_oversized_args_are_rejected():
    with pytest.raises(ValidationError, match="limit"):
        Job("app.Worker", args={"blob": "x" * (9 * 1024 * 1024)})


def test_worker_new_uses_defaults_and_overrides():
    job_ = Mailer.new({"to": "a@b"}, priority=7)
    assert job_.worker == "test_enqueue.Mailer"
    assert (job_.queue, job_.max_attempts, job_.priority, job_.tags) == ("mail", 5, 7, ["mail"])
    report = build_report.new({"month": "2026-11"})
    assert report.worker == "test_enqueue.build_report" and report.queue == "reports"


def test_result_types():
    assert Snooze(5).seconds == 5
    with pytest.raises(ValidationError):
        Snooze(-1)
    assert Cancel("nope").reason == "nope"
    assert Record({"a": [1, 2]}).encoded


# -- inserting -----------------------------------------------------------------------------


async def test_enqueue_and_enqueue_many(oban_dsn, oban_prefix):
    oban = Oban(dsn=oban_dsn, prefix=oban_prefix, name="enq-1")
    try:
        one = await oban.enqueue(Mailer.new({"to": "x"}))
        assert one.id and one.state == "available" and one.inserted_at.tzinfo is UTC
        many = await oban.enqueue_many([Mailer.new({"n": i}) for i in range(10_000)])
        ids = [j.id for j in many]
        assert ids == sorted(ids) and len(set(ids)) == 10_000
        # ids follow the given order: the row with each id has the matching args
        got = await oban.get_job(many[1234].id)
        assert got is not None and got.args == {"n": 1234} and got.tags == ["mail"]
        assert count(oban_dsn, oban_prefix) == 10_001
    finally:
        await oban.stop()


async def test_scheduled_jobs(oban_dsn, oban_prefix):
    oban = Oban(dsn=oban_dsn, prefix=oban_prefix, name="enq-2")
    try:
        later = await oban.enqueue(Mailer.new({}, schedule_in=60))
        at = datetime.now(UTC) + timedelta(hours=1)
        exact = await oban.enqueue(Mailer.new({}, scheduled_at=at))
        assert later.state == "scheduled" and exact.state == "scheduled"
        assert abs((exact.scheduled_at - at).total_seconds()) < 0.001
        assert later.scheduled_at > datetime.now(UTC) + timedelta(seconds=50)
    finally:
        await oban.stop()


def test_rolled_back_transaction_leaves_no_row_and_no_notice(oban_dsn, oban_prefix):
    listener = listen(oban_dsn, oban_prefix)
    try:
        with psycopg.connect(oban_dsn) as conn:
            enqueue_sync(Mailer.new({"a": 1}), conn=conn, prefix=oban_prefix)
            conn.rollback()
        assert count(oban_dsn, oban_prefix) == 0
        assert list(listener.notifies(timeout=0.5)) == []
        # and the committed case does notify, once per queue per batch
        with psycopg.connect(oban_dsn) as conn:
            Client(prefix=oban_prefix).enqueue_many(
                [Mailer.new({"i": i}) for i in range(5)] + [build_report.new({"month": "m"})],
                conn=conn,
            )
        payloads = sorted(n.payload for n in listener.notifies(timeout=1.0, stop_after=2))
        assert payloads == ['{"queue":"mail"}', '{"queue":"reports"}']
    finally:
        listener.close()


async def test_enqueue_inside_callers_async_transaction(oban_dsn, oban_prefix):
    oban = Oban(dsn=oban_dsn, prefix=oban_prefix, name="enq-3")
    try:
        async with await psycopg.AsyncConnection.connect(oban_dsn) as conn:
            await oban.enqueue(Mailer.new({}), conn=conn)
            await conn.rollback()
        assert count(oban_dsn, oban_prefix) == 0
        async with await psycopg.AsyncConnection.connect(oban_dsn) as conn:
            await oban.enqueue_many([Mailer.new({}), Mailer.new({})], conn=conn)
        assert count(oban_dsn, oban_prefix) == 2
    finally:
        await oban.stop()


# -- unique jobs ---------------------------------------------------------------------------


def _insert_unique(args: tuple[str, str, int]) -> tuple[int, bool]:
    dsn, prefix, _ = args
    with Client(dsn, prefix=prefix) as client:
        job_ = client.enqueue(Job("app.Unique", args={"k": 1}, unique={"period": 300}))
        return job_.id, job_.conflict


def test_unique_under_16_concurrent_inserters(oban_dsn, oban_prefix):
    with get_context("spawn").Pool(16) as pool:
        results = pool.map(_insert_unique, [(oban_dsn, oban_prefix, i) for i in range(16)])
    assert count(oban_dsn, oban_prefix) == 1
    assert len({job_id for job_id, _ in results}) == 1
    assert sum(1 for _, conflict in results if not conflict) == 1


def test_unique_options(oban_dsn, oban_prefix):
    with Client(oban_dsn, prefix=oban_prefix) as client:
        first = client.enqueue(Job("app.U", args={"a": 1, "b": 1}, unique={"keys": ["a"]}))
        same_key = client.enqueue(Job("app.U", args={"a": 1, "b": 2}, unique={"keys": ["a"]}))
        other = client.enqueue(Job("app.U", args={"a": 2}, unique={"keys": ["a"]}))
        assert same_key.conflict and same_key.id == first.id
        assert not other.conflict and other.id != first.id
        # a cancelled job is outside the default states: a new one may be inserted
        client.cancel_jobs([first.id])
        again = client.enqueue(Job("app.U", args={"a": 1}, unique={"keys": ["a"]}))
        assert not again.conflict
        # unique in a batch mixed with plain jobs
        batch = client.enqueue_many(
            [Job("app.P"), Job("app.U", args={"a": 2}, unique={"keys": ["a"]})]
        )
        assert not batch[0].conflict and batch[1].conflict and batch[1].id == other.id


# -- job operations ------------------------------------------------------------------------


def test_retry_cancel_delete(oban_dsn, oban_prefix):
    with Client(oban_dsn, prefix=oban_prefix) as client:
        a, b, c = client.enqueue_many([Job("app.X"), Job("app.X"), Job("app.X")])
        assert client.cancel_jobs([a.id]) == [a.id]
        assert client.get_job(a.id).state == "cancelled"
        assert client.retry_jobs([a.id]) == [a.id]
        retried = client.get_job(a.id)
        assert retried.state == "available" and retried.cancelled_at is None
        assert client.delete_jobs([b]) == [b.id]
        assert client.get_job(b.id) is None
        assert [j.id for j in client.list_jobs(state="available")] == [c.id, a.id]
        with pytest.raises(TypeError):
            client.delete_jobs(["nope"])  # type: ignore[list-item]


# -- unique jobs across languages (compat.md §2) -------------------------------------------------


def _elixir_insert(dsn, prefix, worker, args, state="available", age=0.0, queue="default"):
    """A row as Elixir's open-source engine inserts it: no meta.uniq_key, meta {}."""
    return query(
        dsn,
        f'INSERT INTO "{prefix}".oban_jobs (state, queue, worker, args, meta, inserted_at, '
        f'scheduled_at) VALUES (%s::text::"{prefix}".oban_job_state, %s, %s, %s::jsonb, '
        f"'{{}}', timezone('UTC', now()) - make_interval(secs => %s), timezone('UTC', now())) "
        f"RETURNING id",
        (state, queue, worker, json.dumps(args), age),
    )[0][0]


def test_unique_insert_finds_a_duplicate_written_by_elixir(oban_dsn, oban_prefix):
    dsn, prefix = oban_dsn, oban_prefix
    same = _elixir_insert(dsn, prefix, "MyApp.Mailer", {"id": 1})
    superset = _elixir_insert(dsn, prefix, "MyApp.Superset", {"id": 1, "extra": 2})
    keyed = _elixir_insert(dsn, prefix, "MyApp.Keyed", {"id": 1, "x": 5})
    _elixir_insert(dsn, prefix, "MyApp.Cancelled", {"id": 1}, state="cancelled")
    _elixir_insert(dsn, prefix, "MyApp.Old", {"id": 1}, age=120)
    _elixir_insert(dsn, prefix, "MyApp.Elsewhere", {"id": 1}, queue="other")
    with Client(dsn, prefix=prefix) as client:

        def insert(worker, args, unique):
            return client.enqueue(Job(worker, args=args, unique=unique))

        found = insert("MyApp.Mailer", {"id": 1}, True)
        assert (found.id, found.conflict) == (same, True)
        # args compare equal by containment both ways: a superset is another job
        assert insert("MyApp.Superset", {"id": 1}, True).conflict is False
        assert insert("MyApp.Superset", {"id": 1, "extra": 2}, True).id == superset
        # with keys, only those values must match
        found = insert("MyApp.Keyed", {"id": 1, "x": 6}, {"keys": ["id"]})
        assert (found.id, found.conflict) == (keyed, True)
        assert insert("MyApp.Keyed", {"id": 2, "x": 5}, {"keys": ["id"]}).conflict is False
        # states and period: a cancelled row is not a duplicate by default; an old one is
        # outside a 60 s period but inside "for ever" (unique=True)
        assert insert("MyApp.Cancelled", {"id": 1}, True).conflict is False
        assert insert("MyApp.Old", {"id": 1}, {"period": 60}).conflict is False
        assert insert("MyApp.Old", {"id": 1}, True).conflict is True
        # fields: without queue, a row in another queue is a duplicate
        assert insert("MyApp.Elsewhere", {"id": 1}, True).conflict is False
        assert insert("MyApp.Elsewhere", {"id": 1}, {"fields": ["worker", "args"]}).conflict
    # nothing else was written
    rows = query(dsn, f'SELECT worker, count(*) FROM "{prefix}".oban_jobs GROUP BY 1 ORDER BY 1')
    assert dict(rows) == {"MyApp.Cancelled": 2, "MyApp.Elsewhere": 2, "MyApp.Keyed": 2,
                          "MyApp.Mailer": 1, "MyApp.Old": 2, "MyApp.Superset": 2}  # fmt: skip
