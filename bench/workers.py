"""Workers used by the benchmarks. Child processes import this module (``imports=["bench.workers"]``),
so it must stay importable with the repository root on ``sys.path`` (see :mod:`bench`).

- :class:`Noop` does nothing: the throughput scenario measures the engine, not job code.
- :class:`Cpu` burns CPU in pure Python for ``args["rounds"]`` rounds (calibrated to ~20 ms).
- :class:`Stamp` reports the moment it started (``time.time()``) on a Unix datagram socket, so
  the latency scenario learns enqueue-to-start without polling the database.
- :class:`Long` appends ``start``/``end`` lines to a log file and sleeps: the rescue scenario
  counts executions per job from that file (it survives a ``kill -9`` of the node).
"""

from __future__ import annotations

import os
import socket
import time

from oban_pro import worker
from oban_pro.demo import burn

__all__ = ["Noop", "Cpu", "Stamp", "Long", "burn", "calibrate_rounds"]


@worker(queue="bench", name="bench.workers.Noop")
class Noop:
    def process(self, job):  # type: ignore[no-untyped-def]
        return None


@worker(queue="bench_cpu", name="bench.workers.Cpu")
class Cpu:
    def process(self, job):  # type: ignore[no-untyped-def]
        burn(int(job.args.get("rounds", 1000)))
        return None


_socket: socket.socket | None = None


def send_stamp(path: str, job_id: int, started: float) -> None:
    global _socket
    if _socket is None:
        _socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    _socket.sendto(f"{job_id} {started!r} {os.getpid()}".encode(), path)


@worker(queue="bench_latency", name="bench.workers.Stamp")
class Stamp:
    def process(self, job):  # type: ignore[no-untyped-def]
        send_stamp(job.args["sock"], job.id, time.time())
        return None


def log_line(path: str, *fields: object) -> None:
    line = (" ".join(str(f) for f in fields) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one small O_APPEND write: lines never interleave
    finally:
        os.close(fd)


@worker(queue="bench_long", name="bench.workers.Long", max_attempts=5)
class Long:
    def process(self, job):  # type: ignore[no-untyped-def]
        node = os.environ.get("BENCH_NODE", "?")  # set by the node runner; children inherit it
        log_line(job.args["log"], "start", job.id, node, os.getpid(), repr(time.time()))
        time.sleep(float(job.args["seconds"]))
        log_line(job.args["log"], "end", job.id, node, os.getpid(), repr(time.time()))
        return None


def calibrate_rounds(target_seconds: float = 0.020, probe: int = 2000) -> int:
    """Rounds of :func:`burn` that take ``target_seconds`` on this machine (median of 5 probes)."""
    burn(probe)  # warm up
    times = []
    for _ in range(5):
        started = time.perf_counter()
        burn(probe)
        times.append(time.perf_counter() - started)
    times.sort()
    per_round = times[2] / probe
    return max(1, round(target_seconds / per_round))
