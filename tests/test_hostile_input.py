"""Bad input and hostile data (design.md invariant 6): each gets a clear, specific error on that
job (or is rejected at the edge) and nothing else is disturbed.

Covered: malformed and oversized notification payloads; a pkill naming a job this node does
not run; args that are not a JSON object; unknown and absurdly long worker names; ~10 MB args;
queue names with quotes, dots, spaces and SQL (plain data) and such prefixes (refused); a job
that floods stdout; jobs that fork or spawn processes and return or exit.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from chaos.chaos_workers import (
    ArgsSize,
    ForkAndExit,
    ForkAndReturn,
    ForkBothReturn,
    Hang,
    Quick,
    SpawnAndReturn,
    StdoutFlood,
    read_runs,
)
from helpers import FAST_TIMINGS, job_row, query, wait_until
from node_runner import NodeProcess

from oban_pro import Client, Config, InvalidPrefixError, Job, Oban, ValidationError
from oban_pro.job import MAX_ARGS_BYTES
from oban_pro.migrations import migrate_up
from oban_pro.queries import Queries
from oban_pro.term import decode_recorded

FAST = dict(FAST_TIMINGS, processes=2, imports=["chaos.chaos_workers"], shutdown_timeout=2.0)


def node(dsn: str, prefix: str, **overrides) -> Oban:
    opts = {**FAST, "queues": {"default": 10}, **overrides}
    return Oban(dsn=dsn, prefix=prefix, node="h1", name=f"hostile-{prefix}", **opts)


async def final(dsn, prefix, job_id, state, timeout=20.0):
    try:
        return await wait_until(
            lambda: (row := job_row(dsn, prefix, job_id)).get("state") == state and row,
            timeout=timeout,
            message=f"job {job_id} to be {state}",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it is {job_row(dsn, prefix, job_id)}") from None


def notify(dsn: str, prefix: str, event: str, payloads: list[str]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for payload in payloads:
            conn.execute("SELECT pg_notify(%s, %s)", (f"{prefix}.oban_{event}", payload))


def insert_raw(
    dsn: str,
    prefix: str,
    worker: str,
    args_sql: str = "'{}'::jsonb",
    max_attempts: int = 1,
    meta_sql: str = "'{}'::jsonb",
    queue: str = "default",
) -> int:
    """Insert a job row with raw SQL, as another engine or a hand-written INSERT would."""
    return query(
        dsn,
        f'INSERT INTO "{prefix}".oban_jobs (worker, queue, args, meta, max_attempts) '
        f"VALUES (%s, %s, {args_sql}, {meta_sql}, %s) RETURNING id",
        (worker, queue, max_attempts),
    )[0][0]


async def run_quick(oban: Oban, dsn: str, prefix: str, log: Path, n: int = 20) -> list[Job]:
    """Enqueue ``n`` ordinary jobs and wait for them (proof that the node still works)."""
    jobs = await oban.enqueue_many([Quick.new({"log": str(log)}) for _ in range(n)])
    for job in jobs:
        await final(dsn, prefix, job.id, "completed")
    return jobs


def no_restarts(oban: Oban) -> bool:
    stats = oban.runtime.worker_pool.stats
    return stats.ready == stats.processes and not any(stats.restarts.values())


# -- notifications ------------------------------------------------------------------------------


def _gzip_b64(data: bytes) -> str:
    return base64.b64encode(gzip.compress(data, mtime=0)).decode()


def _gzip_bomb() -> str:
    """The largest base64(gzip) of a JSON object (of spaces) that fits in one NOTIFY."""
    size = 4_000_000
    while True:
        text = _gzip_b64(b'{"queue":"default","pad":"' + b" " * size + b'"}')
        if len(text) < 7999:
            return text
        size = int(size * 0.9)


MALFORMED = {
    "garbage": "definitely not json",
    "empty": "",
    "truncated json": '{"queue": "default"',
    "json array": '["default"]',
    "json string": '"default"',
    "json number": "42",
    "json null": "null",
    "NaN": '{"queue": NaN}',
    "bad base64 after H4sI": "H4sI!!!*not base64*",
    "bad base64 after Z:": "Z:%%%",
    "H4sI only (truncated gzip)": "H4sI",
    "base64 but not gzip": "H4sI" + base64.b64encode(b"\x00" * 30).decode(),
    "Z: base64 but not gzip": "Z:" + base64.b64encode(b'{"queue":"default"}').decode(),
    "truncated gzip": _gzip_b64(b'{"queue":"default"}')[:20],
    "gzip of an array": _gzip_b64(b'["default"]'),
    "Z: gzip of garbage": "Z:" + _gzip_b64(b"\xff\xfe not json"),
    "gzip of non-UTF-8": _gzip_b64(b'{"queue":"\xff\xfe"}'),
    "gzip with trailing junk": _gzip_b64(b'{"queue":"default"}') + "AAAA",
    "gzip bomb": _gzip_bomb(),
    "Z: gzip bomb": "Z:" + _gzip_bomb()[:7990],
    "7999 bytes of junk": "x" * 7999,
    "7999 bytes of nesting": "[" * 7999,
    "deeply nested object": '{"a":' * 1300 + "1" + "}" * 1300,
}


async def test_malformed_notifications_are_ignored_with_a_log_line(
    oban_dsn, oban_prefix, tmp_path, caplog
):
    """Every undecodable payload on the insert and signal channels is logged and dropped;
    decodable payloads with hostile fields change nothing; afterwards the listener still works:
    a new job is picked up by its insert notice (the poll is 30 s) within a few seconds."""
    caplog.set_level(logging.INFO, logger="oban_pro")
    bomb = MALFORMED["gzip bomb"]
    assert len(bomb) < 8000 and len(gzip.decompress(base64.b64decode(bomb))) > 1_000_000
    hostile_signals = [
        {"action": "pause", "queue": "default", "ident": "someone.else"},
        {"action": "pause", "queue": ["default"]},
        {"action": "pause", "queue": {"name": "default"}},
        {"action": "scale", "queue": "default", "limit": 0},
        {"action": "scale", "queue": "default", "limit": -5},
        {"action": "scale", "queue": "default", "limit": "9"},
        {"action": "scale", "queue": "default", "limit": 1e308},
        {"action": "scale", "queue": "default", "limit": True},
        {"action": "pkill", "job_id": "1 OR 1=1"},
        {"action": "pkill", "job_id": None},
        {"action": "explode", "queue": "*"},
        {"action": None},
        {"queue": "*"},
        {},
    ]
    hostile_inserts = [
        {"queue": 123},
        {"queue": None},
        {"queue": ["default"]},
        {"queue": "nope"},
        {"queue": "default", "pad": "x" * 7900},
        {},
    ]
    async with node(oban_dsn, oban_prefix, poll_interval=30.0) as oban:
        log = tmp_path / "runs"
        await run_quick(oban, oban_dsn, oban_prefix, log, n=2)
        caplog.clear()
        for event in ("insert", "signal", "leader", "gossip"):
            notify(oban_dsn, oban_prefix, event, list(MALFORMED.values()))
        notify(oban_dsn, oban_prefix, "signal", [json.dumps(p) for p in hostile_signals])
        notify(oban_dsn, oban_prefix, "insert", [json.dumps(p) for p in hostile_inserts])

        def ignored() -> list[str]:
            return [
                r.getMessage()
                for r in caplog.records
                if r.levelno >= logging.WARNING and "malformed" in r.getMessage()
            ]

        expected = 4 * len(MALFORMED)
        await wait_until(
            lambda: len(ignored()) >= expected,
            timeout=20,
            message=f"{expected} 'ignored malformed' log lines",
        )
        messages = ignored()
        assert len(messages) == expected, messages
        # each line says what was wrong, and never dumps a whole 8 kB payload into the log
        assert all(len(m) < 1000 for m in messages), [m for m in messages if len(m) >= 1000]
        assert any("gzip" in m for m in messages) and any("base64" in m for m in messages)
        assert any("more than" in m for m in messages), "the gzip bomb is refused by size"
        assert any("must be an object" in m for m in messages)
        # hostile-but-decodable signals changed nothing
        state = oban.check_queue("default")
        assert state["limit"] == 10 and state["paused"] is False, state
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [
            r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR
        ]
        # the listener still works: a new job runs at once, woken by its insert notice
        started = time.monotonic()
        job = await oban.enqueue(Quick.new({"log": str(log)}))
        await final(oban_dsn, oban_prefix, job.id, "completed", timeout=10)
        assert time.monotonic() - started < 5.0, "woken by the notification, not the 30 s poll"
        assert oban.runtime.notifier.connected and no_restarts(oban)


async def test_pkill_for_a_job_this_node_does_not_run(oban_dsn, oban_prefix, tmp_path):
    """pkill signals naming jobs that are not running here (unknown, finished, absurd ids)
    leave the running job and its worker process alone."""
    log, release = tmp_path / "runs", tmp_path / "release"
    async with node(oban_dsn, oban_prefix) as oban:
        done = (await run_quick(oban, oban_dsn, oban_prefix, log, n=1))[0]
        running = await oban.enqueue(Hang.new({"log": str(log), "release": str(release)}))
        await final(oban_dsn, oban_prefix, running.id, "executing")
        await wait_until(lambda: running.id in oban.check_queue("default")["running"])
        pids = oban.runtime.worker_pool.pids()
        payloads = [
            {"action": "pkill", "job_id": job_id}
            for job_id in (987654321, done.id, 2**80, -1, 0, running.id + 1)
        ]
        # a last signal we can observe: once applied, every pkill before it was handled
        payloads.append({"action": "scale", "queue": "default", "limit": 7, "ident": "any"})
        notify(oban_dsn, oban_prefix, "signal", [json.dumps(p) for p in payloads])
        await wait_until(lambda: oban.check_queue("default")["limit"] == 7, timeout=10)
        assert running.id in oban.check_queue("default")["running"]
        assert job_row(oban_dsn, oban_prefix, running.id)["state"] == "executing"
        assert oban.runtime.worker_pool.pids() == pids and no_restarts(oban)
        release.touch()
        row = await final(oban_dsn, oban_prefix, running.id, "completed")
        assert row["attempt"] == 1 and row["errors"] == []
        assert job_row(oban_dsn, oban_prefix, done.id)["state"] == "completed"


# -- job rows -------------------------------------------------------------------------------------


async def test_args_that_are_not_a_json_object(oban_dsn, oban_prefix, tmp_path):
    """Rejected at the edge by Job validation; inserted with raw SQL, each such job fails with an
    error naming the problem, and the node, its workers and other jobs are untouched."""
    log = tmp_path / "runs"
    for bad in ([1, 2], "str", 42, {1: "int key"}, {"x": float("nan")}, {"x": object()}):
        with pytest.raises(ValidationError) as err:
            Job(Quick._worker_name, args=bad)
        assert err.value.field == "args"
    cases = {
        "'[1,2]'::jsonb": "args must be a JSON object, got list",
        "'\"str\"'::jsonb": "args must be a JSON object, got str",
        "'42'::jsonb": "args must be a JSON object, got int",
        "'null'::jsonb": "args must be a JSON object, got NoneType",
        "'true'::jsonb": "args must be a JSON object, got bool",
    }
    ids = {sql: insert_raw(oban_dsn, oban_prefix, Quick._worker_name, sql) for sql in cases}
    nested = insert_raw(
        oban_dsn,
        oban_prefix,
        Quick._worker_name,
        "('{\"a\":' || repeat('[', 5000) || repeat(']', 5000) || '}')::jsonb",
    )
    meta_array = insert_raw(oban_dsn, oban_prefix, Quick._worker_name, meta_sql="'[1]'::jsonb")
    async with node(oban_dsn, oban_prefix) as oban:
        others = await run_quick(oban, oban_dsn, oban_prefix, log)
        for sql, text in cases.items():
            row = await final(oban_dsn, oban_prefix, ids[sql], "discarded")
            error = row["errors"][-1]["error"]
            assert text in error and f"job {ids[sql]}" in error, (sql, error)
            assert "Traceback" not in error, error
        row = await final(oban_dsn, oban_prefix, nested, "discarded")
        assert "could not be built from its row" in row["errors"][-1]["error"], row["errors"]
        assert "recursion" in row["errors"][-1]["error"], row["errors"]
        row = await final(oban_dsn, oban_prefix, meta_array, "discarded")
        assert "meta must be a JSON object, got list" in row["errors"][-1]["error"]
        assert no_restarts(oban)
    assert all(job_row(oban_dsn, oban_prefix, j.id)["attempt"] == 1 for j in others)


def test_worker_new_rejects_args_that_are_not_an_object():
    """``Worker.new(args)`` is the usual edge: it must refuse what ``Job`` refuses, with the
    same ValidationError naming ``args`` (not a TypeError from ``dict()``, and never by
    silently turning a list of pairs or an empty list into an object)."""
    for bad in ([1, 2], "str", 42, [("a", 1)], [], ""):
        with pytest.raises(ValidationError) as err:
            Quick.new(bad)
        assert err.value.field == "args", bad


async def test_unknown_and_absurd_worker_names(oban_dsn, oban_prefix, tmp_path):
    log = tmp_path / "runs"
    long_name = "chaos.no_such_module." + "W" * (127 - len("chaos.no_such_module."))
    assert len(long_name) == 127
    names = [
        "no.such.Worker",
        long_name,
        "os.system",  # importable, callable, not a worker: never called
        "builtins.exec",
        "subprocess.Popen",
        "chaos.chaos_workers.read_runs",
        "chaos.chaos_workers",
        "x'; DROP TABLE oban_jobs; --",
        "Quick",
        "a\nb",  # control characters are refused by Job, but raw SQL can store them
        "a..b",
        "😈.Worker",
    ]
    # the edge: too long, blank, control characters
    for bad in ("x" * 128, "", "   ", "a\nb", "a\x00b", 42):
        with pytest.raises(ValidationError) as err:
            Job(bad)
        assert err.value.field == "worker"
    # the database refuses what Oban's check constraints refuse
    for bad in ("x" * 128, ""):
        with pytest.raises(psycopg.errors.CheckViolation):
            insert_raw(oban_dsn, oban_prefix, bad)
    ids = {name: insert_raw(oban_dsn, oban_prefix, name) for name in names}
    async with node(oban_dsn, oban_prefix) as oban:
        others = await run_quick(oban, oban_dsn, oban_prefix, log)
        for name, job_id in ids.items():
            row = await final(oban_dsn, oban_prefix, job_id, "discarded")
            error = row["errors"][-1]["error"]
            assert f"unknown worker {name!r}" in error, (name, error)
            assert "Traceback" not in error, error
        assert no_restarts(oban)
    assert query(oban_dsn, f'SELECT count(*) FROM "{oban_prefix}".oban_jobs')[0][0] == len(ids) + 20
    assert all(job_row(oban_dsn, oban_prefix, j.id)["attempt"] == 1 for j in others)


async def test_row_with_null_meta(oban_dsn, oban_prefix, tmp_path):
    """``oban_jobs.meta`` is nullable in Oban's schema (``meta jsonb DEFAULT '{}'``): a row
    written with NULL meta runs like one with ``{}``, and the queue keeps working."""
    log = tmp_path / "runs"
    null_meta = insert_raw(oban_dsn, oban_prefix, Quick._worker_name, meta_sql="NULL")
    async with node(oban_dsn, oban_prefix) as oban:
        row = await final(oban_dsn, oban_prefix, null_meta, "completed", timeout=10)
        assert row["attempt"] == 1
        await run_quick(oban, oban_dsn, oban_prefix, log)
        assert no_restarts(oban)


async def test_worker_names_that_break_name_resolution(oban_dsn, oban_prefix, tmp_path):
    """Names on which importing itself raises something other than ImportError: each job
    fails with an error naming the worker; the queue keeps running other jobs."""
    log = tmp_path / "runs"
    names = [".", "..", ".relative.Worker", "chaos.boom_on_import.Worker"]
    ids = {name: insert_raw(oban_dsn, oban_prefix, name) for name in names}
    async with node(oban_dsn, oban_prefix) as oban:
        for name, job_id in ids.items():
            row = await final(oban_dsn, oban_prefix, job_id, "discarded", timeout=10)
            assert f"unknown worker {name!r}" in row["errors"][-1]["error"], row["errors"]
        await run_quick(oban, oban_dsn, oban_prefix, log)
        assert no_restarts(oban)


async def test_worker_module_named_by_a_row_is_never_imported_by_the_coordinator(
    oban_dsn, oban_prefix, tmp_path, monkeypatch
):
    """A job row naming a module outside ``imports`` must not make the coordinator import it:
    import-time code is job code (design.md invariant 5: the parent never blocks on job code).
    Here the module is only importable by the coordinator's process and takes 2 s to import;
    the worker processes report it unknown, and the event loop never stalls."""
    module = "hostile_slow_import_" + oban_prefix
    marker = tmp_path / "imported"
    (tmp_path / f"{module}.py").write_text(
        "import pathlib, time\n"
        f"pathlib.Path({str(marker)!r}).write_text('imported')\n"
        "time.sleep(2)\n"
        "class Worker:\n"
        "    def process(self, job):\n"
        "        return None\n"
    )
    async with node(oban_dsn, oban_prefix) as oban:
        await run_quick(oban, oban_dsn, oban_prefix, tmp_path / "runs", n=2)
        # this process only, once its worker processes run: they cannot import the module
        monkeypatch.syspath_prepend(str(tmp_path))
        gaps: list[float] = []

        async def ticker() -> None:
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.02)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        try:
            job = await oban.enqueue(Job(f"{module}.Worker", max_attempts=1))
            row = await final(oban_dsn, oban_prefix, job.id, "discarded", timeout=15)
        finally:
            tick.cancel()
        assert f"unknown worker '{module}.Worker'" in row["errors"][-1]["error"]
        imported = module in sys.modules or marker.exists()
        assert (imported, round(max(gaps), 1) >= 1.0) == (False, False), (
            f"imported by the coordinator: {imported}; longest event-loop stall {max(gaps):.2f}s"
        )


async def test_very_large_args(oban_dsn, oban_prefix, tmp_path):
    """Over MAX_ARGS_BYTES is refused at the edge with the size in the message. A 10 MB row
    written by someone else (raw SQL) runs like any other job, with all of its args, while the
    node keeps running other jobs and heartbeating."""
    log = tmp_path / "runs"
    with pytest.raises(ValidationError) as err:
        ArgsSize.new({"blob": "x" * (MAX_ARGS_BYTES + 1)})
    assert err.value.field == "args" and str(MAX_ARGS_BYTES) in str(err.value)
    size = 10 * 1024 * 1024
    big = [
        insert_raw(
            oban_dsn,
            oban_prefix,
            ArgsSize._worker_name,
            f"jsonb_build_object('blob', repeat('x', {size}), 'n', {n})",
            max_attempts=3,
        )
        for n in range(3)
    ]
    async with node(oban_dsn, oban_prefix) as oban:
        await run_quick(oban, oban_dsn, oban_prefix, log, n=50)
        for job_id in big:
            row = await final(oban_dsn, oban_prefix, job_id, "completed", timeout=60)
            assert decode_recorded(row["meta"]["return"]) == size
            assert row["attempt"] == 1
        beats = query(
            oban_dsn,
            f"SELECT extract(epoch FROM timezone('UTC', now()) - updated_at) "
            f'FROM "{oban_prefix}".oban_producers',
        )
        assert [float(b[0]) < 3.0 for b in beats] == [True]
        assert no_restarts(oban)


# -- names ---------------------------------------------------------------------------------------

HOSTILE_QUEUES = [
    "q'; drop table x; --",
    "dots.and spaces \"double\" 'single'",
    "$1 %s %(x)s {p} {{}} \\ ; --",
    "ünïcödé ☃ 😈",
    "q" * 127,
]


async def test_hostile_queue_names_are_plain_data(oban_dsn, oban_prefix, tmp_path):
    """Queue names with quotes, dots, spaces and SQL: enqueued, served, scaled, paused and
    resumed by signal like any other; the table they name survives."""
    log = tmp_path / "runs"
    query(oban_dsn, f'CREATE TABLE "{oban_prefix}".x (id int)')
    query(oban_dsn, "CREATE TABLE IF NOT EXISTS public.x (id int)")
    for bad in ("q" * 128, "", "  ", "a\nb", "tab\there"):
        with pytest.raises((ValidationError, ValueError)):
            Config(prefix=oban_prefix, queues={bad: 1})
        with pytest.raises(ValidationError):
            Quick.new({}, queue=bad)
    queues = {name: 2 for name in HOSTILE_QUEUES}
    async with node(oban_dsn, oban_prefix, queues=queues) as oban:
        jobs = await oban.enqueue_many(
            [Quick.new({"log": str(log)}, queue=q) for q in HOSTILE_QUEUES for _ in range(5)]
        )
        for job in jobs:
            await final(oban_dsn, oban_prefix, job.id, "completed")
        assert sorted(
            r[0] for r in query(oban_dsn, f'SELECT queue FROM "{oban_prefix}".oban_producers')
        ) == sorted(HOSTILE_QUEUES)
        # signals naming them travel as JSON and reach the right producer
        other = Oban(dsn=oban_dsn, prefix=oban_prefix, name=f"client-{oban_prefix}")
        try:
            for i, queue in enumerate(HOSTILE_QUEUES):
                await other.scale_queue(queue, limit=3 + i)
                await wait_until(
                    lambda q=queue, n=3 + i: oban.check_queue(q)["limit"] == n,
                    timeout=10,
                    message=f"scale of {queue!r}",
                )
            await other.pause_queue(HOSTILE_QUEUES[0])
            await wait_until(lambda: oban.check_queue(HOSTILE_QUEUES[0])["paused"], timeout=10)
            assert not any(oban.check_queue(q)["paused"] for q in HOSTILE_QUEUES[1:])
            paused_job = await oban.enqueue(Quick.new({"log": str(log)}, queue=HOSTILE_QUEUES[0]))
            await other.resume_queue(HOSTILE_QUEUES[0])
            await final(oban_dsn, oban_prefix, paused_job.id, "completed")
        finally:
            await other.stop()
    for table in (f'"{oban_prefix}".x', "public.x"):
        assert query(oban_dsn, f"SELECT count(*) FROM {table}") == [(0,)]
    rows = query(oban_dsn, f'SELECT queue, count(*) FROM "{oban_prefix}".oban_jobs GROUP BY 1')
    assert dict(rows) == {q: 5 + (q == HOSTILE_QUEUES[0]) for q in HOSTILE_QUEUES}


HOSTILE_PREFIXES = [
    "x'; drop table x; --",
    "a.b",
    "with space",
    'quo"te',
    "",
    " ",
    "1abc",
    "a" * 64,
    "public;",
    "ünï",
    "a-b",
    "x\x00",
    "public.oban_jobs",
    None,
    42,
]


async def test_hostile_prefixes_are_rejected(oban_dsn):
    schemas = query(oban_dsn, "SELECT count(*) FROM pg_namespace")
    makers = (
        lambda bad: Oban(dsn=oban_dsn, prefix=bad, name="hostile-prefix"),
        lambda bad: Oban(dsn=oban_dsn, prefix=bad, queues={"default": 1}, name="hostile-prefix"),
        lambda bad: Config(prefix=bad),
        lambda bad: Queries(bad),
        lambda bad: Client(oban_dsn, prefix=bad),
        lambda bad: migrate_up(oban_dsn, prefix=bad),
    )
    for bad in HOSTILE_PREFIXES:
        for i, make in enumerate(makers):
            if bad is None and i < 2:
                continue  # Oban(prefix=None) means the default prefix, as in Oban.py (below)
            with pytest.raises(InvalidPrefixError) as err:
                make(bad)
            assert err.value.field == "prefix"
    assert Oban(dsn=oban_dsn, prefix=None, name="hostile-prefix").config.prefix == "public"
    assert query(oban_dsn, "SELECT count(*) FROM pg_namespace") == schemas
    # the CLI refuses it with a usage error naming the field, before touching anything
    for bad in ("x'; drop table x; --", "a.b", "with space"):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "oban_pro",
                "start",
                "--dsn",
                oban_dsn,
                "--prefix",
                bad,
                "--queues",
                "default:1",
                "--processes",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2, (bad, proc.returncode, proc.stderr[-2000:])
        assert "prefix" in proc.stderr and repr(bad) in proc.stderr, proc.stderr


# -- the database role ---------------------------------------------------------------------------


async def test_node_needs_only_the_documented_grants(oban_dsn, oban_prefix, tmp_path):
    """README "Database role": a node runs with CONNECT, USAGE on the schema, SELECT/INSERT/
    UPDATE/DELETE on oban_jobs, oban_producers, oban_leaders and USAGE on the id sequence; no
    superuser. Exercised here: fetch and ack, retry and staging, leadership, lifeline rescue
    and dead-producer cleanup, pruning, signals and notifications."""
    from psycopg.conninfo import make_conninfo

    role = f"oban_role_{oban_prefix}"
    p = f'"{oban_prefix}"'
    try:
        query(oban_dsn, f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE')
    except psycopg.Error as exc:
        pytest.skip(f"cannot create a role on this server: {exc}")
    try:
        database = query(oban_dsn, "SELECT current_database()")[0][0]
        query(oban_dsn, f'GRANT CONNECT ON DATABASE "{database}" TO "{role}"')
        query(oban_dsn, f'GRANT USAGE ON SCHEMA {p} TO "{role}"')
        query(oban_dsn, f"GRANT SELECT, INSERT, UPDATE, DELETE ON {p}.oban_jobs, "
                        f'{p}.oban_producers, {p}.oban_leaders, {p}.oban_rate_limits '
                        f'TO "{role}"')  # fmt: skip
        query(oban_dsn, f'GRANT USAGE ON SEQUENCE {p}.oban_jobs_id_seq TO "{role}"')
        dsn = make_conninfo(oban_dsn, user=role)
        assert query(dsn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") == [
            (False,)
        ]
        # an orphan for the lifeline: executing under a producer that stopped heartbeating
        hour_ago = "timezone('UTC', now()) - interval '1 hour'"
        stale = query(
            oban_dsn,
            f"INSERT INTO {p}.oban_producers (uuid, name, node, queue, meta, started_at, "
            f"updated_at) VALUES (gen_random_uuid(), 'x', 'gone', 'default', "
            f"'{{\"heartbeat_ttl\": 1}}', {hour_ago}, "
            f"{hour_ago}) RETURNING uuid::text",
        )[0][0]
        orphan = query(
            oban_dsn,
            f"INSERT INTO {p}.oban_jobs (worker, state, attempt, attempted_at, attempted_by) "
            f"VALUES (%s, 'executing', 1, timezone('UTC', now()), ARRAY['gone', %s]) RETURNING id",
            (Quick._worker_name, stale),
        )[0][0]
        log = tmp_path / "runs"
        async with node(dsn, oban_prefix, prune_interval=0.5, prune_max_age=2.0) as oban:
            await wait_until(lambda: oban.is_leader, timeout=10, message="leadership")
            quick = await run_quick(oban, dsn, oban_prefix, log, n=5)
            row = await final(dsn, oban_prefix, orphan, "completed")
            assert row["meta"]["rescued"] == 1
            await wait_until(lambda: not query(dsn, f"SELECT 1 FROM {p}.oban_producers "
                                                    f"WHERE uuid::text = %s", (stale,)),
                             timeout=10, message="the dead producer row to be deleted")  # fmt: skip
            later = await oban.enqueue(Quick.new({"log": str(log)}, schedule_in=0.5))
            await final(dsn, oban_prefix, later.id, "completed")
            await oban.pause_queue("default")
            await oban.resume_queue("default")
            await wait_until(lambda: all(not job_row(dsn, oban_prefix, j.id) for j in quick),
                             timeout=15, message="completed jobs to be pruned")  # fmt: skip
    finally:
        query(oban_dsn, f'DROP OWNED BY "{role}"')
        query(oban_dsn, f'DROP ROLE "{role}"')


# -- hostile job code ----------------------------------------------------------------------------


def _pump(stream, counter: list[int]) -> None:
    while chunk := stream.read(1 << 20):
        counter[0] += len(chunk)


@pytest.mark.reliability
def test_job_flooding_stdout_does_not_disturb_the_node(oban_dsn, oban_prefix, tmp_path):
    """A job writes 200 MiB to stdout. The worker processes' stdout is the node's stdout
    (here a pipe read by a log collector): the flood goes there in full, the job completes,
    and meanwhile the node runs other jobs and keeps heartbeating."""
    log = tmp_path / "runs"
    node_proc = NodeProcess(
        oban_dsn, oban_prefix, "flood", tmp_path, processes=2, stdout=subprocess.PIPE
    )
    counted = [0]
    try:
        node_proc.start()
        pump = threading.Thread(target=_pump, args=(node_proc.proc.stdout, counted), daemon=True)
        pump.start()
        node_proc.wait_ready()
        with Client(oban_dsn, prefix=oban_prefix) as client:
            flood = client.enqueue(StdoutFlood.new({"log": str(log), "mb": 200}))
            _wait(lambda: counted[0] > 10 * 2**20, 30, "the flood to start")
            quick = client.enqueue_many([Quick.new({"log": str(log)}) for _ in range(50)])
            _wait(
                lambda: all(
                    job_row(oban_dsn, oban_prefix, j.id)["state"] == "completed" for j in quick
                ),
                30,
                "50 jobs beside the flood",
            )
            row = _wait(
                lambda: (
                    (r := job_row(oban_dsn, oban_prefix, flood.id))["state"] == "completed" and r
                ),
                60,
                "the flood job to complete",
            )
        assert decode_recorded(row["meta"]["return"]) == 200
        _wait(lambda: counted[0] >= 200 * 2**20, 30, "200 MiB to reach the collector")
        assert node_proc.proc.poll() is None
        assert "Traceback" not in node_proc.log_text()
    finally:
        node_proc.stop()


@pytest.mark.reliability
def test_job_blocked_on_a_full_stdout_pipe_stalls_only_itself(oban_dsn, oban_prefix, tmp_path):
    """Nobody reads the node's stdout: the flooding job blocks in write() once the pipe is
    full. Only that job is stuck: the coordinator (which logs to stderr) keeps fetching,
    acking and heartbeating, the other worker runs other jobs, and the job timeout frees the
    stuck worker."""
    log = tmp_path / "runs"
    node_proc = NodeProcess(
        oban_dsn,
        oban_prefix,
        "stuck",
        tmp_path,
        processes=2,
        stdout=subprocess.PIPE,
        settings={"job_timeout": 4.0},
    )
    try:
        node_proc.start()
        node_proc.wait_ready()
        with Client(oban_dsn, prefix=oban_prefix) as client:
            flood = client.enqueue(StdoutFlood.new({"log": str(log), "mb": 50}))
            _wait(lambda: read_runs(log), 15, "the flood job to start")
            quick = client.enqueue_many([Quick.new({"log": str(log)}) for _ in range(50)])
            _wait(
                lambda: all(
                    job_row(oban_dsn, oban_prefix, j.id)["state"] == "completed" for j in quick
                ),
                30,
                "50 jobs beside the stuck one",
            )
            beats = query(
                oban_dsn,
                f"SELECT extract(epoch FROM timezone('UTC', now()) - "
                f'updated_at) FROM "{oban_prefix}".oban_producers',
            )
            assert float(beats[0][0]) < 3.0
            row = _wait(
                lambda: (
                    (r := job_row(oban_dsn, oban_prefix, flood.id))["state"] == "retryable" and r
                ),
                30,
                "the stuck job to time out",
            )
        assert "timeout" in row["errors"][-1]["error"], row["errors"]
        assert node_proc.proc.poll() is None
    finally:
        node_proc.stop()


def _wait(check, timeout: float, message: str):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(0.05)
    return result


def _pid_from(path: Path) -> int:
    return int(path.read_text())


def _reap_later(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


async def test_job_that_spawns_a_lingering_subprocess(oban_dsn, oban_prefix, tmp_path):
    log, pidfile = tmp_path / "runs", tmp_path / "pid"
    async with node(oban_dsn, oban_prefix) as oban:
        job = await oban.enqueue(
            SpawnAndReturn.new({"log": str(log), "pidfile": str(pidfile), "seconds": 30})
        )
        try:
            row = await final(oban_dsn, oban_prefix, job.id, "completed")
            assert decode_recorded(row["meta"]["return"]) == _pid_from(pidfile)
            await run_quick(oban, oban_dsn, oban_prefix, log)
            assert no_restarts(oban)
        finally:
            if pidfile.exists():
                _reap_later(_pid_from(pidfile))


async def test_job_that_forks_a_lingering_grandchild_and_returns(oban_dsn, oban_prefix, tmp_path):
    """The grandchild holds every descriptor of the worker process (its pipes included) for 5 s
    after the job returned: the job completes, later jobs run in that worker, and stopping the
    node does not wait for the grandchild."""
    log, pidfile = tmp_path / "runs", tmp_path / "pid"
    oban = node(oban_dsn, oban_prefix, processes=1)
    await oban.start()
    try:
        job = await oban.enqueue(
            ForkAndReturn.new({"log": str(log), "pidfile": str(pidfile), "seconds": 5})
        )
        await final(oban_dsn, oban_prefix, job.id, "completed")
        await wait_until(pidfile.exists)
        quick = await run_quick(oban, oban_dsn, oban_prefix, log)
        worker_pid = oban.runtime.worker_pool.pids()[0]
        runs = {r[0]: r[2] for r in read_runs(log)}
        assert {runs[j.id] for j in quick} == {worker_pid}
        assert no_restarts(oban)
    finally:
        started = time.monotonic()
        await oban.stop()
        stop_took = time.monotonic() - started
        if pidfile.exists():
            _reap_later(_pid_from(pidfile))
    assert stop_took < 4.0, stop_took


async def test_job_whose_worker_process_exits_leaving_a_grandchild(oban_dsn, oban_prefix, tmp_path):
    """The worker process calls os._exit(0) mid-job while a forked grandchild still holds its
    pipes: the job fails at once with an error naming the exit, the pool is refilled, other
    jobs run."""
    log, pidfile = tmp_path / "runs", tmp_path / "pid"
    async with node(oban_dsn, oban_prefix) as oban:
        job = await oban.enqueue(
            ForkAndExit.new({"log": str(log), "pidfile": str(pidfile), "seconds": 20})
        )
        try:
            started = time.monotonic()
            row = await final(oban_dsn, oban_prefix, job.id, "retryable", timeout=15)
            assert time.monotonic() - started < 10, "not held up by the grandchild (20 s)"
            error = row["errors"][-1]["error"]
            assert "exited with code 0" in error, error
            await wait_until(lambda: oban.runtime.worker_pool.size == 2, message="pool back to 2")
            await run_quick(oban, oban_dsn, oban_prefix, log)
        finally:
            if pidfile.exists():
                _reap_later(_pid_from(pidfile))


async def test_job_that_forks_and_both_processes_return(oban_dsn, oban_prefix, tmp_path):
    """os.fork() in job code with both copies returning from process(): the copy is not a
    worker process the coordinator knows. The job completes once; every later job runs exactly
    once, in a known worker process; nothing crashes; stop() leaves nothing behind."""
    log, pidfile = tmp_path / "runs", tmp_path / "pid"
    oban = node(oban_dsn, oban_prefix, processes=1)
    await oban.start()
    forked: int | None = None
    try:
        worker_pid = oban.runtime.worker_pool.pids()[0]
        job = await oban.enqueue(ForkBothReturn.new({"log": str(log), "pidfile": str(pidfile)}))
        await final(oban_dsn, oban_prefix, job.id, "completed")
        await wait_until(pidfile.exists)
        forked = _pid_from(pidfile)
        quick = await oban.enqueue_many([Quick.new({"log": str(log)}) for _ in range(50)])
        for j in quick:
            await final(oban_dsn, oban_prefix, j.id, "completed")
        runs = read_runs(log)
        ran_in = {r[0]: r[2] for r in runs}
        assert len(runs) == 51 and len(ran_in) == 51, "every job ran exactly once"
        assert {ran_in[j.id] for j in quick} == {worker_pid}, (
            f"jobs ran in the forked copy {forked}: {sorted(set(ran_in.values()))}"
        )
        assert no_restarts(oban)
        # the copy left at once rather than lingering as a second reader of the job pipe
        await wait_until(
            lambda: _start_time(forked) is None, timeout=5, message=f"forked copy {forked} to exit"
        )
    finally:
        await oban.stop()
        if forked is not None:
            _reap_later(forked)


def _start_time(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])
