"""Metrics overhead: no-op throughput with metrics on vs off, A B A B in one run (limit 100,
2 processes, defaults, 20,000 jobs per run). Usage: python bench/metrics_overhead.py [DSN]
(default: the embedded server in ./.oban-pro). Prints both series and the on/off ratio."""

import asyncio
import statistics
import sys
import time

import psycopg

from oban_pro import Oban
from oban_pro.database import resolve_dsn
from oban_pro.demo import NoopJob
from oban_pro.migrations import migrate_up


async def run(dsn, metrics: bool, n: int, tag: str) -> float:
    prefix = "mab"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(f'DROP SCHEMA IF EXISTS "{prefix}" CASCADE')
    migrate_up(dsn, prefix=prefix)
    extra = {"metrics_port": 0} if metrics else {}
    oban = Oban(
        dsn=dsn,
        prefix=prefix,
        queues={"demo": 100},
        processes=2,
        # every setting at its default: each child runs many jobs at once
        imports=["oban_pro.demo"],
        name=f"m{tag}",
        poll_interval=0.05,
        **extra,
    )
    await oban.enqueue_many([NoopJob.new({}) for _ in range(n)])
    await oban.start()
    t = time.monotonic()
    while True:
        async with oban._pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT count(*) FROM \"{prefix}\".oban_jobs WHERE state='completed'"
            )
            if (await cur.fetchone())[0] == n:
                break
        await asyncio.sleep(0.02)
    el = time.monotonic() - t
    await oban.stop()
    return n / el


async def main():
    dsn = resolve_dsn(sys.argv[1] if len(sys.argv) > 1 else None)
    on, off = [], []
    for r in range(3):
        off.append(await run(dsn, False, 20000, f"off{r}"))
        on.append(await run(dsn, True, 20000, f"on{r}"))
    ratios = [a / b for a, b in zip(on, off, strict=True)]
    print("off", [round(x) for x in off], "on", [round(x) for x in on])
    median, low, high = statistics.median(ratios), min(ratios), max(ratios)
    print(f"metrics on/off: median {median:.3f} (min {low:.3f}, max {high:.3f})")


if __name__ == "__main__":
    asyncio.run(main())
