"""limits: the cost of a global limit, and how much of a rate limit a queue gets.

1. GLOBAL: two nodes (one event loop, ``--processes`` worker processes each), local limit 50
   each, drain N no-op jobs, with and without ``global_limit = 100`` (the sum of the local
   limits, so the limit never binds and what is measured is its bookkeeping: the queue's
   advisory lock and the count of executing jobs in each fetch). A B A B in one run; the ratio
   limited/plain per repetition, median and spread. Target: within 20%.
2. RATE: two nodes, ``rate_limit = {allowed, period}`` (default 400 per 1 s), drain enough
   jobs for ``--windows`` windows. Achieved rate vs configured, from the jobs' ``attempted_at``
   (the times the window counted): starts / (allowed x (span / period + 1)), 1.0 when every
   window they span is full; and the densest period-long window found (must be <= allowed).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
from typing import Any

from . import common, engine, measure

DEFAULT_SIZE = 10_000
QUEUE = "bench"
WORKER = "bench.workers.Noop"
LOCAL_LIMIT = 50
_names = itertools.count()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allowed", type=int, default=400, help="rate_limit allowed (400)")
    parser.add_argument("--period", type=float, default=1.0, help="rate_limit period s (1)")
    parser.add_argument("--windows", type=int, default=6, help="rate windows per run (6)")


def run(opts: common.Options) -> int:
    return asyncio.run(_run(opts))


async def _start_two(dsn: str, prefix: str, spec: Any, processes: int) -> list[Any]:
    from oban_pro import Oban

    name = f"bench-limits-{next(_names)}"  # one cluster: both nodes share the instance name
    nodes = [
        Oban(dsn=dsn, prefix=prefix, queues={QUEUE: spec}, processes=processes,
             imports=["bench.workers"], name=name, node=f"bench-{i}")
        for i in (1, 2)
    ]  # fmt: skip
    for node in nodes:
        await node.start()
    return nodes


async def _stop_all(nodes: list[Any]) -> None:
    for node in nodes:
        await node.stop()


async def _drain(dsn: str, prefix: str, spec: Any, n: int, processes: int) -> dict[str, Any]:
    async def start() -> Any:
        return await _start_two(dsn, prefix, spec, processes)

    return await measure.drain(
        dsn, prefix, QUEUE, WORKER, n,
        start_node=start, stop_node=_stop_all, notify=common.insert_notice(prefix, QUEUE),
    )  # fmt: skip


async def _starts(dsn: str, prefix: str) -> list[float]:
    conn = await measure.connect(dsn)
    try:
        cur = await conn.execute(
            f"SELECT extract(epoch FROM attempted_at)::float8 FROM {measure.qp(prefix)}.oban_jobs "
            f"WHERE queue = %s ORDER BY 1",
            (QUEUE,),
        )
        return [row[0] for row in await cur.fetchall()]
    finally:
        await conn.close()


def rate_use(starts: list[float], allowed: int, period: float) -> tuple[float, int]:
    """(share of the windows' capacity used, densest period-long window)."""
    span = starts[-1] - starts[0]
    use = len(starts) / (allowed * (span / period + 1))
    densest, j = 0, 0
    for i, t in enumerate(starts):
        while starts[j] <= t - period:
            j += 1
        densest = max(densest, i - j + 1)
    return use, densest


async def _run(opts: common.Options) -> int:
    engine.quiet_logs()
    dsn = common.resolve_dsn(opts.dsn)
    info = common.machine_info(dsn)
    n = opts.size_or(DEFAULT_SIZE)
    processes = opts.processes or 1
    allowed = int(opts.extra.get("allowed", 400))
    period = float(opts.extra.get("period", 1.0))
    windows = int(opts.extra.get("windows", 6))
    common.header(opts, info, f"global limit cost on {n} no-op jobs; rate {allowed}/{period}s")
    progress = common.Progress(opts.repeat * 3, "limits", opts.quiet)
    plain_runs: list[dict[str, Any]] = []
    limited_runs: list[dict[str, Any]] = []
    rate_runs: list[dict[str, Any]] = []
    limited_spec = {"limit": LOCAL_LIMIT, "global_limit": 2 * LOCAL_LIMIT}
    rate_spec = {"limit": LOCAL_LIMIT, "rate_limit": {"allowed": allowed, "period": period}}
    with common.oban_pro_schema(dsn, "limits") as prefix:
        for rep in range(opts.repeat):
            progress.step(f"rep {rep + 1}: plain")
            plain_runs.append(await _drain(dsn, prefix, LOCAL_LIMIT, n, processes))
            progress.advance()
            progress.step(f"rep {rep + 1}: global_limit {2 * LOCAL_LIMIT}")
            limited_runs.append(await _drain(dsn, prefix, limited_spec, n, processes))
            progress.advance()
            progress.step(f"rep {rep + 1}: rate_limit")
            run = await _drain(dsn, prefix, rate_spec, allowed * windows, processes)
            use, densest = rate_use(await _starts(dsn, prefix), allowed, period)
            rate_runs.append({**run, "use": use, "densest": densest})
            progress.advance()
    progress.close()

    plain = measure.summary([r["rate"] for r in plain_runs])
    limited = measure.summary([r["rate"] for r in limited_runs])
    ratio = measure.summary(
        [lim["rate"] / p["rate"] for lim, p in zip(limited_runs, plain_runs, strict=True)]
    )
    use = measure.summary([r["use"] for r in rate_runs])
    densest = max(r["densest"] for r in rate_runs)
    text = common.table(
        ["queue (2 nodes, local limit 50 each)", "jobs/s median (min-max)", "vs plain"],
        [
            ["plain", common.spread(plain), "1.00x"],
            [f"global_limit {2 * LOCAL_LIMIT}", common.spread(limited),
             f"{ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f})"],
        ],
    )  # fmt: skip
    rate_text = common.table(
        ["rate_limit", "jobs", "window capacity used median (min-max)", "densest window"],
        [[f"{allowed} per {period:g}s", allowed * windows,
          f"{use['median'] * 100:.1f}% ({use['min'] * 100:.1f}-{use['max'] * 100:.1f}%)",
          f"{densest} (limit {allowed})"]],
    )  # fmt: skip
    if not opts.quiet:
        print(text)
        print()
        print(rate_text)
    payload = {
        "scenario": "limits",
        "machine": info,
        "params": {"jobs": n, "repeat": opts.repeat, "processes": processes,
                   "allowed": allowed, "period": period, "windows": windows},
        "global": {"plain": plain, "limited": limited, "ratio": ratio,
                   "runs": {"plain": plain_runs, "limited": limited_runs}},
        "rate": {"use": use, "densest": densest, "runs": rate_runs},
        "table": text,
        "rate_table": rate_text,
    }  # fmt: skip
    common.save(opts, payload, _plot)
    return 0 if densest <= allowed else 1


def _plot(opts: common.Options, payload: dict[str, Any]) -> None:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    g = payload["global"]
    med, err = common.median_and_spread([g["plain"], g["limited"]])
    ax.bar(["plain", "global_limit"], med, yerr=err, capsize=4)
    ax.set_ylabel("jobs/s (2 nodes)")
    ax.set_title("cost of a global limit that never binds")
    fig.tight_layout()
    fig.savefig(common.plot_path(opts))
