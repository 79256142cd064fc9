"""Micro-benchmark of the worker pool alone (no database): ``python -m bench.pool_only``.

Prints, side by side in one run:
- child start time (launch to ready) for 2 children per start method;
- no-op jobs/s through 2 children with 1 and 100 jobs in flight (what a queue limit allows), and
  the parent's CPU time per job (the design budget is ~10 us: beyond it the parent, not
  Postgres, is the bottleneck).

The refill mimics the coordinator: results are collected as they arrive and the room under the
limit is refilled once per loop iteration with one ``submit_many`` call.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from oban_pro.pool import Done, Run, WorkerPool

NOOP = "bench.pool_only.NoopWorker"


class NoopWorker:
    def process(self, job: object) -> None:
        return None


async def _start_time(method: str) -> float:
    pool = WorkerPool(2, start_method=method, on_done=lambda *a: None, on_failed=lambda *a: None)
    started = time.perf_counter()
    await pool.start()
    elapsed = time.perf_counter() - started
    await pool.stop(5)
    return elapsed


async def _throughput(method: str, limit: int, jobs: int) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    finished = loop.create_future()
    state = {"sent": 0, "done": 0, "scheduled": False}
    pool: WorkerPool

    def refill() -> None:
        state["scheduled"] = False
        n = min(limit - (state["sent"] - state["done"]), jobs - state["sent"])
        if n > 0:
            first = state["sent"]
            pool.submit_many([Run(first + i + 1, NOOP, b"{}") for i in range(n)])
            state["sent"] += n

    def on_done(run: Run, done: Done) -> None:
        state["done"] += 1
        if state["done"] == jobs:
            finished.set_result(None)
        elif not state["scheduled"]:
            state["scheduled"] = True
            loop.call_soon(refill)

    pool = WorkerPool(
        2,
        start_method=method,
        threads=limit,
        imports=["bench.pool_only"],
        on_done=on_done,
        on_failed=lambda *a: None,
    )
    await pool.start()
    try:
        cpu = time.process_time()
        started = time.perf_counter()
        refill()
        await finished
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
    finally:
        await pool.stop(5)
    return jobs / elapsed, cpu / jobs * 1e6


async def main(jobs: int, repeat: int) -> None:
    print(f"start time, 2 children (median of {repeat}):")
    for method in ("fork", "forkserver", "spawn"):
        times = [await _start_time(method) for _ in range(repeat)]
        print(
            f"  {method:<10} {statistics.median(times) * 1000:8.1f} ms"
            f"   (min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f})"
        )
    print(f"no-op throughput, 2 children, {jobs} jobs (median of {repeat}):")
    for limit in (1, 100):
        rates, cpus = [], []
        for _ in range(repeat):
            rate, cpu = await _throughput("forkserver", limit, jobs)
            rates.append(rate)
            cpus.append(cpu)
        print(
            f"  limit {limit:>3}: {statistics.median(rates):9.0f} jobs/s"
            f"   (min {min(rates):.0f}, max {max(rates):.0f});"
            f" parent CPU {statistics.median(cpus):.1f} us/job"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    asyncio.run(main(options.jobs, options.repeat))
