"""Workers used by the engine, reliability and chaos tests (imported by child processes)."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import time
from pathlib import Path

from log_lines import append_line

from oban_pro import Cancel, Record, Snooze, worker


def log_execution(job) -> None:
    """Append "<job id> <attempt> <pid>" to the file named in args["log"] (if any).

    Lines shorter than PIPE_BUF are written with one O_APPEND write, so concurrent writers
    from many processes never interleave.
    """
    path = job.args.get("log")
    if path:
        append_line(path, f"{job.id} {job.attempt} {os.getpid()}")


@worker(queue="default")
class Noop:
    def process(self, job):
        log_execution(job)


@worker(queue="default")
class AsyncNoop:
    async def process(self, job):
        await asyncio.sleep(0)
        log_execution(job)
        return {"ok": True}


@worker(queue="default")
class Sleep:
    def process(self, job):
        log_execution(job)
        time.sleep(float(job.args.get("seconds", 1)))


@worker(queue="default")
class WaitForFile:
    """Runs until the file named in args["release"] exists (lets tests hold a job running)."""

    def process(self, job):
        log_execution(job)
        started = job.args.get("started")
        if started:
            Path(started).touch()
        release = Path(job.args["release"])
        deadline = time.monotonic() + float(job.args.get("max_seconds", 60))
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.01)


@worker(queue="default", max_attempts=3)
class Fail:
    def process(self, job):
        log_execution(job)
        raise RuntimeError(f"boom on attempt {job.attempt}")


@worker(queue="default")
class FailWithBackoff:
    def process(self, job):
        raise ValueError("custom backoff")

    def backoff(self, job):
        return 1000


@worker(queue="default")
class SnoozeOnce:
    def process(self, job):
        if not job.meta.get("snoozed"):
            return Snooze(1, meta={"why": "not yet"})
        return None


@worker(queue="default")
class CancelSelf:
    def process(self, job):
        return Cancel("not needed any more")


@worker(queue="default")
class RecordIt:
    def process(self, job):
        return Record({"sum": sum(job.args["values"]), "label": "done"})


@worker(queue="default")
class EnvValue:
    """Records the value of the environment variable ``args["name"]`` in the child."""

    def process(self, job):
        return Record({"value": os.environ.get(job.args["name"])})


@worker(queue="default")
class Exit3:
    def process(self, job):
        log_execution(job)
        os._exit(3)


@worker(queue="default")
class Segfault:
    def process(self, job):
        log_execution(job)
        os.kill(os.getpid(), signal.SIGSEGV)
        ctypes.string_at(0)


@worker(queue="default", timeout=0.5)
class TooSlow:
    def process(self, job):
        log_execution(job)
        time.sleep(30)


@worker(queue="default")
class Hog:
    """Allocates args["mb"] MiB and holds it while sleeping."""

    def process(self, job):
        log_execution(job)
        blob = bytearray(int(job.args.get("mb", 400)) * 1024 * 1024)
        for i in range(0, len(blob), 4096):
            blob[i] = 1
        time.sleep(float(job.args.get("seconds", 10)))
        return len(blob)


@worker(queue="default")
class Spin:
    """Pure-Python CPU work for about args["seconds"] seconds of one core (by iteration count)."""

    def process(self, job):
        log_execution(job)
        n = int(job.args.get("iterations", 2_000_000))
        total = 0
        for i in range(n):
            total += i * i % 7
        return None


@worker(queue="default")
class Pid:
    def process(self, job):
        log_execution(job)
        return Record(os.getpid())


# -- many jobs at once (see tests/test_concurrency.py) ------------------------------------------
#
# These log "start <id> <pid>" / "stop <id> <pid>" lines through pool_workers.event: the order of
# the lines is the order of the events, so the tests count how many jobs ran at once from the
# jobs' own log, never from a clock.

from pool_workers import _holding, event  # noqa: E402


@worker(queue="io")
class HoldIo:
    """Sync, blocking: holds in short sleeps until the barrier/release (see pool_workers)."""

    def process(self, job):
        event(job, "start")
        deadline = time.monotonic() + float(job.args.get("max_seconds", 30))
        try:
            while _holding(job) and time.monotonic() < deadline:
                time.sleep(0.005)
        finally:
            event(job, "stop")


@worker(queue="io")
class AsyncHoldIo:
    async def process(self, job):
        event(job, "start")
        deadline = time.monotonic() + float(job.args.get("max_seconds", 30))
        try:
            while _holding(job) and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
        finally:
            event(job, "stop")


@worker(queue="io", isolated=True)
class IsolatedHoldIo(HoldIo):
    """HoldIo, isolated: never shares its child."""


@worker(queue="io")
class PoisonAmongOthers:
    """Segfaults its child once ``args["until"]`` jobs have started (when not alone)."""

    def process(self, job):
        event(job, "start")
        deadline = time.monotonic() + 20
        while _holding(job) and time.monotonic() < deadline:
            time.sleep(0.005)
        ctypes.string_at(0)


@worker(queue="io", timeout=0.5)
class StuckInCIo:
    """Past its 0.5 s timeout while blocked in one C call (``time.sleep``): no exception raised
    in its thread can stop it, so its child must be killed."""

    def process(self, job):
        event(job, "start")
        time.sleep(30)


def _wait_for_cancel_sync(job) -> float:
    """Hold until ``job.cancelled()`` (at most args["max_seconds"]); seconds it was held."""
    Path(job.args["started"]).touch()
    begun = time.monotonic()
    while not job.cancelled() and time.monotonic() - begun < float(job.args.get("max_seconds", 30)):
        time.sleep(0.01)
    return time.monotonic() - begun


@worker(queue="default")
class WaitForCancel:
    """Sync: checks ``job.cancelled()`` at safe points, as Oban.py documents, and returns
    ``Cancel`` once it sees it; writes args["noticed"] (with its pid) when it did."""

    def process(self, job):
        _wait_for_cancel_sync(job)
        if job.cancelled():
            Path(job.args["noticed"]).write_text(str(os.getpid()))
            return Cancel("noticed the cancel")


@worker(queue="default")
class AsyncWaitForCancel:
    """Async twin of :class:`WaitForCancel`."""

    async def process(self, job):
        Path(job.args["started"]).touch()
        begun = time.monotonic()
        while not job.cancelled() and time.monotonic() - begun < float(
            job.args.get("max_seconds", 30)
        ):
            await asyncio.sleep(0.01)
        if job.cancelled():
            Path(job.args["noticed"]).write_text(str(os.getpid()))
            return Cancel("noticed the cancel")
