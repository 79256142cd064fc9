"""Workers for the limits-across-nodes tests (imported by nodes as ``chaos.limit_workers``).

:class:`Hold` appends ``"start <job id> <pid> <unix time>"`` when it begins and ``"stop ..."``
when it ends (single ``O_APPEND`` writes, atomic for short lines), so a test can rebuild how
many of the queue's jobs ran at once from the jobs' own account, across nodes and children.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from log_lines import append_line

from oban_pro import worker


def _log(path: str, what: str, job_id: int) -> None:
    append_line(path, f"{what} {job_id} {os.getpid()} {time.time():.6f}")


@worker(queue="api")
class Hold:
    """Holds its slot for ``args["ms"]`` milliseconds (async, so a child runs many at once)."""

    async def process(self, job):
        _log(job.args["log"], "start", job.id)
        try:
            await asyncio.sleep(job.args.get("ms", 50) / 1000)
        finally:
            _log(job.args["log"], "stop", job.id)


def read_spans(path: str | Path) -> dict[int, list[tuple[str, float]]]:
    """Log lines by job id: [(event, time), ...] in file order."""
    out: dict[int, list[tuple[str, float]]] = {}
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        what, job_id, _pid, at = line.split()
        out.setdefault(int(job_id), []).append((what, float(at)))
    return out


def max_overlap(spans: dict[int, list[tuple[str, float]]]) -> int:
    """The most jobs that were between their start and their stop at one moment."""
    events = sorted(
        (at, 1 if what == "start" else -1) for lines in spans.values() for what, at in lines
    )
    running = peak = 0
    # At equal times a stop comes before a start (-1 sorts first): touching spans don't overlap.
    for _at, step in events:
        running += step
        peak = max(peak, running)
    return peak
