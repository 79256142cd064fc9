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
from helpers import query
from psycopg_pool import AsyncConnectionPool

from oban_pro import ValidationError
from oban_pro.limits import GlobalLimit, Partition, fetch_limited, fetch_params
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


async def _fetch(pool, prefix, limit, demand, queue="api"):
    params = {**fetch_params(limit, prefix, queue), "queue": queue, "demand": demand,
              "node": "n", "uuid": str(uuid.uuid4())}  # fmt: skip
    async with pool.connection() as conn:
        return await fetch_limited(conn, Queries(prefix), limit, params)


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
    ids = [r[0] for r in rows]
    query(oban_dsn, f"UPDATE \"{oban_prefix}\".oban_jobs SET state = 'completed' "
                    f"WHERE id = ANY(%s)", (ids,))  # fmt: skip
    assert len(await _fetch(pool, oban_prefix, GlobalLimit(5), demand=1)) == 1  # demand caps


async def test_partitioned_limit_holds_per_tenant_and_serves_every_tenant(
    oban_dsn, oban_prefix, pool
):
    """Tenant t0 holds 90% of the backlog, at the front of it; each of 5 tenants may run 2."""
    _insert(oban_dsn, oban_prefix, 180, args=lambda i: {"tenant": "t0", "n": i})
    _insert(oban_dsn, oban_prefix, 20, args=lambda i: {"tenant": f"t{1 + i % 4}", "n": i})
    limit = GlobalLimit.parse({"allowed": 2, "partition": {"fields": ["args"], "keys": ["tenant"]}})
    rows = await _fetch(pool, oban_prefix, limit, demand=100)
    tenants = sorted(json.loads(r[2])["tenant"] for r in rows)
    assert tenants == ["t0", "t0", "t1", "t1", "t2", "t2", "t3", "t3", "t4", "t4"]
    assert await _fetch(pool, oban_prefix, limit, demand=100) == []
    # a small demand goes round the tenants before taking anyone's second job
    query(oban_dsn, f"UPDATE \"{oban_prefix}\".oban_jobs SET state = 'completed' "
                    f"WHERE state = 'executing'")  # fmt: skip
    rows = await _fetch(pool, oban_prefix, limit, demand=5)
    assert sorted(json.loads(r[2])["tenant"] for r in rows) == ["t0", "t1", "t2", "t3", "t4"]


# -- three processes racing ---------------------------------------------------------------------

RACE_LIMIT = 4


def _race_worker(dsn: str, prefix: str, log: str, seconds: float) -> None:
    """Fetch with the lock, hold each job a little, complete it; log start/end per job."""
    queries, limit = Queries(prefix), GlobalLimit(RACE_LIMIT)

    async def main() -> None:
        async with AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False,
                                       kwargs={"autocommit": True}) as pool:  # fmt: skip
            deadline = time.monotonic() + seconds
            held: list[tuple[int, float]] = []
            with open(log, "a") as out:
                while time.monotonic() < deadline:
                    params = {**fetch_params(limit, prefix, "api"), "queue": "api",
                              "demand": 10, "node": "race", "uuid": str(uuid.uuid4())}  # fmt: skip
                    async with pool.connection() as conn:
                        rows = await fetch_limited(conn, queries, limit, params)
                    now = time.time()
                    held += [(r[0], now) for r in rows]
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
    ctx = get_context("spawn")
    procs = [ctx.Process(target=_race_worker, args=(oban_dsn, oban_prefix, str(log), 4.0))
             for _ in range(3)]  # fmt: skip
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
    finally:
        stop.set()
        sampler.join(10)
        for p in procs:
            if p.is_alive():
                p.kill()
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
