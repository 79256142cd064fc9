"""latency: single jobs enqueued one at a time on an idle node (the next only after the previous
one completed). enqueue-to-start runs from just before ``oban.enqueue`` to the ``time.time()``
the job reads when its ``process`` begins in a worker process (sent back on a Unix datagram
socket: nothing polls the database meanwhile); enqueue-to-complete ends at the job's
``completed_at`` (when the coordinator learnt the job ended: an ack that waits up to
``ack_linger`` to share a write is stamped with that moment, not the write's).

The FLOOR beside it is the database alone: insert one row and NOTIFY in one transaction, a
LISTENing connection receives the notice and fetches the row with FOR UPDATE SKIP LOCKED; the
time from before the insert to the fetched row is what no engine on this database can beat.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import psycopg

from . import common, engine, measure

DEFAULT_SIZE = 200
QUEUE = "bench_latency"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gap", type=float, default=0.02, help="idle seconds between two jobs (0.02)"
    )


def run(opts: common.Options) -> int:
    return asyncio.run(_run(opts))


async def floor_series(dsn: str, prefix: str, n: int, gap: float, warmup: int = 5) -> list[float]:
    """Milliseconds from before INSERT+NOTIFY to the row fetched by a LISTENing connection."""
    p = measure.qp(prefix)
    chan = f"bench_floor_{prefix}"
    fetch = measure.CEILING_FETCH.format(p=p)
    ack = measure.CEILING_ACK.format(p=p)
    listener = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    writer = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    samples: list[float] = []
    try:
        await listener.execute(f'LISTEN "{chan}"')
        params = {"queue": QUEUE + "_floor", "demand": 1, "node": "floor", "uuid": "floor"}
        for i in range(warmup + n):
            await asyncio.sleep(gap)
            t0 = time.time()
            async with writer.transaction():
                await writer.execute(
                    f"INSERT INTO {p}.oban_jobs (state, queue, worker) "
                    f"VALUES ('available', %s, 'floor')",
                    (params["queue"],),
                )
                await writer.execute("SELECT pg_notify(%s, '')", (chan,))
            # notifies() holds the connection while it runs: stop after one notice, then fetch.
            async for _notice in listener.notifies(timeout=10.0, stop_after=1):
                pass
            cur = await listener.execute(fetch, params, prepare=True)
            rows = await cur.fetchall()
            t1 = time.time()
            await listener.execute(ack, {"ids": [r[0] for r in rows]}, prepare=True)
            if i >= warmup:
                samples.append((t1 - t0) * 1000.0)
    finally:
        await listener.close()
        await writer.close()
    return samples


async def engine_series(
    dsn: str, prefix: str, n: int, gap: float, processes: int, progress: common.Progress
) -> dict[str, list[float]]:
    from .workers import Stamp

    oban = await engine.start_node(dsn, prefix, {QUEUE: 10}, processes=processes)
    try:

        async def enqueue(sock: str) -> int:
            job = await oban.enqueue(Stamp.new({"sock": sock}))  # type: ignore[attr-defined]
            return int(job.id)

        return await measure.latency_series(
            dsn,
            prefix,
            n,
            enqueue=enqueue,
            gap=gap,
            on_sample=lambda i: progress.detail(f"{i}/{n}") if i % 20 == 0 else None,
        )
    finally:
        await engine.stop_node(oban)


async def _run(opts: common.Options) -> int:
    engine.quiet_logs()
    dsn = common.resolve_dsn(opts.dsn)
    info = common.machine_info(dsn)
    n = opts.size_or(DEFAULT_SIZE)
    gap = float(opts.extra.get("gap", 0.02))
    processes = opts.processes or opts.cores
    common.header(
        opts,
        info,
        f"{n} single jobs per run, one at a time, {processes} processes, median of {opts.repeat}",
    )
    progress = common.Progress(opts.repeat * 2, "latency", opts.quiet)
    reps: list[dict[str, Any]] = []
    with common.oban_pro_schema(dsn, "lat") as prefix:
        for rep in range(opts.repeat):
            conn = await measure.connect(dsn)
            await measure.truncate(conn, prefix)
            await conn.close()
            progress.step(f"rep {rep + 1}: oban_pro")
            got = await engine_series(dsn, prefix, n, gap, processes, progress)
            progress.advance()
            progress.step(f"rep {rep + 1}: SQL floor")
            got["floor_ms"] = await floor_series(dsn, prefix, n, gap)
            progress.advance()
            reps.append(got)
    progress.close()

    def stat(key: str, pct: str) -> dict[str, Any]:
        return measure.summary([measure.latency_stats(r[key])[pct] for r in reps])

    rows, results = [], {}
    for key, label in (
        ("to_start_ms", "enqueue -> start"),
        ("to_complete_ms", "enqueue -> complete"),
        ("floor_ms", "SQL floor: insert+notify -> fetched"),
    ):
        results[key] = {pct: stat(key, pct) for pct in ("p50", "p95", "p99", "max")}
        rows.append(
            [label] + [common.spread(results[key][pct], 2) for pct in ("p50", "p95", "p99")]
        )
    over_floor = measure.summary(
        [
            measure.latency_stats(r["to_start_ms"])["p50"]
            - measure.latency_stats(r["floor_ms"])["p50"]
            for r in reps
        ]
    )
    text = common.table(["ms, median of runs (min-max)", "p50", "p95", "p99"], rows)
    if not opts.quiet:
        print(text)
        print(f"\nenqueue->start p50 above the SQL floor p50: {common.spread(over_floor, 2)} ms")
    payload = {
        "scenario": "latency",
        "machine": info,
        "params": {
            "samples": n,
            "gap": gap,
            "processes": processes,
            "queue_limit": 10,
            "repeat": opts.repeat,
        },
        "results": results,
        "start_p50_over_floor_ms": over_floor,
        "runs": reps,
        "table": text,
    }
    common.save(opts, payload, _plot)
    return 0


def _plot(opts: common.Options, payload: dict[str, Any]) -> None:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = {
        "to_start_ms": "enqueue -> start",
        "to_complete_ms": "enqueue -> complete",
        "floor_ms": "SQL floor (insert+notify -> fetched)",
    }
    for key, label in labels.items():
        values = sorted(v for r in payload["runs"] for v in r[key])
        if values:
            ys = [i / len(values) for i in range(1, len(values) + 1)]
            ax.plot(values, ys, label=label)
    ax.set_xscale("log")
    fastest = min(min(r["floor_ms"] + r["to_start_ms"]) for r in payload["runs"])
    slowest = max(max(r["to_complete_ms"]) for r in payload["runs"])
    ticks = [t for t in (1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 100, 200, 500)
             if fastest * 0.8 <= t <= slowest * 1.2]  # fmt: skip
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_xlim(max(0.5, fastest * 0.8), slowest * 1.2)
    ax.set_xlabel("milliseconds (log scale)")
    ax.set_ylabel("fraction of jobs")
    ax.set_title(
        f"oban_pro latency on an idle node ({payload['machine']['cores']} cores, "
        f"{payload['machine']['date'][:10]})"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(common.plot_path(opts), dpi=110)
    plt.close(fig)
