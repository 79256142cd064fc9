"""Workers for the chaos suite and the hostile-input tests (imported by nodes and children).

Imported everywhere as ``chaos.chaos_workers`` (``tests/`` is on ``sys.path`` and
``PYTHONPATH``). Nothing here declares cron entries: importing this module in the pytest
process must not change what other tests' nodes insert (cron lives in ``chaos.cron_workers``,
which only node subprocesses import).

Every worker that takes ``args["log"]`` appends one line per execution,
``"<job id> <attempt> <pid> <unix time>"``, with a single ``O_APPEND`` write (atomic for lines
shorter than PIPE_BUF), so the tests can count executions across processes and nodes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from log_lines import append_line

from oban_pro import Record, worker


def log_run(job, path=None) -> None:
    path = path or job.args.get("log")
    if path:
        append_line(path, f"{job.id} {job.attempt} {os.getpid()} {time.time():.6f}")


def read_runs(path) -> list[tuple[int, int, int, float]]:
    """The lines written by :func:`log_run`: (job id, attempt, pid, unix time)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        if line.strip():
            job_id, attempt, pid, at = line.split()
            out.append((int(job_id), int(attempt), int(pid), float(at)))
    return out


@worker(queue="default")
class Quick:
    """A no-op that logs its execution."""

    def process(self, job):
        log_run(job)


@worker(queue="default")
class Nap:
    """Sleeps ``args["seconds"]`` (an I/O-bound long job)."""

    def process(self, job):
        log_run(job)
        time.sleep(float(job.args.get("seconds", 1.0)))


@worker(queue="default")
class Burn:
    """Spins a CPU for ``args["seconds"]`` of wall time (a CPU-bound long job)."""

    def process(self, job):
        log_run(job)
        deadline = time.monotonic() + float(job.args.get("seconds", 1.0))
        total = 0
        while time.monotonic() < deadline:
            for i in range(10_000):
                total += i * i % 7
        return None


@worker(queue="default")
class Hang:
    """Runs until the file ``args["release"]`` exists (at most ``args["max_seconds"]``). With
    ``args["ends"]``, each execution that ends, normally or by an exception raised into it (a
    cooperative stop), appends its line there too."""

    def process(self, job):
        log_run(job)
        release = Path(job.args["release"])
        deadline = time.monotonic() + float(job.args.get("max_seconds", 60))
        try:
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            if job.args.get("ends"):
                log_run(job, job.args["ends"])


# -- hostile jobs ---------------------------------------------------------------------------


@worker(queue="default")
class StdoutFlood:
    """Writes ``args["mb"]`` MiB to stdout, a third each through ``sys.stdout``, raw writes to
    file descriptor 1 (what a C extension would do) and ``/dev/stdout`` opened anew (what a
    shell command in a subprocess would do)."""

    def process(self, job):
        log_run(job)
        mib = int(job.args.get("mb", 200))
        chunk = "x" * (1024 * 1024 - 1) + "\n"
        third = mib // 3
        for _ in range(third):
            sys.stdout.write(chunk)
        sys.stdout.flush()
        raw = chunk.encode()
        for _ in range(third):
            view = memoryview(raw)
            while view:
                view = view[os.write(1, view) :]
        with open("/dev/stdout", "wb", buffering=0) as out:
            for _ in range(mib - 2 * third):
                out.write(raw)
        return Record(mib)


@worker(queue="default")
class SpawnAndReturn:
    """Starts a subprocess that outlives the job (``sleep``), records its pid, returns."""

    def process(self, job):
        log_run(job)
        proc = subprocess.Popen(["sleep", str(job.args.get("seconds", 30))])
        Path(job.args["pidfile"]).write_text(str(proc.pid))
        return Record(proc.pid)


@worker(queue="default")
class ForkAndReturn:
    """``os.fork()``s a grandchild that lingers (holding every descriptor the child has),
    then returns without waiting for it. The grandchild leaves with ``os._exit``."""

    def process(self, job):
        log_run(job)
        pid = os.fork()
        if pid == 0:  # grandchild
            try:
                Path(job.args["pidfile"]).write_text(str(os.getpid()))
                time.sleep(float(job.args.get("seconds", 5)))
            finally:
                os._exit(0)
        return Record(pid)


@worker(queue="default")
class ForkAndExit:
    """Forks a lingering grandchild, then the worker process itself exits (``os._exit(0)``)
    in the middle of the job while the grandchild still holds its pipes."""

    def process(self, job):
        log_run(job)
        pid = os.fork()
        if pid == 0:
            try:
                time.sleep(float(job.args.get("seconds", 20)))
            finally:
                os._exit(0)
        Path(job.args["pidfile"]).write_text(str(pid))
        os._exit(0)


@worker(queue="default")
class ForkBothReturn:
    """The footgun: ``os.fork()`` in job code with both processes returning from
    ``process()``. The copy is not the worker process the coordinator knows; it must never
    report a result or take further jobs."""

    def process(self, job):
        log_run(job)
        pid = os.fork()
        if pid == 0:
            Path(job.args["pidfile"]).write_text(str(os.getpid()))
        return None


@worker(queue="default")
class ArgsSize:
    """Returns the length of ``args["blob"]`` (proves the child saw all of a huge args)."""

    def process(self, job):
        log_run(job)
        return Record(len(job.args.get("blob", "")))
