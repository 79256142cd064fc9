"""``oban-pro demo``: the main job on the embedded default.

Starts an embedded PostgreSQL (or uses ``--dsn``), migrates, enqueues CPU-heavy jobs, runs them
on every core with a live progress line, and ends with a summary: jobs/s, jobs per process,
failures. Exit code 0 when every job completed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter

from . import EXIT_FAILURE, EXIT_OK, add_database_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="run CPU-heavy demo jobs on all cores", description=__doc__
    )
    add_database_args(parser)
    parser.add_argument("--jobs", type=int, default=300, help="jobs to run (300)")
    parser.add_argument(
        "--rounds", type=int, default=20_000, help="CPU work per job in hash rounds (20000, ~50 ms)"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes (default: CPU count)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_demo(args))


async def _demo(args: argparse.Namespace) -> int:
    from ..database import resolve_dsn
    from ..demo import CpuJob
    from ..migrations import migrate_up
    from ..oban import Oban
    from ..term import decode_recorded

    prefix = args.prefix or os.environ.get("OBAN_PREFIX") or "public"
    dsn = resolve_dsn(args.dsn)
    migrate_up(dsn, prefix=prefix)
    oban = Oban(
        dsn=dsn,
        prefix=prefix,
        queues={"demo": max(args.processes * 2, 2)},
        processes=args.processes,
        imports=["oban_pro.demo"],
        name="oban-pro-demo",
        poll_interval=0.2,
    )
    await oban.start()
    try:
        started = time.monotonic()
        jobs = await oban.enqueue_many(
            [CpuJob.new({"rounds": args.rounds, "n": i}) for i in range(args.jobs)]  # type: ignore[attr-defined]
        )
        ids = [job.id for job in jobs if job.id is not None]
        done = await _progress(oban, ids, started)
        elapsed = time.monotonic() - started
        rows = await _final_rows(oban, ids)
    finally:
        await oban.stop()
    per_pid = Counter(
        decode_recorded(meta["return"])["pid"]
        for state, meta in rows
        if state == "completed" and meta and "return" in meta
    )
    failures = sum(1 for state, _ in rows if state != "completed")
    print(
        f"\nran {done} of {len(ids)} jobs in {elapsed:.2f}s: {done / elapsed:.1f} jobs/s "
        f"on {args.processes} processes"
    )
    for pid, n in sorted(per_pid.items()):
        print(f"  process {pid}: {n} jobs")
    print(f"  failures: {failures}")
    return EXIT_OK if failures == 0 and done == len(ids) else EXIT_FAILURE


async def _count_done(oban, ids: list[int]) -> int:  # type: ignore[no-untyped-def]
    return await (await oban._ensure_store()).count_finished(ids)


async def _progress(oban, ids: list[int], started: float) -> int:  # type: ignore[no-untyped-def]
    done = 0
    while done < len(ids):
        await asyncio.sleep(0.25)
        done = await _count_done(oban, ids)
        rate = done / max(time.monotonic() - started, 1e-6)
        bar = "#" * int(30 * done / len(ids))
        sys.stdout.write(f"\r[{bar:<30}] {done}/{len(ids)} jobs  {rate:7.1f} jobs/s")
        sys.stdout.flush()
    return done


async def _final_rows(oban, ids: list[int]) -> list[tuple[str, dict]]:  # type: ignore[no-untyped-def]
    return await (await oban._ensure_store()).job_outcomes(ids)
