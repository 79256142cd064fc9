"""The fetch's generic plan: PostgreSQL switches a prepared statement to its generic plan when
that looks no costlier than re-planning it on every execution (psycopg prepares the fetch after
five runs). It did so in every no-op drain measured, so that plan must find the rows it takes
by primary key, whatever the table holds."""

from __future__ import annotations

import psycopg
from helpers import query

from oban_pro.prepared import Prepared
from oban_pro.queries import Queries

UUID = "00000000-0000-0000-0000-0000000000aa"


def plan_nodes(node: dict):
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


def generic_fetch_plan(dsn: str, prefix: str, demand: int) -> dict:
    """The root of the EXPLAIN ANALYZE of the fetch's generic plan (rolled back)."""
    prepared = Prepared(Queries(prefix).fetch_jobs)
    values = {"queue": "q", "demand": demand, "node": "n", "uuid": UUID}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute(f"PREPARE generic_fetch AS {prepared.text}")
        placeholders = ", ".join(["%s"] * len(prepared.params))
        with conn.transaction(force_rollback=True):
            cur = psycopg.ClientCursor(conn).execute(
                f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE generic_fetch({placeholders})",
                [values[name] for name in prepared.params],
            )
            return cur.fetchone()[0][0]["Plan"]


async def test_the_fetchs_generic_plan_reads_no_table_scan(oban_dsn, oban_prefix):
    """It joined the jobs it locked back to oban_jobs with a hash join over a sequential scan
    of the whole table (2.0 ms for one job beside 6,000 rows, growing with the table): the
    planner's generic guess for ``LIMIT $n`` is a tenth of the table. Looked up by id from an
    array, they use the primary key whatever the guess."""
    query(
        oban_dsn,
        f'INSERT INTO "{oban_prefix}".oban_jobs (state, queue, worker, args) '
        f"SELECT 'available', 'q', 'W', '{{}}' FROM generate_series(1, 6000)",
    )
    query(oban_dsn, f'VACUUM ANALYZE "{oban_prefix}".oban_jobs')
    for demand in (1, 50):
        plan = generic_fetch_plan(oban_dsn, oban_prefix, demand)
        scans = [n.get("Alias") for n in plan_nodes(plan) if n["Node Type"] == "Seq Scan"]
        assert not scans, (demand, scans)
        assert plan["Actual Rows"] == demand  # and it took the jobs (then rolled back)
