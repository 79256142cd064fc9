"""Measurement helpers shared by both sides of every comparison.

This module needs only the standard library and psycopg: the peer runner imports it inside the
Oban.py virtual environment (by file path, without ``oban_pro`` on ``sys.path``), so oban_pro and
Oban.py are loaded, drained and timed by the very same lines.

Timing rules:
- a drain starts when the transaction that inserted the jobs has committed (``time.time()`` in
  the benchmark process) and ends at the newest ``completed_at`` the engine wrote (the same
  machine's clock, read from the rows), so polling for the end adds no error;
- enqueue-to-start is measured by the job itself: it sends its ``time.time()`` at start on a
  Unix datagram socket (:class:`StampListener`), so nothing polls while the job is on its way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg


def qp(prefix: str) -> str:
    """A schema name as a quoted identifier."""
    return '"' + prefix.replace('"', '""') + '"'


# -- job bodies shared by both engines --------------------------------------------------------


def burn(rounds: int) -> str:
    """Chained SHA-256 with a Python-level loop per round: CPU-bound and holding the GIL (the
    same work as ``oban_pro.demo.burn``). Both engines' CPU jobs call this very function."""
    digest = b"oban"
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
        digest = bytes(b ^ 0x5A for b in digest)
    return digest.hex()[:16]


def calibrate_rounds(target_seconds: float = 0.020) -> int:
    """Rounds of :func:`burn` that take ``target_seconds`` on an undisturbed core here.

    The fastest of 15 probes of about the target is the least disturbed by other load (a shared
    machine steals CPU in bursts; a median would be inflated by them and give too few rounds).
    """
    warm_until = time.perf_counter() + 0.5  # let the core's clock ramp up first
    while time.perf_counter() < warm_until:
        burn(1000)
    probe = 500
    while True:  # grow the probe until it takes at least half of the target
        started = time.perf_counter()
        burn(probe)
        if time.perf_counter() - started >= target_seconds / 2 or probe > 10_000_000:
            break
        probe *= 2
    fastest = min(_timed_burn(probe) for _ in range(15))
    return max(1, round(target_seconds / (fastest / probe)))


def _timed_burn(rounds: int) -> float:
    started = time.perf_counter()
    burn(rounds)
    return time.perf_counter() - started


_stamp_socket: socket.socket | None = None


def send_stamp(path: str, job_id: int, started: float) -> None:
    """Tell a :class:`StampListener` at ``path`` that ``job_id`` started at ``started``."""
    global _stamp_socket
    if _stamp_socket is None:
        _stamp_socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    _stamp_socket.sendto(f"{job_id} {started!r} {os.getpid()}".encode(), path)


def log_line(path: str, *fields: object) -> None:
    """Append one line with a single O_APPEND write (lines of concurrent writers never mix)."""
    line = (" ".join(str(f) for f in fields) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


# -- statistics -----------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100) with linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    if lo == hi:
        return ordered[int(k)]
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Median and spread of repeated measurements (NaN-free input expected)."""
    vals = [float(v) for v in values]
    if not vals:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "n": 0, "samples": []}
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
        "samples": vals,
    }


# -- rows -----------------------------------------------------------------------------------


async def connect(dsn: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True)


async def truncate(conn: Any, prefix: str) -> None:
    """Empty the job table (and producers/leaders left by a killed node)."""
    p = qp(prefix)
    await conn.execute(f"TRUNCATE {p}.oban_jobs RESTART IDENTITY")
    await conn.execute(f"DELETE FROM {p}.oban_producers")
    await conn.execute(f"DELETE FROM {p}.oban_leaders")


def job_rows(queue: str, worker: str, n: int, args: str = "{}") -> list[tuple[str, str, str, str]]:
    return [("available", queue, worker, args)] * n


async def copy_jobs(
    conn: Any,
    prefix: str,
    queue: str,
    worker: str,
    n: int,
    *,
    args: str = "{}",
    notify: tuple[str, str] | None = None,
) -> None:
    """Insert ``n`` available jobs with COPY in one transaction; ``notify`` = (channel, payload)
    is sent in the same transaction (each engine's own insert notice, so it wakes at commit)."""
    p = qp(prefix)
    async with conn.transaction():
        async with conn.cursor() as cur:
            async with cur.copy(
                f"COPY {p}.oban_jobs (state, queue, worker, args) FROM STDIN"
            ) as copy:
                for row in job_rows(queue, worker, n, args):
                    await copy.write_row(row)
            if notify is not None:
                await cur.execute("SELECT pg_notify(%s, %s)", notify)


async def pending(conn: Any, prefix: str, queue: str) -> bool:
    cur = await conn.execute(
        f"SELECT EXISTS (SELECT 1 FROM {qp(prefix)}.oban_jobs "
        f"WHERE state IN ('available', 'executing') AND queue = %s)",
        (queue,),
    )
    row = await cur.fetchone()
    return bool(row and row[0])


async def state_counts(conn: Any, prefix: str) -> dict[str, int]:
    cur = await conn.execute(f"SELECT state::text, count(*) FROM {qp(prefix)}.oban_jobs GROUP BY 1")
    return {state: int(n) for state, n in await cur.fetchall()}


async def wait_drained(
    conn: Any,
    prefix: str,
    queue: str,
    *,
    timeout: float,
    interval: float = 0.25,
    on_tick: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Wait until no job of ``queue`` is available or executing. The end is read from the
    jobs' ``completed_at``, not from when this notices, so it polls seldom: at 20 polls a
    second it was a third of the database's transactions during a CPU-bound drain, taken from
    the cores the engine under test runs on."""
    deadline = time.monotonic() + timeout
    while await pending(conn, prefix, queue):
        if time.monotonic() > deadline:
            counts = await state_counts(conn, prefix)
            raise TimeoutError(f"queue {queue!r} not drained after {timeout:.0f} s: {counts}")
        if on_tick is not None:
            await on_tick()
        await asyncio.sleep(interval)


async def last_completed(conn: Any, prefix: str, queue: str) -> tuple[int, float]:
    """(number of completed jobs, epoch seconds of the newest ``completed_at``)."""
    cur = await conn.execute(
        f"SELECT count(*), extract(epoch FROM max(completed_at))::float8 "
        f"FROM {qp(prefix)}.oban_jobs WHERE queue = %s AND state = 'completed'",
        (queue,),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0]), float(row[1] or 0.0)


async def drain(
    dsn: str,
    prefix: str,
    queue: str,
    worker: str,
    n: int,
    *,
    start_node: Callable[[], Awaitable[Any]],
    stop_node: Callable[[Any], Awaitable[None]],
    notify: tuple[str, str] | None,
    args: str = "{}",
    timeout: float | None = None,
    on_tick: Callable[[], Awaitable[None]] | None = None,
    reset: Callable[[Any, str], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Start a node, COPY ``n`` jobs in one transaction, time until the node has completed all.

    Returns ``{"jobs", "seconds", "rate", "completed", "states"}``; ``seconds`` runs from the
    commit of the insert to the newest ``completed_at``. ``reset(conn, prefix)`` empties the
    table first (default: :func:`truncate`; table_size keeps its other rows).
    """
    timeout = timeout if timeout is not None else 120.0 + n / 100.0
    conn = await connect(dsn)
    try:
        await (reset or truncate)(conn, prefix)
        await conn.execute(f"VACUUM ANALYZE {qp(prefix)}.oban_jobs")
        postmaster = await postmaster_pid(conn)
        node = await start_node()
        try:
            cpu_before = cpu_snapshot(postmaster=postmaster)
            await copy_jobs(conn, prefix, queue, worker, n, args=args, notify=notify)
            started = time.time()
            await wait_drained(conn, prefix, queue, timeout=timeout, on_tick=on_tick)
            cpu = cpu_delta(cpu_before, cpu_snapshot(postmaster=postmaster))
            completed, finished = await last_completed(conn, prefix, queue)
            states = await state_counts(conn, prefix)
        finally:
            await stop_node(node)
    finally:
        await conn.close()
    seconds = max(finished - started, 1e-9)
    return {
        "jobs": n,
        "seconds": seconds,
        "rate": completed / seconds,
        "completed": completed,
        "states": states,
        "cpu_seconds": cpu,
        "cpu_us_per_job": {k: v / max(completed, 1) * 1e6 for k, v in cpu.items()},
    }


# -- the SQL ceiling ------------------------------------------------------------------------

CEILING_FETCH = """
WITH next AS (
  SELECT id FROM {p}.oban_jobs
  WHERE state = 'available' AND queue = %(queue)s
  ORDER BY priority, scheduled_at, id
  LIMIT %(demand)s
  FOR UPDATE SKIP LOCKED
)
UPDATE {p}.oban_jobs AS j
SET state = 'executing', attempt = j.attempt + 1, attempted_at = timezone('UTC', now()),
    attempted_by = ARRAY[%(node)s::text, %(uuid)s::text]
FROM next
WHERE j.id = next.id
RETURNING j.id, j.worker, j.args::text, j.attempt
"""

CEILING_ACK = """
UPDATE {p}.oban_jobs AS j
SET state = 'completed', completed_at = timezone('UTC', now())
FROM unnest(%(ids)s::bigint[]) AS a(id)
WHERE j.id = a.id AND j.state = 'executing'
"""


async def ceiling_loop(conn: Any, prefix: str, queue: str, batch: int) -> None:
    """The physical limit: fetch ``batch`` jobs (SKIP LOCKED), ack them in one set-based UPDATE,
    repeat on one connection until the queue is empty. No job code, no dispatch, no processes."""
    p = qp(prefix)
    fetch, ack = CEILING_FETCH.format(p=p), CEILING_ACK.format(p=p)
    params = {"queue": queue, "demand": batch, "node": "ceiling", "uuid": "ceiling"}
    while True:
        cur = await conn.execute(fetch, params, prepare=True)
        rows = await cur.fetchall()
        if not rows:
            return
        await conn.execute(ack, {"ids": [r[0] for r in rows]}, prepare=True)


async def drain_ceiling(
    dsn: str, prefix: str, queue: str, worker: str, n: int, batch: int
) -> dict[str, Any]:
    """:func:`ceiling_loop` timed exactly like :func:`drain` times an engine."""
    conn = await connect(dsn)
    loop_conn = await connect(dsn)
    try:
        await truncate(conn, prefix)
        await conn.execute(f"VACUUM ANALYZE {qp(prefix)}.oban_jobs")
        await copy_jobs(conn, prefix, queue, worker, n)
        started = time.time()
        await ceiling_loop(loop_conn, prefix, queue, batch)
        completed, finished = await last_completed(conn, prefix, queue)
    finally:
        await loop_conn.close()
        await conn.close()
    seconds = max(finished - started, 1e-9)
    return {"jobs": n, "seconds": seconds, "rate": completed / seconds, "completed": completed}


# -- enqueue-to-start -----------------------------------------------------------------------


class StampListener:
    """Receives ``"<job id> <time.time()> <pid>"`` datagrams from jobs as they start."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="oban-bench-")
        self.path = os.path.join(self.dir, "stamps.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self._waiters: dict[int, asyncio.Future[float]] = {}
        self._early: dict[int, float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        while True:
            try:
                data = self.sock.recv(256)
            except (BlockingIOError, InterruptedError):
                return
            job_id_s, started_s, _pid = data.decode().split()
            job_id, started = int(job_id_s), float(started_s)
            waiter = self._waiters.pop(job_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(started)
            else:
                self._early[job_id] = started

    async def wait(self, job_id: int, timeout: float = 30.0) -> float:
        if job_id in self._early:
            return self._early.pop(job_id)
        assert self._loop is not None
        waiter = self._loop.create_future()
        self._waiters[job_id] = waiter
        return await asyncio.wait_for(waiter, timeout)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
            os.rmdir(self.dir)


async def wait_completed(conn: Any, prefix: str, job_id: int, timeout: float = 30.0) -> float:
    """Poll one job until it is completed; return its ``completed_at`` (epoch seconds)."""
    sql = (
        f"SELECT state::text, extract(epoch FROM completed_at)::float8 "
        f"FROM {qp(prefix)}.oban_jobs WHERE id = %s"
    )
    deadline = time.monotonic() + timeout
    while True:
        cur = await conn.execute(sql, (job_id,), prepare=True)
        row = await cur.fetchone()
        if row and row[0] == "completed":
            return float(row[1])
        if row and row[0] in ("discarded", "cancelled", "retryable"):
            raise RuntimeError(f"latency job {job_id} ended {row[0]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} not completed after {timeout} s (state {row})")
        await asyncio.sleep(0.002)


async def latency_series(
    dsn: str,
    prefix: str,
    n: int,
    *,
    enqueue: Callable[[str], Awaitable[int]],
    warmup: int = 5,
    gap: float = 0.05,
    on_sample: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Enqueue single jobs one at a time on an idle node; ``enqueue(sock_path)`` inserts one
    stamping job with the engine's own enqueue and returns its id.

    Returns enqueue-to-start and enqueue-to-complete samples in milliseconds.
    """
    listener = StampListener()
    listener.start()
    conn = await connect(dsn)
    to_start: list[float] = []
    to_complete: list[float] = []
    try:
        for i in range(warmup + n):
            await asyncio.sleep(gap)  # idle node: nothing in flight, acks written
            t0 = time.time()
            job_id = await enqueue(listener.path)
            started = await listener.wait(job_id)
            completed = await wait_completed(conn, prefix, job_id)
            if i >= warmup:
                to_start.append((started - t0) * 1000.0)
                to_complete.append((completed - t0) * 1000.0)
                if on_sample is not None:
                    on_sample(i - warmup + 1)
    finally:
        await conn.close()
        listener.close()
    return {"to_start_ms": to_start, "to_complete_ms": to_complete}


def latency_stats(samples: Sequence[float]) -> dict[str, float]:
    return {
        "p50": percentile(samples, 50),
        "p95": percentile(samples, 95),
        "p99": percentile(samples, 99),
        "max": max(samples) if samples else math.nan,
    }


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str)


# -- CPU accounting (Linux /proc) -----------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_stat(pid: str) -> tuple[str, int, float] | None:
    """(comm, ppid, cpu seconds) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    comm = data[data.index("(") + 1 : data.rindex(")")]
    fields = data[data.rindex(")") + 2 :].split()
    # fields[1] = ppid, fields[11] = utime, fields[12] = stime (man 5 proc, counted from state)
    return comm, int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def cpu_snapshot(
    root: int | None = None, postmaster: int | None = None
) -> dict[int, tuple[str, float]]:
    """CPU seconds used so far per process, labelled ``self`` (this process), ``children`` (its
    descendants: worker processes) or ``postgres`` (descendants of ``postmaster``, i.e. the
    server under test; other PostgreSQL servers on the machine are left out)."""
    root = root or os.getpid()
    procs: dict[int, tuple[str, int, float]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            got = _proc_stat(name)
            if got is not None:
                procs[int(name)] = got
    children: dict[int, list[int]] = {}
    for pid, (_comm, ppid, _cpu) in procs.items():
        children.setdefault(ppid, []).append(pid)

    def descendants(top: int) -> list[int]:
        out, stack = [], list(children.get(top, []))
        while stack:
            pid = stack.pop()
            out.append(pid)
            stack.extend(children.get(pid, []))
        return out

    snap: dict[int, tuple[str, float]] = {}
    if root in procs:
        snap[root] = ("self", procs[root][2])
    for pid in descendants(root):
        snap[pid] = ("children", procs[pid][2])
    if postmaster and postmaster in procs:
        snap[postmaster] = ("postgres", procs[postmaster][2])
        for pid in descendants(postmaster):
            snap[pid] = ("postgres", procs[pid][2])
    return snap


def cpu_delta(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds per label between two snapshots (processes that exited in between are lost;
    those started in between count from zero)."""
    out = {"self": 0.0, "children": 0.0, "postgres": 0.0}
    for pid, (label, cpu) in after.items():
        prev = before.get(pid)
        out[label] += cpu - (prev[1] if prev and prev[0] == label else 0.0)
    return out


async def postmaster_pid(conn: Any) -> int | None:
    """The pid of the server's postmaster (the parent of our backend), when it runs here."""
    cur = await conn.execute("SELECT pg_backend_pid()")
    row = await cur.fetchone()
    got = _proc_stat(str(row[0])) if row else None
    return got[1] if got else None
