"""Small helpers shared by engine tests: wait for a condition, read job rows."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg


async def wait_until(
    check: Callable[[], Any | Awaitable[Any]],
    timeout: float = 20.0,
    interval: float = 0.02,
    message: str = "condition",
) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)


def wait_until_sync(
    check: Callable[[], Any],
    timeout: float = 20.0,
    interval: float = 0.02,
    message: str = "condition",
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def query(dsn: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def states(dsn: str, prefix: str) -> dict[str, int]:
    rows = query(dsn, f'SELECT state::text, count(*) FROM "{prefix}".oban_jobs GROUP BY 1')
    return dict(rows)


def job_row(dsn: str, prefix: str, job_id: int) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(
            f"SELECT id, state::text AS state, attempt, max_attempts, to_jsonb(errors) AS errors, "
            f"meta, attempted_by, scheduled_at, completed_at, discarded_at, cancelled_at "
            f'FROM "{prefix}".oban_jobs WHERE id = %s',
            (job_id,),
        )
        names = [d.name for d in cur.description]
        row = cur.fetchone()
        return dict(zip(names, row, strict=True)) if row else {}


def execution_log(path: Any) -> list[tuple[int, int, int]]:
    """Lines written by ``engine_workers.log_execution``: (job id, attempt, pid)."""
    try:
        text = open(path).read()
    except FileNotFoundError:
        return []
    return [tuple(map(int, line.split())) for line in text.splitlines() if line.strip()]  # type: ignore[misc]


#: Short liveness and polling settings for in-process test nodes (``Oban(**FAST_TIMINGS, ...)``).
FAST_TIMINGS: dict[str, float] = {
    "poll_interval": 0.2,
    "stage_interval": 0.2,
    "heartbeat_interval": 0.5,
    "heartbeat_ttl": 3.0,
    "lifeline_interval": 0.5,
    "leader_ttl": 3.0,
    "gossip_interval": 1.0,
}


def import_bench(name: str):
    """Import ``bench.<name>`` from the repository root without leaking the PYTHONPATH that
    importing ``bench`` sets for its worker processes into the other tests' environment."""
    import importlib
    import os
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    saved = os.environ.get("PYTHONPATH")
    try:
        return importlib.import_module(f"bench.{name}")
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


class OneConnection:
    """A Store's connection source that always hands out ``conn`` (tests of what one
    connection does: its transaction mode, statements the server forgot)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @contextlib.asynccontextmanager
    async def connection(self) -> Any:
        yield self.conn


async def fetch_limited(source: Any, queries: Any, limits: Any, params: dict[str, Any]) -> list:
    """The Store's limited fetch on ``source`` (a pool or :class:`OneConnection`): the jobs."""
    from oban_pro.store import Store

    jobs, _status = await Store(source, queries).fetch_limited(
        limits, params, status_when_short=False, now=0.0
    )
    return jobs


def generic_plan(dsn: str, sql: str, values: dict[str, Any]) -> dict[str, Any]:
    """The root of the EXPLAIN ANALYZE of ``sql``'s generic plan (the plan PostgreSQL keeps for
    a prepared statement), run with ``values`` and rolled back."""
    from oban_pro.prepared import Prepared

    prepared = Prepared(sql)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute(f"PREPARE generic_statement AS {prepared.text}")
        placeholders = ", ".join(["%s"] * len(prepared.params))
        with conn.transaction(force_rollback=True):
            cur = psycopg.ClientCursor(conn).execute(
                f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE generic_statement({placeholders})",
                [values[name] for name in prepared.params],
            )
            return cur.fetchone()[0][0]["Plan"]  # type: ignore[index]


def plan_nodes(node: dict[str, Any]) -> Any:
    """Every node of an EXPLAIN (FORMAT JSON) plan, the root first."""
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)
