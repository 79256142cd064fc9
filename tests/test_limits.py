"""Global limits (oban_pro/limits.py): option parsing, and the limited fetch against a real
database — alone, partitioned, and raced by three processes."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import uuid
from multiprocessing import get_context
from pathlib import Path

import psycopg
import pytest
from helpers import OneConnection, fetch_limited, query
from psycopg_pool import AsyncConnectionPool

from oban_pro import ValidationError
from oban_pro.limits import (
    GlobalLimit,
    Partition,
    QueueLimits,
    RateLimit,
    fetch_params,
)
from oban_pro.queries import Queries


# Conformance: every test here runs on the embedded PostgreSQL 18 and on Debian's 15.
@pytest.fixture
def oban_dsn(any_server_dsn):
    return any_server_dsn


# -- options ------------------------------------------------------------------------------------


def test_global_limit_forms():
    assert GlobalLimit.parse(10) == GlobalLimit(10)
    limit = GlobalLimit.parse({"allowed": 3, "partition": {"fields": ["args"], "keys": ["t"]}})
    assert limit == GlobalLimit(3, Partition(("args",), ("t",)))
    assert GlobalLimit.parse({"allowed": 2, "partition": "worker"}).partition == Partition(
        ("worker",)
    )
    # Oban Web sends partitions as lists of pairs
    web = GlobalLimit.parse({"allowed": 2, "partition": [["fields", ["meta"]], ["keys", ["k"]]]})
    assert web.partition == Partition(("meta",), ("k",))
    assert limit.to_json() == {"allowed": 3, "partition": {"fields": ["args"], "keys": ["t"]}}


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (0, "global_limit"),
        (-1, "global_limit"),
        (True, "global_limit"),
        (10**9, "global_limit"),
        ("10", "global_limit"),
        ({"allowed": 1.5}, "global_limit.allowed"),
        ({}, "global_limit.allowed"),
        ({"allowed": 2, "burst": 3}, "global_limit"),
        ({"allowed": 2, "partition": {"fields": ["tenant"]}}, "global_limit.partition.fields"),
        ({"allowed": 2, "partition": {"fields": []}}, "global_limit.partition.fields"),
        ({"allowed": 2, "partition": {"keys": ["a"]}}, "global_limit.partition.fields"),
        ({"allowed": 2, "partition": {"fields": ["worker"], "keys": ["a"]}},
         "global_limit.partition.keys"),
        ({"allowed": 2, "partition": {"fields": ["args"], "keys": [1]}},
         "global_limit.partition.keys"),
        ({"allowed": 2, "partition": {"fields": ["args"], "order": 1}}, "global_limit.partition"),
        ({"allowed": 2, "partition": 7}, "global_limit.partition"),
    ],
)  # fmt: skip
def test_hostile_global_limit_options_name_the_field(spec, field):
    with pytest.raises(ValidationError) as info:
        GlobalLimit.parse(spec)
    assert info.value.field == field, str(info.value)


# -- the limited fetch --------------------------------------------------------------------------


def _insert(dsn, prefix, n, queue="api", args=lambda i: {}, state="available"):
    rows = [(queue, json.dumps(args(i)), state) for i in range(n)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.executemany(
                f'INSERT INTO "{prefix}".oban_jobs (queue, worker, args, state, attempt, '
                f"attempted_by) VALUES (%s, 'app.W', %s::jsonb, %s::text::\"{prefix}\""
                f".oban_job_state, CASE WHEN %s = 'executing' THEN 1 ELSE 0 END, "
                f"CASE WHEN %s = 'executing' THEN ARRAY['elixir@x', gen_random_uuid()::text] END)",
                [(q, a, s, s, s) for q, a, s in rows],
            )


async def _fetch(pool, prefix, limit, demand, queue="api", now=None):
    limits = limit if isinstance(limit, QueueLimits) else QueueLimits(global_limit=limit)
    params = {**fetch_params(limits, prefix, queue), "demand": demand, "node": "n",
              "uuid": str(uuid.uuid4()), "now": now}  # fmt: skip
    return await fetch_limited(pool, Queries(prefix), limits, params)


def _executing(dsn, prefix, queue="api"):
    return query(
        dsn,
        f"SELECT count(*) FROM \"{prefix}\".oban_jobs WHERE state = 'executing' AND queue = %s",
        (queue,),
    )[0][0]


async def test_global_limit_counts_every_engines_executing_jobs(oban_dsn, oban_prefix, pool):
    _insert(oban_dsn, oban_prefix, 20)
    _insert(oban_dsn, oban_prefix, 3, state="executing")  # e.g. an Elixir node's jobs
    _insert(oban_dsn, oban_prefix, 5, queue="other", state="executing")  # other queues: no
    rows = await _fetch(pool, oban_prefix, GlobalLimit(5), demand=10)
    assert len(rows) == 2 and _executing(oban_dsn, oban_prefix) == 5
    assert await _fetch(pool, oban_prefix, GlobalLimit(5), demand=10) == []
    ids = [r.id for r in rows]
    query(oban_dsn, f"UPDATE \"{oban_prefix}\".oban_jobs SET state = 'completed' "
                    f"WHERE id = ANY(%s)", (ids,))  # fmt: skip
    assert len(await _fetch(pool, oban_prefix, GlobalLimit(5), demand=1)) == 1  # demand caps


@pytest.mark.parametrize("partitioned", [False, True])
def test_limited_fetch_takes_its_rows_by_index(oban_dsn, oban_prefix, partitioned):
    """Its LIMIT is an expression: the planner guesses a tenth of the backlog and once updated
    the taken rows through a hash join over a sequential scan of all of oban_jobs. (A
    partitioned fetch ranks the queue's whole backlog by design; its update must not scan.)"""
    query(oban_dsn, f"INSERT INTO \"{oban_prefix}\".oban_jobs (queue, worker, args) "
                    f"SELECT 'api', 'app.W', jsonb_build_object('tenant', 't' || i % 5) "
                    f"FROM generate_series(1, 10000) AS i")  # fmt: skip
    query(oban_dsn, f'ANALYZE "{oban_prefix}".oban_jobs')
    spec: dict = {"allowed": 10}
    if partitioned:
        spec["partition"] = {"fields": ["args"], "keys": ["tenant"]}
    limits = QueueLimits(global_limit=GlobalLimit.parse(spec))
    params = {**fetch_params(limits, oban_prefix, "api"), "demand": 30, "node": "n",
              "uuid": str(uuid.uuid4()), "now": None}  # fmt: skip
    queries = Queries(oban_prefix)
    statement = queries.fetch_partitioned_jobs if partitioned else queries.fetch_limited_jobs
    with psycopg.connect(oban_dsn) as conn:  # rolled back: nothing is taken
        plan = conn.execute("EXPLAIN (FORMAT JSON) " + statement, params).fetchone()[0][0]

    def nodes(node):
        yield node
        for child in node.get("Plans", []):
            yield from nodes(child)

    def seq_scans(node):
        return [n for n in nodes(node) if n["Node Type"] == "Seq Scan"]

    (update,) = [n for n in nodes(plan["Plan"]) if n.get("Operation") == "Update"]
    assert seq_scans(update) == [], update
    if not partitioned:
        assert seq_scans(plan["Plan"]) == [], plan


async def test_limited_fetch_on_a_connection_in_a_transaction_mode(oban_dsn, oban_prefix):
    """A connection that is not in autocommit mode (a caller's pool) gets the same limit."""
    _insert(oban_dsn, oban_prefix, 10)
    limits = QueueLimits(global_limit=GlobalLimit(4))
    params = {**fetch_params(limits, oban_prefix, "api"), "demand": 10, "node": "n",
              "uuid": str(uuid.uuid4()), "now": None}  # fmt: skip
    async with await psycopg.AsyncConnection.connect(oban_dsn) as conn:
        assert not conn.autocommit
        rows = await fetch_limited(OneConnection(conn), Queries(oban_prefix), limits, params)
        assert len(rows) == 4
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE  # committed
    assert _executing(oban_dsn, oban_prefix) == 4


async def test_partitioned_limit_holds_per_tenant_and_serves_every_tenant(
    oban_dsn, oban_prefix, pool
):
    """Tenant t0 holds 90% of the backlog, at the front of it; each of 5 tenants may run 2."""
    _insert(oban_dsn, oban_prefix, 180, args=lambda i: {"tenant": "t0", "n": i})
    _insert(oban_dsn, oban_prefix, 20, args=lambda i: {"tenant": f"t{1 + i % 4}", "n": i})
    limit = GlobalLimit.parse({"allowed": 2, "partition": {"fields": ["args"], "keys": ["tenant"]}})
    rows = await _fetch(pool, oban_prefix, limit, demand=100)
    tenants = sorted(json.loads(r.args)["tenant"] for r in rows)
    assert tenants == ["t0", "t0", "t1", "t1", "t2", "t2", "t3", "t3", "t4", "t4"]
    assert await _fetch(pool, oban_prefix, limit, demand=100) == []
    # a small demand goes round the tenants before taking anyone's second job
    query(oban_dsn, f"UPDATE \"{oban_prefix}\".oban_jobs SET state = 'completed' "
                    f"WHERE state = 'executing'")  # fmt: skip
    rows = await _fetch(pool, oban_prefix, limit, demand=5)
    assert sorted(json.loads(r.args)["tenant"] for r in rows) == ["t0", "t1", "t2", "t3", "t4"]


# -- three processes racing ---------------------------------------------------------------------

RACE_LIMIT = 4


def _race(target, args, processes: int = 3) -> None:
    """Run ``target(*args)`` in ``processes`` fresh processes at once; each must exit 0."""
    ctx = get_context("spawn")
    procs = [ctx.Process(target=target, args=args) for _ in range(processes)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()


def _race_worker(dsn: str, prefix: str, log: str, seconds: float) -> None:
    """Fetch with the lock, hold each job a little, complete it; log start/end per job."""
    queries, limits = Queries(prefix), QueueLimits(global_limit=GlobalLimit(RACE_LIMIT))

    async def main() -> None:
        async with AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False,
                                       kwargs={"autocommit": True}) as pool:  # fmt: skip
            deadline = time.monotonic() + seconds
            held: list[tuple[int, float]] = []
            with open(log, "a") as out:
                while time.monotonic() < deadline:
                    params = {**fetch_params(limits, prefix, "api"), "demand": 10,
                              "node": "race", "uuid": str(uuid.uuid4())}  # fmt: skip
                    rows = await fetch_limited(pool, queries, limits, params)
                    now = time.time()
                    held += [(r.id, now) for r in rows]
                    await asyncio.sleep(random.uniform(0, 0.01))
                    if held:
                        job_id, started = held.pop(random.randrange(len(held)))
                        out.write(f"{job_id} {started:.6f} {time.time():.6f}\n")
                        out.flush()
                        async with pool.connection() as conn:
                            await conn.execute(
                                f"UPDATE \"{prefix}\".oban_jobs SET state = 'completed' "
                                f"WHERE id = %s", (job_id,))  # fmt: skip
                for job_id, started in held:
                    out.write(f"{job_id} {started:.6f} {time.time():.6f}\n")
                    async with pool.connection() as conn:
                        await conn.execute(f"UPDATE \"{prefix}\".oban_jobs SET state = "
                                           f"'completed' WHERE id = %s", (job_id,))  # fmt: skip

    asyncio.run(main())


def test_three_racing_processes_never_exceed_the_global_limit(oban_dsn, oban_prefix, tmp_path):
    _insert(oban_dsn, oban_prefix, 3000)
    log = tmp_path / "runs"
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        with psycopg.connect(oban_dsn, autocommit=True) as conn:
            while not stop.is_set():
                samples.append(conn.execute(
                    f"SELECT count(*) FROM \"{oban_prefix}\".oban_jobs "
                    f"WHERE state = 'executing' AND queue = 'api'").fetchone()[0])  # fmt: skip
                time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        _race(_race_worker, (oban_dsn, oban_prefix, str(log), 4.0))
    finally:
        stop.set()
        sampler.join(10)
    assert max(samples) <= RACE_LIMIT, f"over-admitted: {max(samples)} executing"
    # and from the jobs' own log: never more than the limit held at once
    events = []
    for line in Path(log).read_text().splitlines():
        _id, start, end = line.split()
        events += [(float(start), 1), (float(end), -1)]
    running = peak = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        running += step
        peak = max(peak, running)
    assert peak <= RACE_LIMIT
    # the limit was used, not just respected: the processes did hold the whole of it
    assert max(samples) == RACE_LIMIT and len(events) // 2 > 100


# -- rate limits ------------------------------------------------------------------------------


def test_rate_limit_forms_and_hostile_options():
    assert RateLimit.parse({"allowed": 60, "period": 60}) == RateLimit(60, 60.0)
    both = QueueLimits.parse({"global_limit": 3, "rate_limit": {"allowed": 5, "period": 1}}, "q")
    assert both == QueueLimits(GlobalLimit(3), RateLimit(5, 1.0))
    assert QueueLimits.parse({"limit": 10}, "q") is None
    for spec, field in [
        ({"allowed": 5}, "queues[q].rate_limit.period"),
        ({"period": 5}, "queues[q].rate_limit.allowed"),
        ({"allowed": 0, "period": 5}, "queues[q].rate_limit.allowed"),
        ({"allowed": 5, "period": 0}, "queues[q].rate_limit.period"),
        ({"allowed": 5, "period": -1}, "queues[q].rate_limit.period"),
        ({"allowed": 5, "period": 10**9}, "queues[q].rate_limit.period"),
        ({"allowed": 5, "period": "1m"}, "queues[q].rate_limit.period"),
        ({"allowed": 5, "period": 1, "window": 2}, "queues[q].rate_limit"),
        (5, "queues[q].rate_limit"),
    ]:
        with pytest.raises(ValidationError) as info:
            QueueLimits.parse({"rate_limit": spec}, "q")
        assert info.value.field == field, (spec, str(info.value))
    with pytest.raises(ValidationError, match="partition alike"):
        QueueLimits.parse({"global_limit": {"allowed": 2, "partition": "worker"},
                           "rate_limit": {"allowed": 5, "period": 1,
                                          "partition": {"fields": ["args"]}}}, "q")  # fmt: skip


async def test_rate_limit_is_an_exact_sliding_window(oban_dsn, oban_prefix, pool):
    """allowed 10 per 10 s; the clock is moved through the `now` parameter, never slept."""
    from datetime import UTC, datetime, timedelta

    _insert(oban_dsn, oban_prefix, 100)
    limits = QueueLimits(rate_limit=RateLimit(10, 10.0))
    t0 = datetime.now(UTC).replace(tzinfo=None)

    async def take(seconds: float, demand: int = 100) -> int:
        now = t0 + timedelta(seconds=seconds)
        return len(await _fetch(pool, oban_prefix, limits, demand, now=now))

    assert await take(0, demand=4) == 4
    assert await take(1) == 6  # the rest of the allowance
    assert await take(5) == 0
    assert await take(10.5) == 4  # the 4 of t=0 left the window, the 6 of t=1 did not
    assert await take(10.9) == 0
    assert await take(11.5) == 6
    assert await take(30) == 10  # an idle period later, the whole allowance again
    # starts counted regardless of how the jobs ended: completing them frees nothing
    query(oban_dsn, f"UPDATE \"{oban_prefix}\".oban_jobs SET state = 'completed' "
                    f"WHERE state = 'executing'")  # fmt: skip
    assert await take(35) == 0
    log = query(oban_dsn, f'SELECT cardinality(starts) FROM "{oban_prefix}".oban_rate_limits')
    assert log == [(10,)]  # bounded by allowed: only the starts within the period are kept


async def test_partitioned_rate_limit_and_global_limit_together(oban_dsn, oban_prefix, pool):
    from datetime import UTC, datetime

    _insert(oban_dsn, oban_prefix, 60, args=lambda i: {"tenant": f"t{i % 3}"})
    partition = {"fields": ["args"], "keys": ["tenant"]}
    limits = QueueLimits.parse({"rate_limit": {"allowed": 3, "period": 60,
                                               "partition": partition}}, "api")  # fmt: skip
    now = datetime.now(UTC).replace(tzinfo=None)
    rows = await _fetch(pool, oban_prefix, limits, demand=100, now=now)
    assert (
        sorted(json.loads(r.args)["tenant"] for r in rows) == ["t0"] * 3 + ["t1"] * 3 + ["t2"] * 3
    )
    assert await _fetch(pool, oban_prefix, limits, demand=100, now=now) == []
    # a global limit with the rate: the smaller wins
    both = QueueLimits.parse({"global_limit": 2, "rate_limit": {"allowed": 50, "period": 60}},
                             "other")  # fmt: skip
    _insert(oban_dsn, oban_prefix, 10, queue="other")
    assert len(await _fetch(pool, oban_prefix, both, demand=100, queue="other", now=now)) == 2


RATE_ALLOWED, RATE_PERIOD = 20, 1.0


def _rate_worker(dsn: str, prefix: str, log: str, seconds: float) -> None:
    """Fetch from the rate-limited queue as fast as it can; log each job's start time."""
    queries = Queries(prefix)
    limits = QueueLimits(rate_limit=RateLimit(RATE_ALLOWED, RATE_PERIOD))

    async def main() -> None:
        async with AsyncConnectionPool(dsn, min_size=1, max_size=1, open=False,
                                       kwargs={"autocommit": True}) as pool:  # fmt: skip
            deadline = time.monotonic() + seconds
            with open(log, "a") as out:
                while time.monotonic() < deadline:
                    params = {**fetch_params(limits, prefix, "api"), "demand": 7,
                              "node": "race", "uuid": str(uuid.uuid4())}  # fmt: skip
                    rows = await fetch_limited(pool, queries, limits, params)
                    for row in rows:
                        out.write(f"{row.id}\n")
                    await asyncio.sleep(random.uniform(0, 0.005))

    asyncio.run(main())


def test_three_racing_processes_never_exceed_the_rate(oban_dsn, oban_prefix, tmp_path):
    """From the rows' own start times: a limited fetch stamps attempted_at with the clock time
    its rate window was judged at."""
    _insert(oban_dsn, oban_prefix, 2000)
    log = tmp_path / "starts"
    _race(_rate_worker, (oban_dsn, oban_prefix, str(log), 3.5))
    starts = sorted(
        r[0] for r in query(
            oban_dsn,
            f"SELECT extract(epoch FROM attempted_at)::float8 "
            f"FROM \"{oban_prefix}\".oban_jobs WHERE state = 'executing'",
        )
    )  # fmt: skip
    ids = Path(log).read_text().split()
    assert len(ids) == len(set(ids)) == len(starts)
    # no window of RATE_PERIOD holds more than allowed (two pointers over sorted times)
    worst, lo = 0, 0
    for hi, t in enumerate(starts):
        while starts[lo] <= t - RATE_PERIOD:
            lo += 1
        worst = max(worst, hi - lo + 1)
    assert worst <= RATE_ALLOWED, f"{worst} starts within {RATE_PERIOD}s"
    # and the rate was used: about allowed per period over the run
    assert len(starts) >= RATE_ALLOWED * 3
