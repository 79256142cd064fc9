"""Workers for tests/test_pool.py, imported by the pool's child processes (tests/ is on sys.path).

Jobs that must be caught mid-flight write ``args["marker"]`` (a file path) once they started,
so a test can wait for that event instead of sleeping.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from log_lines import append_line

from oban_pro.job import Cancel, Job, Record, Snooze
from oban_pro.worker import worker


def _started(job: Job) -> None:
    marker = job.args.get("marker")
    if marker:
        Path(marker).write_text(str(os.getpid()))


@worker()
class Noop:
    def process(self, job: Job) -> None:
        return None


@worker()
class Describe:
    """Records what the child saw of the job (type checks included)."""

    def process(self, job: Job) -> Record:
        return Record(
            {
                "pid": os.getpid(),
                "id": job.id,
                "args": job.args,
                "meta": job.meta,
                "tags": job.tags,
                "queue": job.queue,
                "attempt": job.attempt,
                "max_attempts": job.max_attempts,
                "priority": job.priority,
                "errors": len(job.errors),
                "attempted_at_tz": str(job.attempted_at.tzinfo) if job.attempted_at else None,
            }
        )


@worker()
class AsyncSleep:
    async def process(self, job: Job) -> Snooze | None:
        _started(job)
        await asyncio.sleep(job.args.get("seconds", 0))
        # The same persistent loop serves every async job of this child.
        loop_id = id(asyncio.get_running_loop())
        return (
            Snooze(1, meta={"loop": loop_id, "pid": os.getpid()}) if job.args.get("loop") else None
        )


@worker()
class Sleep:
    def process(self, job: Job) -> None:
        _started(job)
        time.sleep(job.args.get("seconds", 0))


@worker()
class Boom:
    def process(self, job: Job) -> None:
        raise ValueError(f"boom {job.args.get('n')}")


@worker()
class BoomCustomBackoff:
    def process(self, job: Job) -> None:
        raise RuntimeError("custom")

    def backoff(self, job: Job) -> int:
        return 7


@worker()
class BoomBrokenBackoff:
    def process(self, job: Job) -> None:
        raise RuntimeError("first")

    def backoff(self, job: Job) -> int:
        raise KeyError("backoff is broken too")


@worker()
class Snoozer:
    def process(self, job: Job) -> Snooze:
        return Snooze(30, meta={"why": "later"})


@worker()
class Canceller:
    def process(self, job: Job) -> Cancel:
        return Cancel("not needed")


@worker()
class Recorder:
    def process(self, job: Job) -> Record:
        return Record({"ok": True, "n": job.args.get("n")})


@worker()
class SysExit:
    def process(self, job: Job) -> None:
        raise SystemExit(4)


@worker()
class Exit:
    def process(self, job: Job) -> None:
        _started(job)
        os._exit(job.args.get("code", 3))


@worker()
class Segfault:
    def process(self, job: Job) -> None:
        _started(job)
        ctypes.string_at(0)


@worker()
class SelfSignal:
    def process(self, job: Job) -> None:
        # To this thread: a signal to the process may be taken by another thread, and the
        # job would return (and be reported) before the process dies.
        sig = getattr(signal, job.args.get("signal", "SIGSEGV"))
        signal.pthread_kill(threading.get_ident(), sig)


@worker()
class Hog:
    """Allocates (and touches) ``mb`` MiB, then sleeps holding it."""

    def process(self, job: Job) -> None:
        block = bytearray(job.args["mb"] * 1024 * 1024)
        for i in range(0, len(block), 4096):
            block[i] = 1
        _started(job)
        time.sleep(job.args.get("seconds", 30))
        del block


@worker()
class Grow:
    """Allocates ``mb`` MiB, keeps it in a module global (a leak) and returns at once."""

    leak: list[bytearray] = []

    def process(self, job: Job) -> None:
        block = bytearray(job.args["mb"] * 1024 * 1024)
        for i in range(0, len(block), 4096):
            block[i] = 1
        Grow.leak.append(block)


@worker()
class Cpu:
    """Pure-Python CPU work: ``n`` loop iterations."""

    def process(self, job: Job) -> Record:
        started = time.perf_counter()
        total = 0
        for i in range(job.args["n"]):
            total += i * i % 7
        return Record({"total": total, "seconds": time.perf_counter() - started})


@worker()
class EchoBig:
    """Sends a large args value straight back in the Snooze meta (a full round trip)."""

    def process(self, job: Job) -> Snooze:
        blob: str = job.args["blob"]
        return Snooze(1, meta={"blob": blob, "len": len(blob)})


@worker()
class Pid:
    def process(self, job: Job) -> Record:
        return Record(os.getpid())


def not_a_worker() -> Any:
    return None


# -- many jobs at once ------------------------------------------------------------------------
#
# ``args["log"]`` is a file every job appends "start <id> <pid>" and "stop <id> <pid>" lines to
# (one O_APPEND write each, so lines from many threads and processes never interleave, and the
# file's order is the order of the events). ``args["until"]`` makes a job hold until that many
# jobs have started (a barrier: the log proves how many ran at once without reading a clock) or
# until the file ``args["release"]`` exists, at most ``args["max_seconds"]``.


def event(job: Job, what: str) -> None:
    path = job.args.get("log")
    if path:
        append_line(path, f"{what} {job.id} {os.getpid()}")


def read_events(path: Path) -> list[tuple[str, int, int]]:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    return [(w, int(j), int(p)) for w, j, p in (line.split() for line in text.splitlines())]


def most_at_once(events: list[tuple[str, int, int]]) -> int:
    running, most = 0, 0
    for what, _job, _pid in events:
        running += 1 if what == "start" else -1
        most = max(most, running)
    return most


def _holding(job: Job) -> bool:
    release = job.args.get("release")
    if release and Path(release).exists():
        return False
    until = job.args.get("until")
    if until and sum(1 for e in read_events(job.args["log"]) if e[0] == "start") >= until:
        return False
    return bool(release or until)


@worker()
class Hold:
    """Sync: logs its start, holds (in short Python-level sleeps: interruptible), logs its stop."""

    def process(self, job: Job) -> None:
        event(job, "start")
        deadline = time.monotonic() + job.args.get("max_seconds", 30)
        try:
            while _holding(job) and time.monotonic() < deadline:
                time.sleep(0.005)
        finally:
            event(job, "stop")


@worker()
class AsyncHold:
    """Async twin of :class:`Hold`."""

    async def process(self, job: Job) -> None:
        event(job, "start")
        deadline = time.monotonic() + job.args.get("max_seconds", 30)
        try:
            while _holding(job) and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
        finally:
            event(job, "stop")


@worker(isolated=True)
class IsolatedHold(Hold):
    """:class:`Hold` marked ``isolated=True``."""


@worker()
class StuckInC:
    """Logs its start, then blocks in one C call (``time.sleep``) that no exception interrupts."""

    def process(self, job: Job) -> None:
        event(job, "start")
        time.sleep(job.args.get("seconds", 30))


@worker()
class SegfaultAfterOthers:
    """Waits until ``args["until"]`` jobs started (so it dies among them), then segfaults."""

    def process(self, job: Job) -> None:
        event(job, "start")
        deadline = time.monotonic() + 20
        while _holding(job) and time.monotonic() < deadline:
            time.sleep(0.005)
        ctypes.string_at(0)


# -- results in flight when a sibling takes the process down ---------------------------------


def _wait_for_file(path: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.005)


@worker()
class BlockLoop:
    """Async, but blocks the child's event loop (``time.sleep``) for ``args["seconds"]``."""

    async def process(self, job: Job) -> None:
        _started(job)
        time.sleep(job.args.get("seconds", 3))


@worker()
class MarkOnReturn:
    """Sync: writes ``args["done"]`` as the last thing before it returns."""

    def process(self, job: Job) -> None:
        Path(job.args["done"]).write_text(str(os.getpid()))


@worker()
class ExitAfterFile:
    """Sync: waits until the file ``args["after"]`` exists, a moment more, then exits(7)."""

    def process(self, job: Job) -> None:
        _wait_for_file(job.args["after"])
        time.sleep(job.args.get("then", 0.2))
        os._exit(7)
