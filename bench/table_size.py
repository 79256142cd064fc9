"""table_size: does the engine slow down as oban_jobs grows?

The throughput run (N no-op jobs, queue limit 100, every other setting at its default) drained
from a table that holds nothing else, and from one that holds ``--other-rows`` other rows
(default 1,000,000: half ``available`` jobs of another queue, half ``completed`` jobs not yet
pruned), A B in every repetition, each table in a schema of its own so neither run empties the
other. Reports jobs/s of both and the ratio big/small per repetition, and the plan of the
engine's fetch statement on both tables (EXPLAIN ANALYZE in a rolled-back transaction, with
the N jobs waiting): it must read oban_jobs through the state/queue index, never scan it.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from typing import Any

from . import common, engine, measure

DEFAULT_SIZE = 20_000
DEFAULT_OTHER_ROWS = 1_000_000
LIMIT = 100
QUEUE = "bench"
OTHER_QUEUE = "bench_other"
WORKER = "bench.workers.Noop"
FETCH_INDEX = "oban_jobs_state_queue_priority_scheduled_at_id_index"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--other-rows",
        type=int,
        default=DEFAULT_OTHER_ROWS,
        help="rows of the big table besides the drained jobs (1,000,000)",
    )


def run(opts: common.Options) -> int:
    return asyncio.run(_run(opts))


async def fill_other_rows(dsn: str, prefix: str, rows: int) -> None:
    """Half available jobs of another queue, half completed ones (not pruned yet)."""
    p = measure.qp(prefix)
    conn = await measure.connect(dsn)
    try:
        await measure.truncate(conn, prefix)
        await conn.execute(
            f"INSERT INTO {p}.oban_jobs (state, queue, worker, args, attempt, attempted_at, "
            f"completed_at) SELECT CASE WHEN i %% 2 = 0 THEN 'available' ELSE 'completed' END"
            f"::{p}.oban_job_state, %s, %s, '{{}}', i %% 2, "
            f"CASE WHEN i %% 2 = 1 THEN timezone('UTC', now()) END, "
            f"CASE WHEN i %% 2 = 1 THEN timezone('UTC', now()) END "
            f"FROM generate_series(1, %s) AS i",
            (OTHER_QUEUE, WORKER, rows),
        )
        await conn.execute(f"VACUUM ANALYZE {p}.oban_jobs")
    finally:
        await conn.close()


async def reset_drained_queue(conn: Any, prefix: str) -> None:
    """Empty the drained queue only: the other rows stay for every run."""
    p = measure.qp(prefix)
    await conn.execute(f"DELETE FROM {p}.oban_jobs WHERE queue = %s", (QUEUE,))
    await conn.execute(f"DELETE FROM {p}.oban_producers")
    await conn.execute(f"DELETE FROM {p}.oban_leaders")


async def fetch_plan(dsn: str, prefix: str, n: int) -> dict[str, Any]:
    """EXPLAIN ANALYZE of the engine's fetch with ``n`` jobs waiting (rolled back)."""
    from oban_pro.queries import Queries

    conn = await measure.connect(dsn)
    try:
        await reset_drained_queue(conn, prefix)
        await measure.copy_jobs(conn, prefix, QUEUE, WORKER, n)
        await conn.execute(f"ANALYZE {measure.qp(prefix)}.oban_jobs")
        params = {"queue": QUEUE, "demand": LIMIT, "node": "plan", "uuid": str(uuid.uuid4())}
        async with conn.transaction(force_rollback=True):
            cur = await conn.execute(
                "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + Queries(prefix).fetch_jobs, params
            )
            lines = [row[0] for row in await cur.fetchall()]
        await reset_drained_queue(conn, prefix)
    finally:
        await conn.close()
    text = "\n".join(lines)
    return {
        "plan": text,
        "uses_index": FETCH_INDEX in text,
        "seq_scan": any("Seq Scan on oban_jobs" in line for line in lines),
    }


async def _drain(dsn: str, prefix: str, n: int, processes: int, *, keep: bool) -> dict[str, Any]:
    async def start() -> Any:
        return await engine.start_node(dsn, prefix, {QUEUE: LIMIT}, processes=processes)

    return await measure.drain(
        dsn, prefix, QUEUE, WORKER, n,
        start_node=start, stop_node=engine.stop_node, notify=common.insert_notice(prefix, QUEUE),
        reset=reset_drained_queue if keep else None,
    )  # fmt: skip


async def _run(opts: common.Options) -> int:
    engine.quiet_logs()
    dsn = common.resolve_dsn(opts.dsn)
    info = common.machine_info(dsn)
    n = opts.size_or(DEFAULT_SIZE)
    other_rows = int(opts.extra.get("other_rows", DEFAULT_OTHER_ROWS))
    processes = opts.processes or opts.cores
    common.header(
        opts, info, f"{n} no-op jobs, limit {LIMIT}; big table: {other_rows:,} other rows"
    )
    progress = common.Progress(opts.repeat * 2 + 2, "table_size", opts.quiet)
    small_runs: list[dict[str, Any]] = []
    big_runs: list[dict[str, Any]] = []
    with common.oban_pro_schema(dsn, "tsmall") as small, common.oban_pro_schema(dsn, "tbig") as big:
        progress.step(f"filling the big table ({other_rows:,} rows)")
        await fill_other_rows(dsn, big, other_rows)
        progress.advance()
        progress.step("fetch plans")
        plans = {"small": await fetch_plan(dsn, small, n), "big": await fetch_plan(dsn, big, n)}
        progress.advance()
        for rep in range(opts.repeat):
            progress.step(f"rep {rep + 1}: small table")
            small_runs.append(await _drain(dsn, small, n, processes, keep=False))
            progress.advance()
            progress.step(f"rep {rep + 1}: {other_rows:,} other rows")
            big_runs.append(await _drain(dsn, big, n, processes, keep=True))
            progress.advance()
    progress.close()

    small_rate = measure.summary([r["rate"] for r in small_runs])
    big_rate = measure.summary([r["rate"] for r in big_runs])
    ratio = measure.summary(
        [b["rate"] / s["rate"] for b, s in zip(big_runs, small_runs, strict=True)]
    )
    text = common.table(
        ["oban_jobs holds", "jobs/s median (min-max)", "vs small", "fetch plan"],
        [
            ["only the drained jobs", common.spread(small_rate), "1.00x",
             _plan_text(plans["small"])],
            [f"{other_rows:,} other rows too", common.spread(big_rate),
             f"{ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f})",
             _plan_text(plans["big"])],
        ],
    )  # fmt: skip
    if not opts.quiet:
        print(text)
        print()
        print(f"fetch plan with {other_rows:,} other rows:")
        print(plans["big"]["plan"])
    payload = {
        "scenario": "table_size",
        "machine": info,
        "params": {
            "jobs": n,
            "limit": LIMIT,
            "processes": processes,
            "other_rows": other_rows,
            "repeat": opts.repeat,
        },  # fmt: skip
        "small": {"rate": small_rate, "runs": small_runs},
        "big": {"rate": big_rate, "runs": big_runs},
        "ratio": ratio,
        "plans": plans,
        "table": text,
    }
    common.save(opts, payload, _plot)
    return 0


def _plan_text(plan: dict[str, Any]) -> str:
    if plan["seq_scan"]:
        return "SEQUENTIAL SCAN"
    return "state/queue index" if plan["uses_index"] else "no state/queue index"


def _plot(opts: common.Options, payload: dict[str, Any]) -> None:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    med, err = common.median_and_spread([payload["small"]["rate"], payload["big"]["rate"]])
    ax.bar(["small table", f"{payload['params']['other_rows']:,} other rows"], med, yerr=err,
           capsize=4)  # fmt: skip
    ax.set_ylabel("no-op jobs/s")
    ax.set_title(f"drain of {payload['params']['jobs']:,} jobs, limit {payload['params']['limit']}")
    fig.tight_layout()
    fig.savefig(common.plot_path(opts))
