"""Workers used by the benchmarks. Child processes import this module
(``imports=["bench.workers"]``), so it must stay importable with the repository root on
``sys.path`` (see :mod:`bench`).

- :class:`Noop` does nothing: the throughput scenario measures the engine, not job code.
  :class:`AsyncNoop` is its ``async def`` twin, the job ``bench peer`` runs on both sides.
- :class:`Cpu` burns CPU in pure Python for ``args["rounds"]`` rounds (calibrated to ~20 ms);
  it is ``isolated=True``, as a CPU-heavy worker should be.
- :class:`Stamp` reports the moment it started (``time.time()``) on a Unix datagram socket, so
  the latency scenario learns enqueue-to-start without polling the database.
- :class:`AsyncSleep` / :class:`SyncSleep` wait ``args["seconds"]`` (50 ms): I/O-bound jobs,
  async (``await asyncio.sleep``) and sync blocking (``time.sleep``, as a blocking client would).
- :class:`Long` appends ``start``/``end`` lines to a log file and sleeps: the rescue scenario
  counts executions per job from that file (it survives a ``kill -9`` of the node).

The job bodies live in :mod:`bench.measure`, which the Oban.py side of ``bench peer`` runs too.
"""

from __future__ import annotations

import asyncio
import os
import time

from oban_pro import worker

from .measure import burn, calibrate_rounds, log_line, send_stamp

__all__ = [
    "Noop", "AsyncNoop", "Cpu", "Stamp", "Long", "AsyncSleep", "SyncSleep", "burn",
    "calibrate_rounds",
]  # fmt: skip


@worker(queue="bench", name="bench.workers.Noop")
class Noop:
    def process(self, job):  # type: ignore[no-untyped-def]
        return None


@worker(queue="bench", name="bench.workers.AsyncNoop")
class AsyncNoop:
    async def process(self, job):  # type: ignore[no-untyped-def]
        return None


# CPU-heavy, so isolated (as the README advises): one job per process at a time. On a thread
# beside other CPU-bound jobs it would share its process's GIL with them and with the child's
# event loop, which then reports results late.
@worker(queue="bench_cpu", name="bench.workers.Cpu", isolated=True)
class Cpu:
    def process(self, job):  # type: ignore[no-untyped-def]
        burn(int(job.args.get("rounds", 1000)))
        return None


@worker(queue="bench_latency", name="bench.workers.Stamp")
class Stamp:
    def process(self, job):  # type: ignore[no-untyped-def]
        send_stamp(job.args["sock"], job.id, time.time())
        return None


@worker(queue="bench_long", name="bench.workers.Long", max_attempts=5)
class Long:
    def process(self, job):  # type: ignore[no-untyped-def]
        node = os.environ.get("BENCH_NODE", "?")  # set by bench.node; children inherit it
        log_line(job.args["log"], "start", job.id, node, os.getpid(), repr(time.time()))
        # A rescued run (attempt > 1) is short: the scenario only needs to see it start.
        seconds = job.args["seconds"] if job.attempt <= 1 else job.args.get("rerun_seconds", 0.2)
        time.sleep(float(seconds))
        log_line(job.args["log"], "end", job.id, node, os.getpid(), repr(time.time()))
        return None


@worker(queue="bench_io", name="bench.workers.AsyncSleep")
class AsyncSleep:
    async def process(self, job):  # type: ignore[no-untyped-def]
        await asyncio.sleep(float(job.args.get("seconds", 0.05)))
        return None


@worker(queue="bench_io", name="bench.workers.SyncSleep")
class SyncSleep:
    def process(self, job):  # type: ignore[no-untyped-def]
        time.sleep(float(job.args.get("seconds", 0.05)))
        return None
