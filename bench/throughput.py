"""throughput: N no-op jobs enqueued in one transaction, then drained by one node.

End-to-end jobs/s (fetch, dispatch to the worker processes, run, ack) at queue limits 10/50/100
and processes 1/2/N, every other setting at its default; beside each, the CEILING: a bare SQL
loop on the same database that fetches a batch of the same size (the queue limit) with FOR
UPDATE SKIP LOCKED and acks it with one set-based UPDATE ... FROM unnest, with no
job code at all. engine/ceiling is the share of this database's physical limit the engine reaches.

A queue's limit is the number of its jobs running at once on the node (each child runs many
jobs at once), so the engine fetches up to ``limit - running`` jobs at a time. The last column
is CPU time per job of the coordinator (this process), the worker processes and PostgreSQL
(the server under test), read from /proc: where the cores went.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from typing import Any

from . import common, engine, measure

DEFAULT_SIZE = 20_000
QUEUE = "bench"
#: ``--jobs``: the no-op the engine runs. A sync ``process`` runs on a thread of a worker
#: process, an ``async def`` one as a task on its event loop (the cheaper path, and the job the
#: peer scenario runs on both engines).
WORKERS = {"sync": "bench.workers.Noop", "async": "bench.workers.AsyncNoop"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limits", default="10,50,100", help="queue limits (10,50,100)")
    parser.add_argument(
        "--jobs", choices=sorted(WORKERS), default="sync",
        help="no-op jobs with a sync process (default) or an async def one",
    )  # fmt: skip


def _ints(text: str) -> list[int]:
    return [int(x) for x in str(text).split(",") if x.strip()]


def process_counts(opts: common.Options) -> list[int]:
    """1, 2 and N (``--processes``, default: the core count)."""
    n = opts.processes or opts.cores
    return sorted({1, 2, n})


def run(opts: common.Options) -> int:
    return asyncio.run(_run(opts))


async def _run(opts: common.Options) -> int:
    engine.quiet_logs()
    dsn = common.resolve_dsn(opts.dsn)
    info = common.machine_info(dsn)
    n = opts.size_or(DEFAULT_SIZE)
    limits = _ints(opts.extra.get("limits", "10,50,100"))
    kind = str(opts.extra.get("jobs", "sync"))
    worker = WORKERS[kind]
    procs = process_counts(opts)
    configs = [(lim, p) for lim in limits for p in procs]
    common.header(opts, info, f"{n} {kind} no-op jobs per run, median of {opts.repeat}")
    progress = common.Progress(opts.repeat * (len(configs) + len(limits)), "throughput", opts.quiet)
    engine_runs: dict[tuple[int, int], list[dict[str, Any]]] = {c: [] for c in configs}
    ceiling_runs: dict[int, list[dict[str, Any]]] = {lim: [] for lim in limits}
    with common.oban_pro_schema(dsn, "tp") as prefix:
        notify = common.insert_notice(prefix, QUEUE)
        for rep in range(opts.repeat):
            # Ceiling and engine alternate inside every repetition, so drift hits both alike.
            for lim in limits:
                progress.step(f"rep {rep + 1}: ceiling batch={lim}")
                ceiling_runs[lim].append(
                    await measure.drain_ceiling(dsn, prefix, QUEUE, worker, n, lim)
                )
                progress.advance()
                for p in procs:
                    progress.step(f"rep {rep + 1}: limit={lim} processes={p}")

                    async def start(lim: int = lim, p: int = p) -> Any:
                        return await engine.start_node(dsn, prefix, {QUEUE: lim}, processes=p)

                    async def tick() -> None:
                        progress.detail("draining")

                    engine_runs[(lim, p)].append(
                        await measure.drain(
                            dsn,
                            prefix,
                            QUEUE,
                            worker,
                            n,
                            start_node=start,
                            stop_node=engine.stop_node,
                            notify=notify,
                            on_tick=tick,
                        )
                    )
                    progress.advance()
    progress.close()

    rows, results = [], []
    for lim, p in configs:
        runs = engine_runs[(lim, p)]
        ceil = ceiling_runs[lim]
        rate = measure.summary([r["rate"] for r in runs])
        ceiling = measure.summary([c["rate"] for c in ceil])
        share = measure.summary([r["rate"] / c["rate"] for r, c in zip(runs, ceil, strict=True)])
        parent_us = statistics.median(r["cpu_us_per_job"]["self"] for r in runs)
        children_us = statistics.median(r["cpu_us_per_job"]["children"] for r in runs)
        pg_us = statistics.median(r["cpu_us_per_job"]["postgres"] for r in runs)
        results.append(
            {
                "limit": lim,
                "processes": p,
                "max_batch": lim,
                "rate": rate,
                "ceiling": ceiling,
                "engine_over_ceiling": share,
                "cpu_us_per_job": {
                    "coordinator": parent_us,
                    "workers": children_us,
                    "postgres": pg_us,
                },
                "runs": runs,
            }
        )
        rows.append(
            [
                lim,
                p,
                n,
                common.spread(rate),
                common.fmt_num(ceiling["median"]),
                f"{share['median'] * 100:.0f}% ({share['min'] * 100:.0f}-"
                f"{share['max'] * 100:.0f}%)",
                f"{parent_us:.0f} / {children_us:.0f} / {pg_us:.0f}",
            ]
        )
    ceiling_summary: list[dict[str, Any]] = [
        {
            "batch": lim,
            "rate": measure.summary([c["rate"] for c in ceiling_runs[lim]]),
            "runs": ceiling_runs[lim],
        }
        for lim in limits
    ]
    text = common.table(
        [
            "limit",
            "processes",
            "jobs",
            "jobs/s median (min-max)",
            "ceiling jobs/s",
            "engine/ceiling",
            "CPU us/job coord/workers/pg",
        ],
        rows,
    )
    ceiling_text = common.table(
        ["ceiling batch", "jobs/s median (min-max)"],
        [[c["batch"], common.spread(c["rate"])] for c in ceiling_summary],
    )
    if not opts.quiet:
        print(text)
        print()
        print("SQL ceiling (bare fetch SKIP LOCKED + set-based ack, one connection, no job code):")
        print(ceiling_text)
    payload = {
        "scenario": "throughput",
        "machine": info,
        "params": {
            "jobs": n,
            "job_kind": kind,
            "repeat": opts.repeat,
            "limits": limits,
            "processes": procs,
        },
        "results": results,
        "ceiling": ceiling_summary,
        "table": text,
        "ceiling_table": ceiling_text,
    }
    common.save(opts, payload, _plot)
    return 0


def _plot(opts: common.Options, payload: dict[str, Any]) -> None:
    plt = common.pyplot()
    results = payload["results"]
    limits = payload["params"]["limits"]
    series = sorted({r["processes"] for r in results})
    fig, ax = plt.subplots(figsize=(9, 5))
    width = 0.8 / (len(series) + 1)
    for i, p in enumerate(series):
        values = [
            next(r["rate"]["median"] for r in results if r["limit"] == lim and r["processes"] == p)
            for lim in limits
        ]
        errs = [
            [
                v
                - next(
                    r["rate"]["min"] for r in results if r["limit"] == lim and r["processes"] == p
                )
                for v, lim in zip(values, limits, strict=True)
            ],
            [
                next(r["rate"]["max"] for r in results if r["limit"] == lim and r["processes"] == p)
                - v
                for v, lim in zip(values, limits, strict=True)
            ],
        ]
        xs = [j + i * width for j in range(len(limits))]
        ax.bar(xs, values, width, yerr=errs, capsize=3, label=f"{p} processes")
    ceil = [c["rate"]["median"] for c in payload["ceiling"]]
    xs = [j + len(series) * width for j in range(len(limits))]
    ax.bar(xs, ceil, width, color="lightgray", edgecolor="black", label="SQL ceiling")
    ax.set_xticks([j + width * len(series) / 2 for j in range(len(limits))])
    ax.set_xticklabels([f"limit {lim}" for lim in limits])
    ax.set_ylabel("no-op jobs/s (median, min-max)")
    ax.set_title(
        f"oban_pro throughput vs SQL ceiling ({payload['machine']['cores']} cores, "
        f"{payload['machine']['date'][:10]})"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(common.plot_path(opts), dpi=110)
    plt.close(fig)
