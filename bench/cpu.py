"""cpu: CPU-bound jobs (pure Python, ~20 ms each, calibrated on this machine) drained by one
node with 1, 2 and N worker processes. Speedup is time(1 process) / time(p processes), paired
within each repetition; the ideal is min(p, cores). "serial" is the same work in a plain loop in
this process, without any engine (what one core can do); "plain" is the same jobs shared by p
plain processes (bench/plain_cpu.py), what the cores give p processes at that moment, and the
last column is the engine's share of it.

Postgres and the coordinator share the cores with the worker processes, so on 2 cores expect
somewhat less than 2x.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from . import common, engine, measure, plain_cpu
from .workers import burn, calibrate_rounds

DEFAULT_SIZE = 200
QUEUE = "bench_cpu"
WORKER = "bench.workers.Cpu"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--job-ms", type=float, default=20.0, help="CPU time per job (20 ms)")
    parser.add_argument("--limit", type=int, default=10, help="queue limit (10)")


def process_counts(opts: common.Options) -> list[int]:
    return sorted({1, 2, opts.processes or opts.cores})


def run(opts: common.Options) -> int:
    return asyncio.run(_run(opts))


def serial_seconds(rounds: int, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        burn(rounds)
    return time.perf_counter() - started


async def _run(opts: common.Options) -> int:
    engine.quiet_logs()
    dsn = common.resolve_dsn(opts.dsn)
    info = common.machine_info(dsn)
    n = opts.size_or(DEFAULT_SIZE)
    job_ms = float(opts.extra.get("job_ms", 20.0))
    limit = int(opts.extra.get("limit", 10))
    rounds = calibrate_rounds(job_ms / 1000.0)
    procs = process_counts(opts)
    common.header(
        opts,
        info,
        f"{n} jobs of ~{job_ms:.0f} ms ({rounds} rounds), limit {limit}, median of {opts.repeat}",
    )
    progress = common.Progress(opts.repeat * (2 * len(procs) + 1), "cpu", opts.quiet)
    args = f'{{"rounds": {rounds}}}'
    runs: dict[Any, list[dict[str, Any]]] = {p: [] for p in procs}
    serial: list[float] = []
    plain: dict[int, list[float]] = {p: [] for p in procs}
    with common.oban_pro_schema(dsn, "cpu") as prefix:
        notify = common.insert_notice(prefix, QUEUE)
        for rep in range(opts.repeat):
            progress.step(f"rep {rep + 1}: serial loop")
            serial.append(serial_seconds(rounds, n))
            progress.advance()
            for p in procs:
                progress.step(f"rep {rep + 1}: {p} plain processes")
                plain[p].append(await asyncio.to_thread(plain_cpu.rate, p, rounds, n))
                progress.advance()
                progress.step(f"rep {rep + 1}: processes={p}")

                async def start(p: int = p) -> Any:
                    return await engine.start_node(dsn, prefix, {QUEUE: max(limit, p)}, processes=p)

                runs[p].append(
                    await measure.drain(
                        dsn,
                        prefix,
                        QUEUE,
                        WORKER,
                        n,
                        args=args,
                        start_node=start,
                        stop_node=engine.stop_node,
                        notify=notify,
                    )
                )
                progress.advance()
    progress.close()

    rows, results = [], []
    serial_s = measure.summary(serial)
    rows.append(
        [
            "serial (no engine)",
            common.spread(measure.summary([n / s for s in serial]), 1),
            common.spread(serial_s, 2),
            "-",
            "-",
            "-",
            "-",
        ]
    )
    for p in procs:
        rate = measure.summary([r["rate"] for r in runs[p]])
        secs = measure.summary([r["seconds"] for r in runs[p]])
        speedup = measure.summary(
            [one["seconds"] / r["seconds"] for one, r in zip(runs[1], runs[p], strict=True)]
        )
        vs_serial = measure.summary(
            [s / r["seconds"] for s, r in zip(serial, runs[p], strict=True)]
        )
        plain_rate = measure.summary(plain[p])
        vs_plain = measure.summary([r["rate"] / q for r, q in zip(runs[p], plain[p], strict=True)])
        ideal = min(p, opts.cores)
        results.append(
            {
                "processes": p,
                "rate": rate,
                "seconds": secs,
                "speedup": speedup,
                "vs_serial": vs_serial,
                "plain_rate": plain_rate,
                "vs_plain": vs_plain,
                "ideal": ideal,
                "runs": runs[p],
            }
        )
        rows.append(
            [
                f"{p} process{'es' if p > 1 else ''}",
                common.spread(rate, 1),
                common.spread(secs, 2),
                common.ratio_text(speedup["median"])
                + f" ({speedup['min']:.2f}-{speedup['max']:.2f})",
                f"{ideal}x",
                common.ratio_text(vs_serial["median"]),
                f"{common.spread(plain_rate, 1)}: {vs_plain['median'] * 100:.0f}%",
            ]
        )
    text = common.table(
        [
            "run",
            "jobs/s median (min-max)",
            "seconds",
            "speedup vs 1 process",
            "ideal",
            "vs serial loop",
            "p plain processes jobs/s: engine's share",
        ],
        rows,
    )
    job_ms_measured = serial_s["median"] / n * 1000.0
    if not opts.quiet:
        print(text)
        print(f"\nmeasured: {job_ms_measured:.1f} ms per job in the serial loop (median)")
    payload = {
        "scenario": "cpu",
        "machine": info,
        "params": {
            "jobs": n,
            "job_ms": job_ms,
            "rounds": rounds,
            "limit": limit,
            "repeat": opts.repeat,
            "processes": procs,
        },
        "serial_seconds": serial_s,
        "job_ms_measured": job_ms_measured,
        "results": results,
        "table": text,
    }
    common.save(opts, payload, _plot)
    return 0


def _plot(opts: common.Options, payload: dict[str, Any]) -> None:
    plt = common.pyplot()
    results = payload["results"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ps = [r["processes"] for r in results]
    med, (lo, hi) = common.median_and_spread([r["speedup"] for r in results])
    ax.errorbar(ps, med, yerr=[lo, hi], marker="o", capsize=4, label="oban_pro (median, min-max)")
    ax.plot(ps, [r["ideal"] for r in results], "--", color="gray", label="ideal min(p, cores)")
    ax.set_xticks(ps)
    ax.set_xlabel("worker processes")
    ax.set_ylabel("speedup over 1 process")
    ax.set_title(
        f"CPU-bound {payload['params']['job_ms']:.0f} ms jobs "
        f"({payload['machine']['cores']} cores, {payload['machine']['date'][:10]})"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(common.plot_path(opts), dpi=110)
    plt.close(fig)
