"""What this machine gives CPU-bound Python without any engine: the same :func:`measure.burn` jobs
run back to back by 1 plain process and by N plain processes, no database, no coordinator.

The CPU-bound rows compare N worker processes with a single event loop, so their ratio can be no
better than what N plain processes achieve over one on the same cores at the same moment. On a
shared virtual machine that is well below N and moves from minute to minute, so the rows measure
it in the same repetition as the engines and report it beside them.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

from .measure import burn


def _burn_jobs(rounds: int, jobs: int, go: Any, ends: Any) -> None:
    go.wait()  # every process imported and waiting: all start together
    for _ in range(jobs):
        burn(rounds)
    ends.put(time.time())


def rate(processes: int, rounds: int, jobs: int, timeout: float = 600.0) -> float:
    """Jobs/s of ``processes`` plain processes sharing ``jobs`` jobs of ``rounds`` rounds.

    Timed from the moment all processes are released together (they are started and imported
    first, so spawning is not counted) to the last one's end."""
    ctx = multiprocessing.get_context("spawn")
    go, ends = ctx.Barrier(processes + 1), ctx.Queue()
    share = [jobs // processes + (i < jobs % processes) for i in range(processes)]
    workers = [ctx.Process(target=_burn_jobs, args=(rounds, n, go, ends)) for n in share]
    for w in workers:
        w.start()
    try:
        go.wait(timeout=timeout)
        started = time.time()
        last = max(ends.get(timeout=timeout) for _ in workers)
    finally:
        for w in workers:
            w.join(timeout=timeout)
            if w.is_alive():
                w.kill()
    return jobs / max(last - started, 1e-9)


def ceiling(processes: int, rounds: int, jobs: int) -> dict[str, float]:
    """``{"one": jobs/s of 1 process, "many": of ``processes``, "ratio": many / one}``."""
    one = rate(1, rounds, jobs)
    many = rate(processes, rounds, jobs)
    return {"one": one, "many": many, "ratio": many / one}
