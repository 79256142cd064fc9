"""workflow: a 1 -> N -> 1 fan-out/fan-in workflow of no-op steps against the same N + 2 jobs
without dependencies, on one node, alternated (A B A B) in one run: seconds from just before the
insert to the last job's ``completed_at`` (both read on the database clock), and the ratio.

Then the cost of releasing on the database, measured on the ack statement itself (no engine
around it): the jobs are marked executing by hand and acked in batches as the acker does.
A third shape, the same plain jobs with a workflow step's meta, separates what the GIN index on
meta costs every update of such a row (fetch, ack) from what releasing costs.
``release``: one ack of the fan-out's first step, which makes N steps available, per released
step; ``fan-in``: the N middle steps acked in batches of 500 (each batch lowers the last step's
``wf_wait`` once), per acked job, against the same acks of N plain jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

from . import common, engine, measure

DEFAULT_SIZE = 10_000
QUEUE = "bench"
ACK_BATCH = 500


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=100, help="queue limit of the node (100)")


def run(opts: common.Options) -> int:
    return asyncio.run(_run(opts))


def _workflow(n: int) -> Any:
    from oban_pro.workflow import Workflow

    from .workers import Noop

    return (
        Workflow(name="bench")
        .add("first", Noop.new({}))
        .add_many("middle", [Noop.new({}) for _ in range(n)], deps="first")
        .add("last", Noop.new({}), deps="middle")
    )


async def _db_now(conn: Any) -> float:
    cur = await conn.execute("SELECT extract(epoch FROM timezone('UTC', clock_timestamp()))")
    return float((await cur.fetchone())[0])


async def _finished_at(conn: Any, prefix: str, total: int, timeout: float = 600.0) -> float:
    """The last completed_at once all ``total`` jobs completed (epoch seconds, UTC)."""
    p = measure.qp(prefix)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cur = await conn.execute(
            f"SELECT count(*) FILTER (WHERE state = 'completed'), "
            f"extract(epoch FROM max(completed_at)) FROM {p}.oban_jobs"
        )
        done, last = await cur.fetchone()
        if done >= total:
            return float(last)
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{total} jobs did not complete within {timeout}s")


async def one_run(oban: Any, conn: Any, prefix: str, n: int, shape: str) -> float:
    from .workers import Noop

    await measure.truncate(conn, prefix)
    started = await _db_now(conn)
    if shape == "workflow":
        await oban.enqueue_many(_workflow(n))
    elif shape == "plain_meta":
        # No dependencies, but meta as large as a workflow step's: what the GIN index on meta
        # (Elixir's oban_jobs_meta_index) costs each update of such a row, apart from releasing.
        wid, sub = str(uuid.uuid4()), str(uuid.uuid4())
        meta = {
            "workflow_id": sub,
            "name": "0",
            "deps": [],
            "workflow_name": "middle",
            "sup_workflow_id": wid,
            "wf_wait": 1,
            "wf_need": 1,
            "wf_next": [n + 2],
        }
        await oban.enqueue_many(
            [Noop.new({}, meta={**meta, "name": str(i)}) for i in range(n + 2)]
        )  # fmt: skip
    else:
        await oban.enqueue_many([Noop.new({}) for _ in range(n + 2)])
    return await _finished_at(conn, prefix, n + 2) - started


# -- the ack statement alone ------------------------------------------------------------------


async def _mark_executing(conn: Any, prefix: str, ids: list[int], producer: str) -> None:
    p = measure.qp(prefix)
    await conn.execute(
        f"UPDATE {p}.oban_jobs SET state = 'executing', attempt = 1, "
        f"attempted_by = ARRAY['bench', %(u)s] WHERE id = ANY(%(ids)s)",
        {"u": producer, "ids": ids},
    )


async def _ack(conn: Any, sql: str, ids: list[int], producer: str) -> float:
    params = {
        "ids": ids, "attempts": [1] * len(ids), "uuids": [producer] * len(ids),
        "kinds": ["completed"] * len(ids), "delays": [0.0] * len(ids),
        "errors": [None] * len(ids), "metas": [None] * len(ids), "ages": [0.0] * len(ids),
        "max_crashes": 3,
    }  # fmt: skip
    t0 = time.perf_counter()
    cur = await conn.execute(sql, params)
    await cur.fetchall()
    return time.perf_counter() - t0


async def ack_costs(dsn: str, prefix: str, n: int) -> dict[str, float]:
    """Seconds of the ack statements for one workflow and for n + 2 plain jobs."""
    from oban_pro import Client
    from oban_pro.queries import Queries

    from .workers import Noop

    sql = Queries(prefix).ack_jobs
    producer = str(uuid.uuid4())
    conn = await measure.connect(dsn)
    try:
        await measure.truncate(conn, prefix)
        with Client(dsn, prefix=prefix) as client:
            jobs = client.enqueue_many(_workflow(n))
        first, middle, last = jobs[0].id, [j.id for j in jobs[1:-1]], jobs[-1].id
        await _mark_executing(conn, prefix, [first], producer)
        release = await _ack(conn, sql, [first], producer)
        await _mark_executing(conn, prefix, middle, producer)
        fan_in = 0.0
        for i in range(0, n, ACK_BATCH):
            fan_in += await _ack(conn, sql, middle[i : i + ACK_BATCH], producer)
        cur = await conn.execute(
            f"SELECT state::text FROM {measure.qp(prefix)}.oban_jobs WHERE id = %s", (last,)
        )
        assert (await cur.fetchone())[0] == "available", "the last step was not released"

        await measure.truncate(conn, prefix)
        with Client(dsn, prefix=prefix) as client:
            plain = [j.id for j in client.enqueue_many([Noop.new({}) for _ in range(n + 1)])]
        await _mark_executing(conn, prefix, plain, producer)
        single = await _ack(conn, sql, plain[:1], producer)
        plain_acks = 0.0
        for i in range(1, n + 1, ACK_BATCH):
            plain_acks += await _ack(conn, sql, plain[i : i + ACK_BATCH], producer)
    finally:
        await conn.close()
    return {"release": release, "single": single, "fan_in": fan_in, "plain": plain_acks}


# -- the scenario -----------------------------------------------------------------------------


async def _run(opts: common.Options) -> int:
    engine.quiet_logs()
    dsn = common.resolve_dsn(opts.dsn)
    info = common.machine_info(dsn)
    n = opts.size_or(DEFAULT_SIZE)
    processes = opts.processes or opts.cores
    limit = int(opts.extra.get("limit", 100))
    common.header(
        opts, info, f"1 -> {n:,} -> 1 workflow vs {n + 2:,} plain no-op jobs, {processes} "
        f"processes, limit {limit}, alternated, median of {opts.repeat}"
    )  # fmt: skip
    progress = common.Progress(opts.repeat * 4, "workflow", opts.quiet)
    seconds: dict[str, list[float]] = {"plain": [], "plain_meta": [], "workflow": []}
    costs: list[dict[str, float]] = []
    with common.oban_pro_schema(dsn, "wf") as prefix:
        oban = await engine.start_node(dsn, prefix, {QUEUE: limit}, processes=processes)
        conn = await measure.connect(dsn)
        try:
            for rep in range(opts.repeat):
                for shape in ("plain", "plain_meta", "workflow"):
                    progress.step(f"rep {rep + 1}: {shape}")
                    seconds[shape].append(await one_run(oban, conn, prefix, n, shape))
                    progress.advance()
        finally:
            await conn.close()
            await engine.stop_node(oban)
        for rep in range(opts.repeat):
            progress.step(f"rep {rep + 1}: ack statement costs")
            costs.append(await ack_costs(dsn, prefix, n))
            progress.advance()
    progress.close()
    ratios = [w / p for w, p in zip(seconds["workflow"], seconds["plain"], strict=True)]
    meta_ratios = [w / p for w, p in zip(seconds["workflow"], seconds["plain_meta"], strict=True)]
    per_release = [c["release"] / n * 1e6 for c in costs]
    extra_fan_in = [(c["fan_in"] - c["plain"]) / n * 1e6 for c in costs]
    release_vs_single = [(c["release"] - c["single"]) / n * 1e6 for c in costs]
    result = {
        "scenario": "workflow",
        "machine": info,
        "size": n,
        "processes": processes,
        "limit": limit,
        "seconds": {k: measure.summary(v) for k, v in seconds.items()},
        "ratio_workflow_over_plain": measure.summary(ratios),
        "ratio_workflow_over_plain_meta": measure.summary(meta_ratios),
        "ack_costs_seconds": costs,
        "release_us_per_step": measure.summary(per_release),
        "release_extra_us_per_step": measure.summary(release_vs_single),
        "fan_in_extra_us_per_acked_job": measure.summary(extra_fan_in),
    }
    if not opts.quiet:
        s = result["seconds"]
        print(common.table(
            ["shape", "jobs", "insert to last completion, s"],
            [["plain", f"{n + 2:,}", common.spread(s["plain"], 2)],
             ["plain, workflow-sized meta", f"{n + 2:,}", common.spread(s["plain_meta"], 2)],
             [f"1 -> {n:,} -> 1", f"{n + 2:,}", common.spread(s["workflow"], 2)]],
        ))  # fmt: skip
        print(f"workflow / plain: {common.spread(result['ratio_workflow_over_plain'], 2, 'x')}; "
              f"workflow / plain with the same meta: "
              f"{common.spread(result['ratio_workflow_over_plain_meta'], 2, 'x')}")  # fmt: skip
        print(
            f"ack statement: releasing {n:,} steps in one ack "
            f"{common.spread(result['release_us_per_step'], 2, ' us')} per released step "
            f"({common.spread(result['release_extra_us_per_step'], 2, ' us')} more than acking "
            f"one plain job, per step); fan-in acks (batches of {ACK_BATCH}) "
            f"{common.spread(result['fan_in_extra_us_per_acked_job'], 2, ' us')} more per acked "
            f"job than plain acks"
        )
    common.save(opts, result, _plot)
    return 0


def _plot(opts: common.Options, payload: dict[str, Any]) -> None:
    plt = common.pyplot()
    seconds = payload["seconds"]
    med, err = common.median_and_spread([seconds["plain"], seconds["workflow"]])
    n = payload["size"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar([f"{n + 2:,} plain jobs", f"1 -> {n:,} -> 1 workflow"], med, yerr=err, capsize=6,
           color=["#888888", "#3a7bd5"])  # fmt: skip
    ax.set_ylabel("insert to last completion, s (median, min-max)")
    ratio = payload["ratio_workflow_over_plain"]["median"]
    ax.set_title(f"workflow / plain = {ratio:.2f}x ({payload['processes']} processes)")
    fig.tight_layout()
    fig.savefig(common.plot_path(opts))
    plt.close(fig)
