"""The worker-process pool, with real child processes (no database needed).

Tests wait for events (a job's outcome, a child becoming ready, a marker file a job writes
when it starts) with deadlines; none sleeps for synchronisation.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import multiprocess
import pytest

from oban_pro.pool import (
    Done,
    PoolClosedError,
    Run,
    WorkerPool,
)
from oban_pro.pool.framing import FrameProtocol, FrameReader, encode_frame, write_frame
from oban_pro.pool.processes import process_dying
from oban_pro.term import decode_recorded

pytestmark = pytest.mark.timeout(60)

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:  # children inherit sys.path (spawn/forkserver pass it on)
    sys.path.insert(0, str(TESTS_DIR))

W = "pool_workers."


def async_test(fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(fn(*args, **kwargs))

    return wrapper


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer exists (a zombie still does: it has not been reaped)."""
    return not os.path.exists(f"/proc/{pid}")


class Harness:
    """A pool whose outcomes resolve one future per job id."""

    def __init__(self, processes: int = 2, **options: Any) -> None:
        options.setdefault("start_method", "forkserver")
        options.setdefault("imports", ["pool_workers"])
        options.setdefault("kill_grace", 0.5)
        options.setdefault("cancel_grace", 0.2)
        self.loop = asyncio.get_running_loop()
        self.outcomes: dict[int, asyncio.Future[tuple[Any, ...]]] = {}
        self.capacity = asyncio.Event()
        self.done_order: list[int] = []
        self.seen_pids: set[int] = set()
        self.pool = WorkerPool(
            processes,
            on_done=self._on_done,
            on_failed=self._on_failed,
            on_released=self._on_released,
            on_capacity=self.capacity.set,
            **options,
        )
        self._next_id = 1

    async def __aenter__(self) -> Harness:
        await self.pool.start()
        self.seen_pids.update(self.pool.pids())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.check_ledger()
        self.seen_pids.update(self.pool.pids())
        self.unfinished = await self.pool.stop(5)
        for pid in self.seen_pids:
            assert process_gone(pid), f"child {pid} was left behind"

    def _future(self, job_id: int) -> asyncio.Future[tuple[Any, ...]]:
        fut = self.outcomes.get(job_id)
        if fut is None:
            fut = self.outcomes[job_id] = self.loop.create_future()
        return fut

    def check_ledger(self) -> None:
        """The ledger and the children's job sets say the same thing."""
        pool = self.pool
        placed = {j.job_id: j.child for j in pool.ledger if j.child is not None}
        in_children = {
            job_id: child for child in pool._supervisor.children for job_id in child.jobs
        }
        assert placed == in_children
        assert len(pool.ledger) == len(placed) + pool.waiting

    def _on_done(self, run: Run, done: Done) -> None:
        self.done_order.append(done.job_id)
        self._future(done.job_id).set_result(("done", done))

    def _on_failed(self, run: Run, reason: str, text: str) -> None:
        self._future(run.job_id).set_result(("failed", reason, text))

    def _on_released(self, run: Run, text: str, isolate: bool) -> None:
        self._future(run.job_id).set_result(("released", text, isolate))

    def run(self, worker: str, args: dict[str, Any] | None = None, **fields: Any) -> Run:
        job_id = fields.pop("job_id", None) or self._next_id
        self._next_id = max(self._next_id, job_id) + 1
        now = time.time()
        fields.setdefault("attempted_at", now)
        fields.setdefault("inserted_at", now - 1)
        fields.setdefault("scheduled_at", now - 1)
        return Run(job_id=job_id, worker=W + worker, args=json.dumps(args or {}).encode(), **fields)

    def submit(
        self, worker: str, args: dict[str, Any] | None = None, isolated: bool = False, **fields: Any
    ) -> int:
        run = self.run(worker, args, **fields)
        self._future(run.job_id)
        self.pool.submit(run, isolated=isolated)
        self.seen_pids.update(self.pool.pids())
        return run.job_id

    async def outcome(self, job_id: int, timeout: float = 30) -> tuple[Any, ...]:
        result = await asyncio.wait_for(asyncio.shield(self._future(job_id)), timeout)
        self.check_ledger()  # the record of what runs where stays exact
        return result

    async def done(self, job_id: int, timeout: float = 30) -> Any:  # a Done, loosely typed
        result = await self.outcome(job_id, timeout)
        assert result[0] == "done", result
        return result[1]

    async def failed(self, job_id: int, timeout: float = 30) -> tuple[str, str]:
        result = await self.outcome(job_id, timeout)
        assert result[0] == "failed", result
        return result[1], result[2]

    async def released(self, job_id: int, timeout: float = 30) -> tuple[str, bool]:
        result = await self.outcome(job_id, timeout)
        assert result[0] == "released", result
        return result[1], result[2]

    async def full_strength(self, timeout: float = 30) -> None:
        """Wait until every child is ready again (replacements report through on_capacity)."""
        deadline = time.monotonic() + timeout
        while self.pool.size < self.pool.processes or self.pool.idle_count == 0:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"pool not back to {self.pool.processes} children"
            self.capacity.clear()
            try:
                await asyncio.wait_for(self.capacity.wait(), min(remaining, 0.5))
            except TimeoutError:
                pass  # re-check: a child may have become ready before we cleared the event
        self.seen_pids.update(self.pool.pids())


async def wait_for_file(path: Path, timeout: float = 20) -> str:
    """A job writes this marker once it started; poll for it with a deadline."""
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"job never started (no {path})"
        await asyncio.sleep(0.01)
    return path.read_text()


# =========================================================================== framing


def test_frame_protocol_handles_partial_and_coalesced_reads() -> None:
    frames: list[bytes] = []
    eof: list[bool] = []
    proto = FrameProtocol(frames.append, lambda: eof.append(True))
    payloads = [b"a", b"", b"hello" * 10, bytes(range(256)) * 40]
    stream = b"".join(encode_frame(p) for p in payloads)
    for i in range(0, len(stream), 3):  # three bytes at a time
        proto.data_received(stream[i : i + 3])
    proto.data_received(stream)  # all at once
    proto.data_received(stream[:7])  # a split header and body carried into the next read
    proto.data_received(stream[7:])
    proto.connection_lost(None)
    assert frames == payloads * 3
    assert eof == [True]
    assert proto.buffered == 0


def test_frame_protocol_keeps_order_when_a_callback_feeds_it_again() -> None:
    # The pool drains a child's pipe from inside callbacks (before a kill verdict). What such a
    # drain reads continues the stream after the bytes being parsed, so it must queue behind
    # them, even when they end in the middle of a frame.
    stream = b"".join(encode_frame(p) for p in (b"first", b"second", b"third", b"fourth"))
    cut = len(encode_frame(b"first") + encode_frame(b"second")) + 6  # inside "third"
    frames: list[bytes] = []

    def on_frame(payload: bytes) -> None:
        frames.append(payload)
        if payload == b"first":
            proto.data_received(stream[cut : cut + 2])
            proto.data_received(stream[cut + 2 :])

    proto = FrameProtocol(on_frame)
    proto.data_received(stream[:cut])
    assert frames == [b"first", b"second", b"third", b"fourth"]
    assert proto.buffered == 0


def test_large_frame_over_a_real_pipe() -> None:
    payload = os.urandom(12 * 1024 * 1024)
    r, w = os.pipe()

    def write_both() -> None:
        write_frame(w, payload)
        write_frame(w, b"x")

    writer = threading.Thread(target=write_both)
    writer.start()
    reader = FrameReader(r)
    try:
        assert reader.read_frame() == payload
        assert reader.read_frame() == b"x"
    finally:
        writer.join()
        os.close(w)
    assert reader.read_frame() is None  # EOF
    os.close(r)

    chunks: list[bytes] = []
    proto = FrameProtocol(chunks.append)
    stream = encode_frame(payload)
    for i in range(0, len(stream), 65536):
        proto.data_received(stream[i : i + 65536])
    assert chunks == [payload]


# =========================================================================== outcomes


@async_test
async def test_sync_and_async_jobs_complete() -> None:
    async with Harness() as h:
        done = await h.done(h.submit("Noop"))
        assert done.kind == "completed" and done.error is None
        assert done.duration >= 0 and done.rss > 1024 * 1024

        first = await h.done(h.submit("AsyncSleep", {"seconds": 0.01, "loop": True}))
        second = await h.done(h.submit("AsyncSleep", {"seconds": 0.01, "loop": True}))
        assert first.kind == second.kind == "snooze"
        if first.meta["pid"] == second.meta["pid"]:  # one persistent loop per child
            assert first.meta["loop"] == second.meta["loop"]

        # Several at once, batched into frames, on both children.
        runs = [h.run("Noop") for _ in range(2)]
        for run in runs:
            h._future(run.job_id)
        h.pool.submit_many(runs)
        assert h.pool.busy_count == 2  # least loaded: one job per child
        for run in runs:
            assert (await h.done(run.job_id)).kind == "completed"
        assert h.pool.stats.jobs_done == 5


@async_test
async def test_the_child_sees_the_job_as_the_database_has_it() -> None:
    async with Harness(processes=1) as h:
        errors = json.dumps([{"attempt": 1, "at": "2026-01-01T00:00:00Z", "error": "x"}])
        job_id = h.submit(
            "Describe",
            {"name": "ü", "n": [1, 2]},
            meta=json.dumps({"m": 1}),
            tags=["a", "b"],
            queue="mailers",
            attempt=2,
            max_attempts=5,
            priority=3,
            errors=errors,
        )
        seen = decode_recorded((await h.done(job_id)).recorded)
        assert seen["id"] == job_id
        assert seen["args"] == {"name": "ü", "n": [1, 2]}
        assert seen["meta"] == {"m": 1}
        assert seen["tags"] == ["a", "b"]
        assert (seen["queue"], seen["attempt"], seen["max_attempts"], seen["priority"]) == (
            "mailers",
            2,
            5,
            3,
        )
        assert seen["errors"] == 1
        assert seen["attempted_at_tz"] == "UTC"


@async_test
async def test_a_raising_job_reports_its_traceback_and_backoff() -> None:
    async with Harness(processes=1) as h:
        pid = h.pool.pids()[0]
        done = await h.done(h.submit("Boom", {"n": 7}, attempt=1, max_attempts=20))
        assert done.kind == "error"
        assert "Traceback (most recent call last)" in done.error
        assert "pool_workers.py" in done.error and "ValueError: boom 7" in done.error
        assert 17 <= done.delay <= 17 * 1.1 + 1  # default: 15 + 2**attempt, plus jitter

        done = await h.done(h.submit("BoomCustomBackoff"))
        assert done.kind == "error" and done.delay == 7

        done = await h.done(h.submit("BoomBrokenBackoff", attempt=3))
        assert done.kind == "error" and "RuntimeError: first" in done.error
        assert "backoff() raised" in done.error and "KeyError" in done.error
        assert 23 <= done.delay <= 23 * 1.1 + 1

        done = await h.done(h.submit("SysExit"))  # sys.exit() in a job fails the job only
        assert done.kind == "error" and "SystemExit: 4" in done.error
        assert h.pool.pids() == [pid]


@async_test
async def test_snooze_cancel_and_record_are_classified() -> None:
    async with Harness() as h:
        snooze = await h.done(h.submit("Snoozer"))
        assert (snooze.kind, snooze.delay, snooze.meta) == ("snooze", 30, {"why": "later"})
        cancel = await h.done(h.submit("Canceller"))
        assert (cancel.kind, cancel.reason) == ("cancel", "not needed")
        record = await h.done(h.submit("Recorder", {"n": 5}))
        assert record.kind == "record"
        assert decode_recorded(record.recorded) == {"ok": True, "n": 5}


@async_test
async def test_unknown_workers_and_broken_modules_fail_only_their_jobs(tmp_path: Path) -> None:
    (tmp_path / "pool_broken_mod.py").write_text("raise RuntimeError('broken at import')\n")
    sys.path.insert(0, str(tmp_path))
    try:
        # fork: the children see the sys.path entry added just now.
        imports = ["pool_workers", "pool_broken_mod", "pool_no_such_module"]
        async with Harness(imports=imports, start_method="fork") as h:
            pids = h.pool.pids()
            done = await h.done(h.submit("NoSuchWorker"))
            assert done.kind == "error"
            assert "unknown worker 'pool_workers.NoSuchWorker'" in done.error

            h_run = Run(job_id=900, worker="pool_broken_mod.Job", args=b"{}")
            h._future(900)
            h.pool.submit(h_run)
            done = await h.done(900)
            assert done.kind == "error"
            assert "'pool_broken_mod' failed to import" in done.error
            assert "RuntimeError: broken at import" in done.error

            h._future(901)
            h.pool.submit(Run(job_id=901, worker="pool_no_such_module.Job", args=b"{}"))
            done = await h.done(901)
            assert "'pool_no_such_module' failed to import" in done.error
            assert "ModuleNotFoundError" in done.error
            assert done.delay >= 15

            h._future(902)
            h.pool.submit(Run(job_id=902, worker=W + "Noop", args=b"[1, 2]"))
            done = await h.done(902)  # args that are not a JSON object
            assert done.kind == "error" and "args must be a JSON object" in done.error

            assert (await h.done(h.submit("Noop"))).kind == "completed"
            assert h.pool.pids() == pids
            assert sum(h.pool.stats.restarts.values()) == 0
    finally:
        sys.path.remove(str(tmp_path))


# =========================================================================== child failures


@pytest.mark.reliability
@async_test
async def test_kill_9_fails_only_that_job_and_the_pool_recovers(tmp_path: Path) -> None:
    async with Harness() as h:
        victim = h.submit("Sleep", {"seconds": 30, "marker": str(tmp_path / "a")})
        bystander = h.submit("Sleep", {"seconds": 1.0, "marker": str(tmp_path / "b")})
        victim_pid = int(await wait_for_file(tmp_path / "a"))
        bystander_pid = int(await wait_for_file(tmp_path / "b"))
        assert h.pool.running_jobs() == {victim: victim_pid, bystander: bystander_pid}

        os.kill(victim_pid, signal.SIGKILL)
        reason, text = await h.failed(victim)
        assert reason == "crash"
        assert f"child process (pid {victim_pid}) died while running the job" in text
        assert "killed by signal SIGKILL (9)" in text and "last RSS" in text and "MiB" in text

        done = await h.done(bystander)  # the other child's job was untouched
        assert done.kind == "completed"
        await h.full_strength()
        assert victim_pid not in h.pool.pids() and bystander_pid in h.pool.pids()
        assert h.pool.stats.restarts["crash"] == 1
        assert (await h.done(h.submit("Noop"))).kind == "completed"


@pytest.mark.reliability
@async_test
async def test_os_exit_names_the_exit_code() -> None:
    async with Harness() as h:
        reason, text = await h.failed(h.submit("Exit", {"code": 3}))
        assert reason == "crash" and "exited with code 3" in text
        await h.full_strength()


@pytest.mark.reliability
@async_test
async def test_segfault_names_sigsegv() -> None:
    async with Harness() as h:
        reason, text = await h.failed(h.submit("Segfault"))
        assert reason == "crash" and "killed by signal SIGSEGV (11)" in text
        reason, text = await h.failed(h.submit("SelfSignal", {"signal": "SIGSEGV"}))
        assert reason == "crash" and "SIGSEGV" in text
        await h.full_strength()
        assert (await h.done(h.submit("Noop"))).kind == "completed"


@pytest.mark.reliability
@async_test
async def test_timeout_interrupts_a_cooperative_job_and_keeps_its_child(tmp_path: Path) -> None:
    for worker in ("Hold", "AsyncHold"):
        async with Harness(processes=1) as h:
            pid = h.pool.pids()[0]
            never = str(tmp_path / "never")
            job_id = h.submit(worker, {"release": never, "max_seconds": 30}, timeout=0.3)
            assert await h.failed(job_id) == ("timeout", "job exceeded its timeout of 0.3 s")
            assert h.pool.pids() == [pid] and sum(h.pool.stats.restarts.values()) == 0
            assert h.pool.stats.kills["timeout"] == 1
            assert (await h.done(h.submit("Noop"))).kind == "completed"


@pytest.mark.reliability
@async_test
async def test_timeout_kills_a_job_stuck_in_a_c_call_after_the_grace(tmp_path: Path) -> None:
    async with Harness(kill_grace=0.3) as h:
        job_id = h.submit("Sleep", {"seconds": 30, "marker": str(tmp_path / "m")}, timeout=0.5)
        pid = int(await wait_for_file(tmp_path / "m"))
        reason, text = await h.failed(job_id)
        assert reason == "timeout"
        assert text == (
            f"job exceeded its timeout of 0.5 s; it did not stop within the kill grace of 0.3 s, "
            f"so its child process (pid {pid}) was killed"
        )
        await h.full_strength()
        assert pid not in h.pool.pids()
        assert h.pool.stats.restarts["timeout"] == 1
        # A job that finishes inside its timeout is not touched.
        assert (await h.done(h.submit("Sleep", {"seconds": 0.05}, timeout=5))).kind == "completed"


@pytest.mark.reliability
@async_test
async def test_memory_limit_kills_a_job_while_it_runs(tmp_path: Path) -> None:
    limit = 200 * 1024 * 1024
    async with Harness(max_memory=limit, memory_check_interval=0.05) as h:
        started = time.monotonic()
        job_id = h.submit("Hog", {"mb": 300, "seconds": 30, "marker": str(tmp_path / "m")})
        reason, text = await h.failed(job_id)
        assert time.monotonic() - started < 20  # killed mid-job, not after its 30 s
        assert reason == "memory"
        assert "exceeded max_memory: RSS" in text and "> limit 200.0 MiB" in text
        await h.full_strength()
        assert h.pool.stats.restarts["memory"] == 1


@pytest.mark.reliability
@async_test
async def test_a_child_left_above_max_memory_is_recycled_after_its_job() -> None:
    limit = 150 * 1024 * 1024
    # Checks are rare here, so the job (which returns at once) finishes before any check.
    async with Harness(processes=1, max_memory=limit, memory_check_interval=30) as h:
        pid = h.pool.pids()[0]
        done = await h.done(h.submit("Grow", {"mb": 200}))
        assert done.kind == "completed" and done.rss > limit
        await h.full_strength()
        assert h.pool.pids() != [pid]
        assert h.pool.stats.restarts["memory"] == 1


@pytest.mark.reliability
@async_test
async def test_a_child_past_max_memory_drains_its_jobs_and_is_replaced(tmp_path: Path) -> None:
    log, release = tmp_path / "log", tmp_path / "release"
    mib = 1024 * 1024
    options = dict(max_memory=150 * mib, memory_ceiling=1024 * mib, memory_check_interval=0.05)
    async with Harness(processes=1, **options) as h:
        pid = h.pool.pids()[0]
        hog = h.submit("Hog", {"mb": 200, "seconds": 30, "marker": str(tmp_path / "hog")})
        args = {"log": str(log), "release": str(release)}
        others = [h.submit("Hold", args) for _ in range(3)]
        await wait_for_file(tmp_path / "hog")
        while h.pool.stats.restarts["memory"] == 0:  # the watch saw it: draining now
            await asyncio.sleep(0.01)
        await h.full_strength()  # the replacement is up beside the draining child
        newcomer = h.submit("Pid")
        assert decode_recorded((await h.done(newcomer)).recorded) != pid
        assert h.pool.running_jobs()[others[0]] == pid  # the drainer keeps its jobs
        release.touch()
        for job_id in others:
            assert (await h.done(job_id)).kind == "completed"
        assert h.pool.stop_job(hog) is True  # let the hog go; the drained child then exits
        assert (await h.failed(hog))[0] == "cancelled"
        while pid in h.pool.pids():
            await asyncio.sleep(0.01)
        assert h.pool.stats.restarts["memory"] == 1 and h.pool.stats.kills["memory"] == 0


@pytest.mark.reliability
@async_test
async def test_a_draining_child_past_the_ceiling_is_killed_and_nobody_is_charged(
    tmp_path: Path,
) -> None:
    mib = 1024 * 1024
    options = dict(max_memory=100 * mib, memory_ceiling=150 * mib, memory_check_interval=0.05)
    async with Harness(processes=1, **options) as h:
        args = {"log": str(tmp_path / "log"), "release": str(tmp_path / "never")}
        others = [h.submit("Hold", args) for _ in range(2)]
        await wait_until_events(tmp_path / "log", lambda e: len(e) == 2)
        hog = h.submit("Hog", {"mb": 300, "seconds": 30})
        for job_id in [*others, hog]:
            text, isolate = await h.released(job_id)
            assert isolate is True and "grew past the ceiling of 150.0 MiB" in text, text
        await h.full_strength()


@pytest.mark.reliability
@async_test
async def test_many_restarts_leak_no_descriptors_and_no_zombies() -> None:
    before = len(os.listdir("/proc/self/fd"))
    async with Harness(start_method="fork") as h:
        for i in range(12):
            worker = ("Exit", "Segfault", "Sleep")[i % 3]
            job_id = h.submit(worker, {"code": 5, "seconds": 30}, timeout=0.2)
            assert (await h.outcome(job_id))[0] == "failed"
            await h.full_strength()
        assert sum(h.pool.stats.restarts.values()) == 12
        assert len(os.listdir("/proc/self/fd")) <= before + 2 * 8  # two live children's fds
    assert len(os.listdir("/proc/self/fd")) == before
    own = [p for p in multiprocess.active_children() if p.name == "oban-pool-child"]
    assert not own


@async_test
async def test_children_are_recycled_after_max_jobs_per_child() -> None:
    async with Harness(processes=1, max_jobs_per_child=3) as h:
        pids = []
        for _ in range(7):
            await h.full_strength()
            pids.append(decode_recorded((await h.done(h.submit("Pid"))).recorded))
        assert pids[0] == pids[1] == pids[2]
        assert pids[3] == pids[4] == pids[5] != pids[0]
        assert pids[6] not in (pids[0], pids[3])
        assert h.pool.stats.restarts["recycle"] == 2
        h.seen_pids.update(pids)


@pytest.mark.reliability
@async_test
async def test_kill_job_stops_a_running_job(tmp_path: Path) -> None:
    async with Harness() as h:
        job_id = h.submit("Sleep", {"seconds": 30, "marker": str(tmp_path / "m")})
        pid = int(await wait_for_file(tmp_path / "m"))
        assert h.pool.kill_job(job_id) is True
        reason, text = await h.failed(job_id)
        assert reason == "cancelled" and f"pid {pid}" in text
        assert h.pool.kill_job(job_id) is False
        assert h.pool.kill_job(123456) is False
        await h.full_strength()
        assert pid not in h.pool.pids()
        assert h.pool.stats.restarts["cancelled"] == 1


@pytest.mark.reliability
@async_test
async def test_kill_job_of_one_job_among_many_leaves_the_others_running(tmp_path: Path) -> None:
    log, release = tmp_path / "log", tmp_path / "release"
    async with Harness(processes=1) as h:
        pid = h.pool.pids()[0]
        args = {"log": str(log), "release": str(release)}
        jobs = [h.submit("Hold" if i % 2 else "AsyncHold", args) for i in range(6)]
        await wait_until_events(log, lambda e: sum(x[0] == "start" for x in e) == 6)
        assert h.pool.kill_job(jobs[1]) is True
        assert await h.failed(jobs[1]) == ("cancelled", "job was cancelled")
        assert h.pool.kill_job(jobs[1]) is False
        release.touch()
        for job_id in jobs[:1] + jobs[2:]:
            assert (await h.done(job_id)).kind == "completed"
        assert h.pool.pids() == [pid] and sum(h.pool.stats.restarts.values()) == 0


# =========================================================================== many jobs at once


async def wait_until_events(path: Path, check: Any, timeout: float = 30) -> list[Any]:
    """Wait for the jobs' own event log to satisfy ``check``."""
    from pool_workers import read_events

    deadline = time.monotonic() + timeout
    while not check(events := read_events(path)):
        assert time.monotonic() < deadline, f"events never matched: {events[-10:]}"
        await asyncio.sleep(0.01)
    return events


@pytest.mark.parametrize("worker", ["AsyncHold", "Hold"])
@async_test
async def test_fifty_jobs_run_at_once_on_two_processes(tmp_path: Path, worker: str) -> None:
    # Every job holds until all 50 have started: they can only all finish by running at once.
    from pool_workers import most_at_once

    log = tmp_path / "log"
    async with Harness(processes=2, threads=50) as h:
        ids = [h.submit(worker, {"log": str(log), "until": 50}) for _ in range(50)]
        for job_id in ids:
            assert (await h.done(job_id)).kind == "completed"
        events = await wait_until_events(log, lambda e: len(e) == 100)
        assert most_at_once(events) == 50
        pids = {pid for _, _, pid in events}
        assert len(pids) == 2  # placement spread them over both children


@async_test
async def test_set_threads_lets_more_sync_jobs_run_at_once(tmp_path: Path) -> None:
    from pool_workers import most_at_once

    log = tmp_path / "log"
    async with Harness(processes=1, threads=2) as h:
        ids = [h.submit("Hold", {"log": str(log), "until": 6}) for _ in range(6)]
        # Two threads: two start, and none ends before all six have started.
        await wait_until_events(log, lambda e: len(e) == 2)
        h.pool.set_threads(6)
        for job_id in ids:
            assert (await h.done(job_id)).kind == "completed"
        assert most_at_once(await wait_until_events(log, lambda e: len(e) == 12)) == 6


@async_test
async def test_as_many_jobs_as_processes_get_a_process_each(tmp_path: Path) -> None:
    log = tmp_path / "log"
    async with Harness(processes=2) as h:
        ids = [h.submit("Hold", {"log": str(log), "until": 2}) for _ in range(2)]
        for job_id in ids:
            await h.done(job_id)
    starts = [pid for what, _, pid in (await wait_until_events(log, lambda e: len(e) == 4))
              if what == "start"]  # fmt: skip
    assert len(set(starts)) == 2


@async_test
async def test_an_isolated_job_never_shares_its_child(tmp_path: Path) -> None:
    from pool_workers import read_events

    log, release = tmp_path / "log", tmp_path / "release"
    async with Harness(processes=2) as h:
        args = {"log": str(log), "release": str(release)}
        first = [h.submit("Hold", args) for _ in range(4)]  # 2 per child
        isolated = h.submit("Hold", {**args, "marker": str(tmp_path / "iso")}, isolated=True)
        later = [h.submit("Hold", args) for _ in range(4)]
        await wait_until_events(log, lambda e: sum(x[0] == "start" for x in e) >= 8)
        assert h.pool.waiting == 1  # the isolated job waits for a child to empty
        release.touch()
        for job_id in [*first, isolated, *later]:
            assert (await h.done(job_id)).kind == "completed"
    events = read_events(log)
    iso_pid = next(pid for what, job, pid in events if job == isolated)
    inside = False
    for what, job, pid in events:
        if job == isolated:
            inside = what == "start"
        elif inside:
            assert pid != iso_pid, f"job {job} ran beside the isolated job: {events}"


@pytest.mark.reliability
@async_test
async def test_one_of_ten_jobs_times_out_and_stops_alone(tmp_path: Path) -> None:
    log, release = tmp_path / "log", tmp_path / "release"
    async with Harness(processes=1) as h:
        pid = h.pool.pids()[0]
        args = {"log": str(log), "release": str(release)}
        others = [h.submit("Hold" if i % 2 else "AsyncHold", args) for i in range(9)]
        slow = h.submit("Hold", {"release": str(tmp_path / "never")}, timeout=0.5)
        reason, _ = await h.failed(slow)
        assert reason == "timeout"
        release.touch()
        for job_id in others:
            assert (await h.done(job_id)).kind == "completed"
        assert h.pool.pids() == [pid]


@pytest.mark.reliability
@async_test
async def test_a_job_stuck_in_c_past_its_timeout_gets_the_others_given_back(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log"
    async with Harness(processes=1, kill_grace=0.3) as h:
        args = {"log": str(log), "release": str(tmp_path / "never")}
        others = [h.submit("Hold" if i % 2 else "AsyncHold", args) for i in range(9)]
        stuck = h.submit("StuckInC", {"log": str(log), "seconds": 30}, timeout=0.5)
        await wait_until_events(log, lambda e: len(e) >= 10)
        reason, text = await h.failed(stuck)
        assert reason == "timeout" and "did not stop within the kill grace" in text
        for job_id in others:
            text, isolate = await h.released(job_id)
            assert f"because job {stuck} (pool_workers.StuckInC)" in text, text
            assert "exceeded its timeout" in text and isolate is False
        assert h.pool.stats.kills["collateral"] == 9
        await h.full_strength()
        assert (await h.done(h.submit("Noop"))).kind == "completed"


@pytest.mark.reliability
@async_test
async def test_a_child_that_segfaults_with_ten_jobs_charges_none_of_them(tmp_path: Path) -> None:
    log = tmp_path / "log"
    async with Harness(processes=1) as h:
        pid = h.pool.pids()[0]
        args = {"log": str(log), "release": str(tmp_path / "never")}
        others = [h.submit("Hold" if i % 2 else "AsyncHold", args) for i in range(9)]
        poison = h.submit("SegfaultAfterOthers", {"log": str(log), "until": 10})
        for job_id in [*others, poison]:
            text, isolate = await h.released(job_id)
            assert isolate is True
            assert f"child process (pid {pid}) killed by signal SIGSEGV" in text
            assert "while running 10 jobs" in text and "runs isolated next time" in text
        # Alone in its child (isolated), the poison job is charged with the crash.
        retry = h.submit("SegfaultAfterOthers", {}, isolated=True)
        reason, text = await h.failed(retry)
        assert reason == "crash" and "died while running the job" in text


@pytest.mark.reliability
@async_test
async def test_a_sync_job_that_finished_is_reported_even_if_the_child_dies_while_its_loop_is_busy(
    tmp_path: Path,
) -> None:
    """A thread's result must not wait for the child's event loop: here an async job blocks the
    loop while a sync job finishes, then a third job kills the process. The finished job is
    done, not given back to run again."""
    finished = tmp_path / "finished"
    async with Harness(processes=1) as h:
        runs = [
            h.run("BlockLoop", {"seconds": 5}),
            h.run("MarkOnReturn", {"done": str(finished)}),
            # A second after the marker: the thread has long written its result by then (the
            # old child held it behind the blocked loop for 5 s).
            h.run("ExitAfterFile", {"after": str(finished), "then": 1.0}),
        ]
        for run in runs:
            h._future(run.job_id)
        h.pool.submit_many(runs)
        blocker, marker, crasher = (r.job_id for r in runs)
        assert (await h.done(marker)).kind == "completed"
        for job_id in (blocker, crasher):
            text, isolate = await h.released(job_id)
            assert "exited with code 7 while running 2 jobs" in text and isolate is True


@pytest.mark.reliability
@async_test
async def test_a_timeout_that_runs_out_while_its_child_is_dying_is_not_charged(
    tmp_path: Path,
) -> None:
    """A dead child's pipe can stay open a while (a core dump takes up to a second): a timeout
    that runs out then must not charge the job a timeout; the child's death settles it."""
    log = tmp_path / "log"
    async with Harness(processes=1, kill_grace=20) as h:
        job_id = h.submit("Hold", {"log": str(log), "release": str(tmp_path / "no")}, timeout=30)
        await wait_until_events(log, lambda e: len(e) >= 1)
        pid = h.pool.pids()[0]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not process_dying(pid) and time.monotonic() < deadline:  # the loop must not reap it
            time.sleep(0.001)
        assert process_dying(pid)
        job = h.pool.ledger.get(job_id)
        assert job is not None
        h.pool._on_timeout(job)  # as if its timer fired now
        assert job.stop_reason is None
        reason, text = await h.failed(job_id)
        assert reason == "crash" and "SIGKILL" in text, text


def test_process_dying_tells_a_zombie_and_a_gone_pid_from_a_live_process() -> None:
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while not process_dying(done.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert process_dying(done.pid)  # exited, not reaped: a zombie
        assert not process_dying(live.pid)
    finally:
        live.kill()
        live.wait()
        done.wait()
    assert process_dying(done.pid)  # reaped: gone


@pytest.mark.reliability
@async_test
async def test_a_sync_job_waiting_for_a_thread_is_not_timed_out_before_it_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With one thread, the second sync job waits behind the first: its timeout runs out
    before its code began, which is not a timeout; it runs once the thread is free."""
    caplog.set_level(logging.DEBUG, logger="oban_pro.pool.pool")
    release = tmp_path / "release"
    async with Harness(processes=1, threads=1) as h:
        holder = h.submit("Hold", {"release": str(release)})
        waiting = h.submit("Noop", timeout=0.2)
        deadline = time.monotonic() + 20
        note = f"job {waiting} waits for a thread"
        while not any(note in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the timeout never ran out"
            await asyncio.sleep(0.01)
        release.touch()
        assert (await h.done(holder)).kind == "completed"
        assert (await h.done(waiting)).kind == "completed"
        assert h.pool.stats.kills["timeout"] == 0


@pytest.mark.reliability
@async_test
async def test_jobs_sent_to_a_child_that_died_before_they_started_run_elsewhere() -> None:
    async with Harness(processes=1) as h:
        job_id = h.submit("Exit", {"code": 3})
        reason, text = await h.failed(job_id)
        assert reason == "crash" and "exited with code 3" in text
        # The ledger holds nothing of the dead child; the next jobs run on its replacement.
        assert (await h.done(h.submit("Noop"))).kind == "completed"


# =========================================================================== isolated jobs on deck


def starts_of(events: list[tuple[str, int, int]], job_id: int) -> list[int]:
    """The pids in which ``job_id`` started, from the jobs' own log."""
    return [pid for what, job, pid in events if what == "start" and job == job_id]


async def start_one_and_put_one_on_deck(h: Harness, log: Path, release: Path) -> tuple[int, int]:
    """An isolated job that holds until ``release`` exists, running in the only child, and a
    second isolated job (which ends at once) submitted behind it: (ahead, on deck)."""
    ahead = h.submit("IsolatedHold", {"log": str(log), "release": str(release)}, True)
    await wait_until_events(log, lambda e: len(e) == 1)
    return ahead, h.submit("IsolatedHold", {"log": str(log)}, True)


@async_test
async def test_an_isolated_job_waits_on_deck_and_starts_when_the_one_ahead_ends(
    tmp_path: Path,
) -> None:
    from pool_workers import most_at_once

    log, release = tmp_path / "log", tmp_path / "release"
    async with Harness(processes=1) as h:
        ahead, deck = await start_one_and_put_one_on_deck(h, log, release)
        # Sent to the busy child to start there the moment the job ahead ends.
        job = h.pool.ledger.get(deck)
        assert job is not None and job.behind == ahead and job.child is not None
        assert h.pool.waiting == 0 and not job.started
        assert h.pool.stats.on_deck == 1  # what oban_pro_pool_jobs_waiting{state="on_deck"} shows
        release.touch()
        assert (await h.done(ahead)).kind == "completed"
        assert (await h.done(deck)).kind == "completed"
        events = await wait_until_events(log, lambda e: len(e) == 4)
        assert [(what, job) for what, job, _ in events] == [
            ("start", ahead), ("stop", ahead), ("start", deck), ("stop", deck),
        ]  # fmt: skip
        assert most_at_once(events) == 1 and len({pid for *_, pid in events}) == 1
        assert h.pool.ledger.on_deck == 0


@async_test
async def test_an_on_deck_job_moves_to_a_child_that_empties_first(tmp_path: Path) -> None:
    log = tmp_path / "log"
    async with Harness(processes=2) as h:
        releases = {}
        for name in ("one", "two"):
            release = tmp_path / name
            releases[h.submit("IsolatedHold", {"log": str(log), "release": str(release)}, True)] = (
                release
            )
        events = await wait_until_events(log, lambda e: len(e) == 2)
        pid_of = {job: pid for _, job, pid in events}
        deck = h.submit("IsolatedHold", {"log": str(log)}, True)
        job = h.pool.ledger.get(deck)
        assert job is not None and job.behind in releases
        ahead = job.behind
        other = next(j for j in releases if j != ahead)
        releases[other].touch()  # the other child empties while the job ahead still runs
        assert (await h.done(other)).kind == "completed"
        assert (await h.done(deck)).kind == "completed"
        events = await wait_until_events(log, lambda e: len(e) == 5)
        assert starts_of(events, deck) == [pid_of[other]]
        assert ("stop", ahead, pid_of[ahead]) not in events  # it still runs
        releases[ahead].touch()
        assert (await h.done(ahead)).kind == "completed"


@async_test
async def test_an_on_deck_job_that_cannot_be_built_fails_at_once_beside_the_one_ahead(
    tmp_path: Path,
) -> None:
    log, release = tmp_path / "log", tmp_path / "release"
    async with Harness(processes=1) as h:
        ahead = h.submit("IsolatedHold", {"log": str(log), "release": str(release)}, True)
        await wait_until_events(log, lambda e: len(e) == 1)
        broken = h.run("IsolatedHold", args=None)
        broken.args = b"[not json"
        h.pool.submit(broken, isolated=True)
        done = await h.done(broken.job_id)  # without waiting for the job ahead
        assert done.kind == "error" and "args is not valid JSON" in (done.error or "")
        assert read_events_of(log) == [("start", ahead, h.pool.pids()[0])]
        release.touch()
        assert (await h.done(ahead)).kind == "completed"


@pytest.mark.reliability
@async_test
async def test_an_on_deck_job_is_not_charged_when_the_job_ahead_crashes_its_child(
    tmp_path: Path,
) -> None:
    log, crash = tmp_path / "log", tmp_path / "crash"
    async with Harness(processes=1) as h:
        ahead = h.submit("ExitAfterFile", {"after": str(crash), "then": 0}, True)
        deck = h.submit("IsolatedHold", {"log": str(log)}, True)
        assert h.pool.ledger.get(deck).behind == ahead  # type: ignore[union-attr]
        crash.touch()
        reason, text = await h.failed(ahead)
        assert reason == "crash" and "died while running the job" in text  # it was alone
        # The job on deck had not begun: it runs on the replacement, uncharged.
        assert (await h.done(deck)).kind == "completed"
        assert len(starts_of(await wait_until_events(log, lambda e: len(e) == 2), deck)) == 1


@pytest.mark.reliability
@async_test
async def test_an_on_deck_job_is_placed_again_when_the_job_ahead_is_killed_at_its_timeout(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log"
    async with Harness(processes=1, kill_grace=0.3) as h:
        ahead = h.submit("StuckInC", {"log": str(log), "seconds": 30}, True, timeout=0.3)
        deck = h.submit("IsolatedHold", {"log": str(log)}, True)
        assert h.pool.ledger.get(deck).behind == ahead  # type: ignore[union-attr]
        reason, _ = await h.failed(ahead)
        assert reason == "timeout"
        assert (await h.done(deck)).kind == "completed"
        events = await wait_until_events(log, lambda e: len(e) == 3)
        assert starts_of(events, deck) != starts_of(events, ahead)  # on the replacement


@pytest.mark.reliability
@async_test
async def test_cancelling_an_on_deck_job_ends_it_unstarted_and_leaves_the_one_ahead(
    tmp_path: Path,
) -> None:
    log, release = tmp_path / "log", tmp_path / "release"
    async with Harness(processes=1) as h:
        ahead, deck = await start_one_and_put_one_on_deck(h, log, release)
        assert h.pool.stop_job(deck, "cancelled")
        reason, text = await h.failed(deck)
        assert reason == "cancelled" and text == "job was cancelled"
        release.touch()
        assert (await h.done(ahead)).kind == "completed"
        events = await wait_until_events(log, lambda e: len(e) == 2)
        assert starts_of(events, deck) == []


@pytest.mark.reliability
@async_test
async def test_stopping_gives_an_on_deck_job_back_unstarted(tmp_path: Path) -> None:
    log, release = tmp_path / "log", tmp_path / "release"
    h = Harness(processes=1)
    await h.pool.start()
    ahead, deck = await start_one_and_put_one_on_deck(h, log, release)
    stopping = asyncio.create_task(h.pool.stop(timeout=20))
    deadline = time.monotonic() + 10
    while deck in h.pool.ledger:  # its child gives it back (Withdrawn)
        assert time.monotonic() < deadline, "the on-deck job was never given back"
        await asyncio.sleep(0.01)
    release.touch()  # the job ahead ends within the grace: nothing starts after it
    unfinished = await stopping
    assert [run.job_id for run in unfinished] == [deck]
    assert (await h.done(ahead)).kind == "completed"
    assert starts_of(read_events_of(log), deck) == []
    assert len(h.pool.ledger) == 0


def read_events_of(path: Path) -> list[tuple[str, int, int]]:
    from pool_workers import read_events

    return read_events(path)


# =========================================================================== lifecycle


@async_test
async def test_submit_refuses_what_it_cannot_take() -> None:
    async with Harness(processes=1) as h:
        h.submit("Sleep", {"seconds": 0.2}, job_id=50)
        with pytest.raises(ValueError, match="already running"):
            h.submit("Noop", job_id=50)
        await h.done(50)
    with pytest.raises(PoolClosedError):
        h.pool.submit(h.run("Noop"))


@pytest.mark.reliability
@async_test
async def test_stop_returns_unfinished_jobs_and_leaves_no_processes(tmp_path: Path) -> None:
    h = Harness()
    await h.pool.start()
    pids = h.pool.pids()
    long_job = h.submit("Sleep", {"seconds": 30, "marker": str(tmp_path / "m")})
    await wait_for_file(tmp_path / "m")
    short_job = h.submit("Sleep", {"seconds": 0.2})
    others = [h.submit("Sleep", {"seconds": 30}) for _ in range(6)]  # in both children
    started = time.monotonic()
    unfinished = await h.pool.stop(timeout=1.0)
    assert sorted(run.job_id for run in unfinished) == sorted([long_job, *others])
    assert (await h.done(short_job)).kind == "completed"  # finished during the grace period
    assert time.monotonic() - started < 10
    for pid in pids:
        assert process_gone(pid)
    assert not [p for p in multiprocess.active_children() if p.name == "oban-pool-child"]
    assert h.pool.size == 0 and len(h.pool.ledger) == 0


@async_test
async def test_the_event_loop_never_waits_on_job_code(tmp_path: Path) -> None:
    async with Harness() as h:
        h.submit("Cpu", {"n": 3_000_000})
        h.submit("Sleep", {"seconds": 30, "marker": str(tmp_path / "m")}, timeout=20)
        await wait_for_file(tmp_path / "m")
        worst = 0.0
        for _ in range(20):
            before = time.monotonic()
            await asyncio.sleep(0.01)
            worst = max(worst, time.monotonic() - before - 0.01)
        assert worst < 0.2


@async_test
async def test_cpu_bound_jobs_run_in_parallel() -> None:
    # The machine is shared, so each round also times two bare forked processes running the
    # same loop (what the hardware allows right now), and the best of the rounds is compared.
    # Two jobs run one after the other can never beat 2x the best single time, so min/min
    # cannot pass by luck.
    n = _iterations_for(0.3)
    ones: list[float] = []
    twos: list[float] = []
    raw_ones: list[float] = []
    raw_twos: list[float] = []
    async with Harness() as h:
        await h.done(h.submit("Cpu", {"n": 1000}))  # warm both code paths
        for _ in range(6):
            start = time.perf_counter()
            await h.done(h.submit("Cpu", {"n": n}))
            ones.append(time.perf_counter() - start)

            start = time.perf_counter()
            a, b = h.submit("Cpu", {"n": n}), h.submit("Cpu", {"n": n})
            await h.done(a)
            await h.done(b)
            twos.append(time.perf_counter() - start)

            raw_ones.append(_raw_fork_time(n, 1))
            raw_twos.append(_raw_fork_time(n, 2))
            if len(twos) >= 2 and min(twos) < 1.6 * min(ones):
                break
    one, two = min(ones), min(twos)
    raw_one, raw_two = min(raw_ones), min(raw_twos)
    if two >= 1.6 * one and raw_two >= 1.6 * raw_one:
        pytest.skip(
            f"no spare core on this machine now: two bare forked processes took "
            f"{raw_two:.2f}s vs {raw_one:.2f}s (pool: {two:.2f}s vs {one:.2f}s)"
        )
    assert two < 1.6 * one, (
        f"two jobs on two processes took {two:.2f}s vs {one:.2f}s for one "
        f"(bare processes: {raw_two:.2f}s vs {raw_one:.2f}s)"
    )


def _spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def _iterations_for(seconds: float) -> int:
    n = 200_000
    start = time.perf_counter()
    _spin(n)
    return int(n * seconds / max(time.perf_counter() - start, 1e-6))


def _raw_fork_time(n: int, count: int) -> float:
    """Wall time of ``count`` bare forked processes each running the loop ``n`` times."""
    start = time.perf_counter()
    pids = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            _spin(n)
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    return time.perf_counter() - start


@async_test
async def test_ten_megabyte_args_round_trip() -> None:
    blob = "x" * (10 * 1024 * 1024) + "end"
    async with Harness(processes=1) as h:
        done = await h.done(h.submit("EchoBig", {"blob": blob}), timeout=45)
        assert done.kind == "snooze" and done.meta["len"] == len(blob)
        assert done.meta["blob"] == blob
        assert (await h.done(h.submit("Noop"))).kind == "completed"


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
@async_test
async def test_every_start_method_starts_and_runs_jobs(method: str) -> None:
    async with Harness(start_method=method) as h:
        assert h.pool.size == 2 and h.pool.idle_count == 2
        assert (await h.done(h.submit("Noop"))).kind == "completed"
        assert (await h.done(h.submit("AsyncSleep", {"seconds": 0}))).kind == "completed"
        assert h.pool.stats.last_start_seconds > 0


_ORPHAN_SCRIPT = """
import asyncio, json, sys, time
from oban_pro.pool import Run, WorkerPool

async def main():
    pool = WorkerPool(1, imports=["pool_workers"], on_done=print, on_failed=print)  # noqa: T201
    await pool.start()
    pool.submit(Run(job_id=1, worker="pool_workers.Sleep",
                    args=json.dumps({"seconds": 60, "marker": sys.argv[1]}).encode()))
    await asyncio.sleep(120)

if __name__ == "__main__":
    asyncio.run(main())
"""


@pytest.mark.reliability
def test_a_busy_child_exits_when_its_parent_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "node.py"
    script.write_text(textwrap.dedent(_ORPHAN_SCRIPT))
    marker = tmp_path / "m"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), str(TESTS_DIR.parent)])
    node = subprocess.Popen([sys.executable, str(script), str(marker)], env=env)
    try:
        deadline = time.monotonic() + 30
        while not marker.exists() or not marker.read_text():
            assert node.poll() is None, "the node died before its job started"
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.01)
        child_pid = int(marker.read_text())
        node.kill()
        node.wait()
        deadline = time.monotonic() + 10
        while not process_gone(child_pid) and not _is_zombie(child_pid):
            assert time.monotonic() < deadline, "the orphaned child kept running its job"
            time.sleep(0.01)
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False
