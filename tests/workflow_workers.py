"""Workers for the workflow tests (imported by child processes).

Each step appends "<job id> <start|stop> <monotonic ns> <pid>" to the file in args["log"]
(one O_APPEND write per line: lines from many processes never interleave), so a test can check
from the jobs' own log that no step started before the jobs it waits for had stopped.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from log_lines import append_line

from oban_pro import Cancel, Record, worker


def mark(job, event: str) -> None:
    path = job.args.get("log")
    if path:
        append_line(path, f"{job.id} {event} {time.monotonic_ns()} {os.getpid()}")


@worker(queue="default")
class Step:
    """Runs ``sleep`` seconds; records args["value"] when given; fails while
    attempt <= args["fail_times"]; holds until the file args["hold"] exists."""

    def process(self, job):
        mark(job, "start")
        try:
            hold = job.args.get("hold")
            while hold and not Path(hold).exists():
                if job.cancelled():
                    return Cancel("stopped")
                time.sleep(0.01)
            time.sleep(float(job.args.get("sleep", 0)))
            if job.attempt <= int(job.args.get("fail_times", 0)):
                raise RuntimeError(f"planned failure on attempt {job.attempt}")
            if job.args.get("cancel"):
                return Cancel("asked to cancel")
            if "value" in job.args:
                return Record(job.args["value"])
            return None
        finally:
            mark(job, "stop")

    def backoff(self, job):
        return 0  # retried at once: the stager (0.2 s in tests) makes it available again


@worker(queue="default")
class SumResults:
    """Sync: records the sum of the numbers its dependencies recorded (nested dicts too)."""

    def process(self, job):
        mark(job, "start")
        results = job.workflow.results_sync()
        mark(job, "stop")
        return Record({"sum": _total(results), "results": results})


@worker(queue="default")
class AsyncSumResults:
    async def process(self, job):
        mark(job, "start")
        results = await job.workflow.results()
        mark(job, "stop")
        return Record({"sum": _total(results), "results": results})


def _total(value) -> int:
    if isinstance(value, dict):
        return sum(_total(v) for v in value.values())
    return value if isinstance(value, int) else 0
