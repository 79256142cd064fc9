"""The Oban.py side of ``bench peer``: run by the Python >= 3.12 of the cached virtual
environment that holds the open-source ``oban`` package, never by the project's interpreter.

It loads :mod:`bench.measure` by file path (nothing else of this repository: ``oban_pro`` must
not be importable here, since Oban.py imports a module of that name as its extension hook), so
Oban.py is loaded, drained and timed by the very same lines as oban_pro.

Usage: ``python peer_obanpy.py MODE --dsn DSN --prefix PREFIX [--out FILE] ...`` with MODE one of
install, throughput, cpu, latency, enqueue_many, node. Results are written as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Running this file puts its folder first on sys.path; drop it so no bench module shadows anything.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

_spec = importlib.util.spec_from_file_location("bench_measure", HERE / "measure.py")
assert _spec is not None and _spec.loader is not None
measure = importlib.util.module_from_spec(_spec)
sys.modules["bench_measure"] = measure
_spec.loader.exec_module(measure)
_spec = importlib.util.spec_from_file_location("bench_node_commands", HERE / "node_commands.py")
assert _spec is not None and _spec.loader is not None
node_commands = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(node_commands)

from oban import Oban, worker  # noqa: E402

NODE = os.environ.get("BENCH_NODE", "?")


@worker(queue="bench")
class Noop:
    async def process(self, job):  # type: ignore[no-untyped-def]
        return None


@worker(queue="bench_cpu")
class Cpu:
    # Oban.py runs jobs as tasks on its one event loop: CPU-bound code holds it, as it would in
    # any application using it (no threads or processes are involved).
    async def process(self, job):  # type: ignore[no-untyped-def]
        measure.burn(int(job.args.get("rounds", 1000)))
        return None


@worker(queue="bench_latency")
class Stamp:
    async def process(self, job):  # type: ignore[no-untyped-def]
        measure.send_stamp(job.args["sock"], job.id, time.time())
        return None


@worker(queue="bench_long", max_attempts=5)
class Long:
    async def process(self, job):  # type: ignore[no-untyped-def]
        measure.log_line(job.args["log"], "start", job.id, NODE, os.getpid(), repr(time.time()))
        seconds = job.args["seconds"] if job.attempt <= 1 else job.args.get("rerun_seconds", 0.2)
        await asyncio.sleep(float(seconds))
        measure.log_line(job.args["log"], "end", job.id, NODE, os.getpid(), repr(time.time()))
        return None


@worker(queue="bench_io")
class AsyncSleep:
    async def process(self, job):  # type: ignore[no-untyped-def]
        await asyncio.sleep(float(job.args.get("seconds", 0.05)))
        return None


@worker(queue="bench_io")
class SyncSleep:
    # Blocking I/O as a sync library does it (time.sleep stands for a blocking socket call):
    # Oban.py runs job code on its one event loop, so this holds the loop for its duration.
    async def process(self, job):  # type: ignore[no-untyped-def]
        time.sleep(float(job.args.get("seconds", 0.05)))
        return None


WORKERS = {
    "noop": Noop, "cpu": Cpu, "stamp": Stamp, "long": Long,
    "async_sleep": AsyncSleep, "sync_sleep": SyncSleep,
}  # fmt: skip


def worker_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def insert_notice(prefix: str, queue: str) -> tuple[str, str]:
    """Oban.py's insert notification: channel ``<prefix>.oban_insert``, plain JSON payload."""
    return f"{prefix}.oban_insert", json.dumps({"queue": queue})


async def open_pool(dsn: str):  # type: ignore[no-untyped-def]
    return await Oban.create_pool(dsn)


_count = 0


async def start_oban(pool, prefix: str, queues: dict[str, int], **opts):  # type: ignore[no-untyped-def]
    global _count
    _count += 1
    oban = Oban(pool=pool, prefix=prefix, queues=queues, name=f"bench-{_count}", **opts)
    await oban.start()
    return oban


# -- modes ----------------------------------------------------------------------------------


async def install(args: argparse.Namespace) -> dict:
    """Oban.py's own installer (oban.schema.install) into a schema of its own."""
    import psycopg
    from oban.schema import install as install_schema
    from psycopg_pool import AsyncConnectionPool

    with psycopg.connect(args.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {measure.qp(args.prefix)}")
    # The installer also creates helper functions without a prefix: keep them in the schema.
    pool = AsyncConnectionPool(
        args.dsn,
        open=False,
        min_size=1,
        max_size=1,
        kwargs={"options": f"-c search_path={args.prefix}"},
    )
    await pool.open()
    try:
        await install_schema(pool, prefix=args.prefix)
    finally:
        await pool.close()
    from importlib.metadata import version

    return {"installed": True, "oban_version": version("oban"), "python": sys.version.split()[0]}


async def throughput(args: argparse.Namespace) -> dict:
    pool = await open_pool(args.dsn)
    try:
        cls = WORKERS[args.worker]

        async def start():  # type: ignore[no-untyped-def]
            return await start_oban(pool, args.prefix, {args.queue: args.limit})

        async def stop(oban) -> None:  # type: ignore[no-untyped-def]
            await oban.stop()

        return await measure.drain(
            args.dsn,
            args.prefix,
            args.queue,
            worker_name(cls),
            args.size,
            args=args.job_args,
            start_node=start,
            stop_node=stop,
            notify=insert_notice(args.prefix, args.queue),
        )
    finally:
        await pool.close()


async def latency(args: argparse.Namespace) -> dict:
    pool = await open_pool(args.dsn)
    try:
        conn = await measure.connect(args.dsn)
        await measure.truncate(conn, args.prefix)
        await conn.close()
        oban = await start_oban(pool, args.prefix, {"bench_latency": 10})
        try:

            async def enqueue(sock: str) -> int:
                job = await oban.enqueue(Stamp.new({"sock": sock}))  # type: ignore[attr-defined]
                return int(job.id)

            return await measure.latency_series(
                args.dsn, args.prefix, args.size, enqueue=enqueue, gap=args.gap
            )
        finally:
            await oban.stop()
    finally:
        await pool.close()


async def enqueue_many(args: argparse.Namespace) -> dict:
    pool = await open_pool(args.dsn)
    try:
        conn = await measure.connect(args.dsn)
        await measure.truncate(conn, args.prefix)
        oban = Oban(pool=pool, prefix=args.prefix, name="bench-client")  # a client: no queues
        jobs = [Noop.new({"i": i}) for i in range(args.size)]  # type: ignore[attr-defined]
        started = time.perf_counter()
        await oban.enqueue_many(jobs)
        elapsed = time.perf_counter() - started
        cur = await conn.execute(f"SELECT count(*) FROM {measure.qp(args.prefix)}.oban_jobs")
        row = await cur.fetchone()
        await conn.close()
        return {
            "jobs": args.size,
            "rows": int(row[0]),
            "seconds": elapsed,
            "rate": args.size / elapsed,
        }
    finally:
        await pool.close()


async def node(args: argparse.Namespace) -> dict:
    """A node for the rescue comparison; same stdin protocol as ``python -m bench.node``."""
    global NODE
    NODE = args.node
    pool = await open_pool(args.dsn)
    oban = await start_oban(
        pool,
        args.prefix,
        {args.queue: args.limit},
        node=args.node,
        lifeline={"interval": args.lifeline_interval, "rescue_after": args.rescue_after},
        shutdown_grace_period=1.0,
    )
    await node_commands.serve(oban, args.queue, args.node)
    await oban.stop()
    await pool.close()
    return {}


MODES = {
    "install": install,
    "throughput": throughput,
    "latency": latency,
    "enqueue_many": enqueue_many,
    "node": node,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="peer_obanpy.py")
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--out", default=None)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--queue", default="bench")
    parser.add_argument("--worker", default="noop", choices=sorted(WORKERS))
    parser.add_argument("--job-args", default="{}")
    parser.add_argument("--gap", type=float, default=0.02)
    parser.add_argument("--node", default="obanpy")
    parser.add_argument("--lifeline-interval", type=float, default=60.0)
    parser.add_argument("--rescue-after", type=float, default=300.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    result = asyncio.run(MODES[args.mode](args))
    if args.out:
        Path(args.out).write_text(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
