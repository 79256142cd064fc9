"""Workers of the soak scenario (``bench/soak.py``); node processes import this module.

Every job's args carry its ``kind`` (what it does, and so which final state it must reach) and
the path of the execution log. Each execution appends a START line before doing anything and an
END line with its outcome just before it returns (or just before it crashes its own process),
with one ``O_APPEND`` write each, so lines of concurrent processes never mix and a line written
before a ``kill -9`` survives it::

    S <job id> <attempt> <kind> <plan> <node> <pid> <ppid> <unix time>
    E <job id> <attempt> <kind> <outcome> <node> <pid> <ppid> <unix time>

``plan`` is what this execution is about to do (ok, raise, snooze, cancel, record, crash,
timeout); ``outcome`` what it did (the same words; ``timeout`` never gets an END line unless the
engine failed to stop it, and then the outcome says ``timeout-missed``). ``node`` comes from
``$SOAK_NODE`` (set by the scenario for each node process; worker processes inherit it).

Kinds (see ``KINDS`` in :mod:`bench.soak` for the mix and the final state each implies):

- ``noop``; ``cpu`` (``ms`` of pure-Python CPU); ``record`` (a little CPU, returns ``Record``);
  ``sync_io`` and ``slow_io`` (``time.sleep``); ``async_io`` (``asyncio.sleep``, on the
  :class:`Async` worker);
- ``flaky`` raises on its first ``fails`` attempts, then completes; ``doomed`` always raises
  (``max_attempts`` 3: discarded); both use a 1 s backoff;
- ``crash`` kills its own process (``os._exit`` or ``os.abort``) on attempt 1, then completes;
  ``poison`` does so every time (discarded by the poison-job guard after ``max_crashes``);
- ``timeout`` (on :class:`Slow`, ``timeout`` = :data:`TIMEOUT`) sleeps far past its timeout on
  attempt 1, then completes;
- ``snooze`` returns ``Snooze(1)`` until ``meta.snoozed`` is set, then completes;
- ``cancel`` returns ``Cancel``; ``scheduled`` and ``unique`` are no-ops inserted with
  ``schedule_in`` / ``unique``.
"""

from __future__ import annotations

import asyncio
import os
import time

from oban_pro import Cancel, Record, Snooze, worker

#: Seconds a :class:`Slow` job may run before its child is killed.
TIMEOUT = 0.5
#: How long a ``timeout`` job sleeps on attempt 1 (far past :data:`TIMEOUT`).
TIMEOUT_SLEEP = 5.0

_fds: dict[str, tuple[int, int]] = {}  # log path -> (pid that opened it, fd)


def _fd(path: str) -> int:
    pid = os.getpid()
    got = _fds.get(path)
    if got is None or got[0] != pid:  # a forked copy must not share its parent's cached fd
        got = (pid, os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
        _fds[path] = got
    return got[1]


def log_line(path: str, tag: str, job, kind: str, word: str) -> None:
    node = os.environ.get("SOAK_NODE", "?")
    line = (
        f"{tag} {job.id} {job.attempt} {kind} {word} {node} {os.getpid()} {os.getppid()} "
        f"{time.time():.6f}\n"
    ).encode()
    os.write(_fd(path), line)


def burn_ms(ms: float) -> int:
    """Pure-Python CPU work for ``ms`` milliseconds of this thread's CPU time."""
    until = time.thread_time() + ms / 1000.0
    total = 0
    while time.thread_time() < until:
        for i in range(200):
            total += i * i % 7
    return total


def plan_of(job) -> str:
    """What this execution of ``job`` will do (decided from kind, attempt and meta only)."""
    kind = job.args["k"]
    if kind == "flaky":
        return "raise" if job.attempt <= int(job.args.get("fails", 1)) else "ok"
    if kind == "doomed":
        return "raise"
    if kind == "crash":
        return "crash" if job.attempt <= 1 else "ok"
    if kind == "poison":
        return "crash"
    if kind == "timeout":
        return "timeout" if job.attempt <= 1 else "ok"
    if kind == "snooze":
        return "ok" if job.meta.get("snoozed") else "snooze"
    if kind == "cancel":
        return "cancel"
    if kind == "record":
        return "record"
    return "ok"


class SoakError(Exception):
    """Raised on purpose by ``flaky`` and ``doomed`` jobs."""


def _before(job) -> tuple[str, str, str]:
    path, kind = job.args["log"], job.args["k"]
    plan = plan_of(job)
    log_line(path, "S", job, kind, plan)
    return path, kind, plan


def _finish(job, path: str, kind: str, plan: str):
    if plan == "raise":
        log_line(path, "E", job, kind, "raise")
        raise SoakError(f"soak: {kind} job {job.id} fails attempt {job.attempt} on purpose")
    if plan == "crash":
        log_line(path, "E", job, kind, "crash")
        if job.id % 2:
            os._exit(7)
        os.abort()
    if plan == "snooze":
        log_line(path, "E", job, kind, "snooze")
        return Snooze(1)
    if plan == "cancel":
        log_line(path, "E", job, kind, "cancel")
        return Cancel("soak: cancelled on purpose")
    if plan == "record":
        value = burn_ms(float(job.args.get("ms", 1)))
        log_line(path, "E", job, kind, "record")
        return Record({"job": job.id, "value": value})
    log_line(path, "E", job, kind, "ok")
    return None


@worker(queue="soak", name="bench.soak_workers.Sync", max_attempts=20)
class Sync:
    """noop, cpu, record, sync_io, flaky, doomed, crash, poison, snooze, cancel, scheduled,
    unique."""

    def process(self, job):
        path, kind, plan = _before(job)
        if plan == "ok":
            if kind == "cpu":
                burn_ms(float(job.args["ms"]))
            elif kind in ("sync_io", "slow_io"):
                time.sleep(float(job.args["ms"]) / 1000.0)
        return _finish(job, path, kind, plan)

    def backoff(self, job):
        return 1


@worker(queue="soak_io", name="bench.soak_workers.Async", max_attempts=20)
class Async:
    """async_io: ``asyncio.sleep`` on the child's event loop."""

    async def process(self, job):
        path, kind, plan = _before(job)
        await asyncio.sleep(float(job.args["ms"]) / 1000.0)
        return _finish(job, path, kind, plan)

    def backoff(self, job):
        return 1


@worker(queue="soak_risky", name="bench.soak_workers.Slow", max_attempts=20, timeout=TIMEOUT)
class Slow:
    """timeout: sleeps past its timeout on attempt 1 (the engine must kill it), then completes."""

    def process(self, job):
        path, kind, plan = _before(job)
        if plan == "timeout":
            time.sleep(TIMEOUT_SLEEP)
            log_line(path, "E", job, kind, "timeout-missed")
            return None
        return _finish(job, path, kind, plan)

    def backoff(self, job):
        return 1
