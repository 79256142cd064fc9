"""The fetch's generic plan: PostgreSQL switches a prepared statement to its generic plan when
that looks no costlier than re-planning it on every execution (psycopg prepares the fetch after
five runs). It did so in every no-op drain measured, so that plan must find the rows it takes
by primary key, whatever the table holds."""

from __future__ import annotations

from helpers import generic_plan, plan_nodes, query

from oban_pro.queries import Queries

UUID = "00000000-0000-0000-0000-0000000000aa"


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
        values = {"queue": "q", "demand": demand, "node": "n", "uuid": UUID}
        plan = generic_plan(oban_dsn, Queries(oban_prefix).fetch_jobs, values)
        scans = [n.get("Alias") for n in plan_nodes(plan) if n["Node Type"] == "Seq Scan"]
        assert not scans, (demand, scans)
        assert plan["Actual Rows"] == demand  # and it took the jobs (then rolled back)
