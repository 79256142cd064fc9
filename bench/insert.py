"""insert: the same N job rows written seven ways into an empty oban_jobs, each in one transaction
(except ``enqueue`` one by one, which commits per job, as an application would):

- ``Oban.enqueue`` per job (async, one transaction each; a sample of min(N, 1000) jobs), beside
  a bare one-row INSERT + NOTIFY per transaction (the same statements without the engine);
- ``Oban.enqueue_many`` (async: one INSERT ... SELECT FROM unnest + one NOTIFY per queue);
- ``Client.enqueue_many`` (the synchronous client, same statement);
- bare ``executemany`` of a one-row INSERT (psycopg pipelines it);
- a bare multi-row ``INSERT ... VALUES (...), (...)`` in chunks of 1000 rows;
- ``COPY ... FROM STDIN``, the fastest way into PostgreSQL.

Jobs/rows are built before the clock starts; each figure is shown as a fraction of COPY and of
the multi-row INSERT measured in the same repetition. One commit per job is bound by the
database's commit (WAL flush) latency: compare the two one-per-transaction rows with each other.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import common, engine, measure

DEFAULT_SIZE = 10_000
QUEUE = "bench"
WORKER = "bench.workers.Noop"
COLUMNS = "(state, queue, worker, args, meta, tags, max_attempts, priority, scheduled_at)"
COPY_COLUMNS = "(state, queue, worker, args, meta, tags, max_attempts, priority)"
CHUNK = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--single", type=int, default=1000, help="jobs for the one-by-one enqueue sample (1000)"
    )


def run(opts: common.Options) -> int:
    return asyncio.run(_run(opts))


def rows_for(n: int) -> list[tuple[Any, ...]]:
    return [("available", QUEUE, WORKER, json.dumps({"i": i}), "{}", [], 20, 0) for i in range(n)]


async def _timed(conn: Any, prefix: str, n: int, body: Callable[[], Awaitable[Any]]) -> float:
    await measure.truncate(conn, prefix)
    started = time.perf_counter()
    await body()
    elapsed = time.perf_counter() - started
    cur = await conn.execute(f"SELECT count(*) FROM {measure.qp(prefix)}.oban_jobs")
    row = await cur.fetchone()
    if not row or int(row[0]) != n:
        raise RuntimeError(f"expected {n} rows after insert, found {row}")
    return n / elapsed


async def one_rep(dsn: str, prefix: str, n: int, single: int) -> dict[str, float]:
    from oban_pro import Client, Oban

    from .workers import Noop

    p = measure.qp(prefix)
    conn = await measure.connect(dsn)
    work = await measure.connect(dsn)
    oban = Oban(dsn=dsn, prefix=prefix, name=f"bench-insert-{id(conn)}")
    await oban.open_pool()
    client = Client(dsn, prefix=prefix)
    rates: dict[str, float] = {}
    try:
        jobs = [Noop.new({"i": i}) for i in range(n)]  # type: ignore[attr-defined]
        singles = [Noop.new({"i": i}) for i in range(single)]  # type: ignore[attr-defined]

        async def enqueue_one() -> None:
            for job in singles:
                await oban.enqueue(job)

        rates["Oban.enqueue (one per transaction)"] = await _timed(
            conn, prefix, single, enqueue_one
        )

        one_rows = rows_for(single)
        insert_one = (
            f"INSERT INTO {p}.oban_jobs {COLUMNS} VALUES "
            f"(%s, %s, %s, %s, %s, %s, %s, %s, timezone('UTC', now()))"
        )
        notice = common.insert_notice(prefix, QUEUE)

        async def bare_one() -> None:
            for row in one_rows:
                async with work.transaction():
                    await work.execute(insert_one, row)
                    await work.execute("SELECT pg_notify(%s, %s)", notice)

        rates["bare 1-row INSERT + NOTIFY (one per transaction)"] = await _timed(
            conn, prefix, single, bare_one
        )

        async def enqueue_many() -> None:
            await oban.enqueue_many(jobs)

        rates["Oban.enqueue_many"] = await _timed(conn, prefix, n, enqueue_many)

        sync_jobs = [Noop.new({"i": i}) for i in range(n)]  # type: ignore[attr-defined]

        async def client_many() -> None:
            await asyncio.to_thread(client.enqueue_many, sync_jobs)

        rates["Client.enqueue_many (sync)"] = await _timed(conn, prefix, n, client_many)

        rows = rows_for(n)
        one_row = (
            f"INSERT INTO {p}.oban_jobs {COLUMNS} VALUES "
            f"(%s, %s, %s, %s, %s, %s, %s, %s, timezone('UTC', now()))"
        )

        async def executemany() -> None:
            async with work.transaction(), work.cursor() as cur:
                await cur.executemany(one_row, rows)

        rates["bare executemany (1-row INSERT)"] = await _timed(conn, prefix, n, executemany)

        async def multirow() -> None:
            async with work.transaction(), work.cursor() as cur:
                for start in range(0, n, CHUNK):
                    chunk = rows[start : start + CHUNK]
                    values = ", ".join(
                        ["(%s, %s, %s, %s, %s, %s, %s, %s, timezone('UTC', now()))"] * len(chunk)
                    )
                    await cur.execute(
                        f"INSERT INTO {p}.oban_jobs {COLUMNS} VALUES {values}",
                        [v for row in chunk for v in row],
                    )

        rates[f"bare multi-row INSERT ({CHUNK} rows/statement)"] = await _timed(
            conn, prefix, n, multirow
        )

        async def copy() -> None:
            async with work.transaction(), work.cursor() as cur:
                async with cur.copy(f"COPY {p}.oban_jobs {COPY_COLUMNS} FROM STDIN") as cp:
                    for row in rows:
                        await cp.write_row(row)

        rates["bare COPY"] = await _timed(conn, prefix, n, copy)
    finally:
        client.close()
        await oban.stop()
        await work.close()
        await conn.close()
    return rates


async def _run(opts: common.Options) -> int:
    engine.quiet_logs()
    dsn = common.resolve_dsn(opts.dsn)
    info = common.machine_info(dsn)
    n = opts.size_or(DEFAULT_SIZE)
    single = min(n, int(opts.extra.get("single", 1000)))
    common.header(
        opts,
        info,
        f"{n} rows per method ({single} for one-by-one enqueue), median of {opts.repeat}",
    )
    progress = common.Progress(opts.repeat, "insert", opts.quiet)
    reps: list[dict[str, float]] = []
    with common.oban_pro_schema(dsn, "ins") as prefix:
        for rep in range(opts.repeat):
            progress.step(f"rep {rep + 1}")
            reps.append(await one_rep(dsn, prefix, n, single))
            progress.advance()
    progress.close()
    copy_key = "bare COPY"
    multi_key = f"bare multi-row INSERT ({CHUNK} rows/statement)"
    rows, results = [], []
    for method in reps[0]:
        rate = measure.summary([r[method] for r in reps])
        vs_copy = measure.summary([r[method] / r[copy_key] for r in reps])
        vs_multi = measure.summary([r[method] / r[multi_key] for r in reps])
        results.append(
            {"method": method, "rate": rate, "vs_copy": vs_copy, "vs_multirow": vs_multi}
        )
        rows.append(
            [method, common.spread(rate), f"{vs_copy['median']:.2f}", f"{vs_multi['median']:.2f}"]
        )
    text = common.table(["method", "rows/s median (min-max)", "/ COPY", "/ multi-row INSERT"], rows)
    if not opts.quiet:
        print(text)
    payload = {
        "scenario": "insert",
        "machine": info,
        "params": {"rows": n, "single": single, "repeat": opts.repeat, "chunk": CHUNK},
        "results": results,
        "runs": reps,
        "table": text,
    }
    common.save(opts, payload, _plot)
    return 0


def _plot(opts: common.Options, payload: dict[str, Any]) -> None:
    plt = common.pyplot()
    results = payload["results"]
    fig, ax = plt.subplots(figsize=(8, 4))
    names = [r["method"] for r in results]
    med, (lo, hi) = common.median_and_spread([r["rate"] for r in results])
    ax.barh(
        names,
        med,
        xerr=[lo, hi],
        capsize=3,
        color=["tab:blue" if "Oban" in m or "Client" in m else "lightgray" for m in names],
    )
    ax.invert_yaxis()
    ax.set_xlabel("rows/s (median, min-max)")
    ax.set_title(
        f"Inserting {payload['params']['rows']} jobs ({payload['machine']['cores']} cores, "
        f"{payload['machine']['date'][:10]})"
    )
    fig.tight_layout()
    fig.savefig(common.plot_path(opts), dpi=110)
    plt.close(fig)
