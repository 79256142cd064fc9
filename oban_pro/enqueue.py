"""Inserting jobs: one round trip per batch, insert notices in the same transaction.

The steps are written once as a generator of ``(sql, params)`` that receives each statement's
rows, and run by a sync or an async driver, so ``enqueue`` from asyncio code and
``enqueue_sync`` from plain code share every line of logic.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Mapping, Sequence
from datetime import UTC
from typing import Any

import msgspec
from psycopg.rows import tuple_row

from .job import Job
from .naming import channel
from .payloads import encode_payload
from .queries import Queries
from .unique import UniqueOptions, lock_key

Step = tuple[str, dict[str, Any]]

# Job fields were validated (and NaN refused) when each Job was built; msgspec encodes fast.
_encode = msgspec.json.Encoder().encode
Steps = Generator[Step, list[tuple[Any, ...]], list[Job]]


def jobs_list(jobs_or_first: Iterable[Job] | Job, rest: Sequence[Job]) -> list[Job]:
    """``enqueue_many``'s arguments (an iterable of jobs, or jobs) as a list."""
    if isinstance(jobs_or_first, Job):
        return [jobs_or_first, *rest]
    if rest:
        raise TypeError(
            "enqueue_many takes either one iterable of jobs or the jobs themselves, not both"
        )
    if isinstance(jobs_or_first, (str, bytes, Mapping)) or not isinstance(jobs_or_first, Iterable):
        raise TypeError(
            f"enqueue_many takes Job objects (from Worker.new(...)), got {jobs_or_first!r:.80}"
        )
    return list(jobs_or_first)


def insert_steps(queries: Queries, jobs: Sequence[Job]) -> Steps:
    """Yield the statements that insert ``jobs``; return the jobs with ids and states set."""
    for job in jobs:
        if not isinstance(job, Job):
            raise TypeError(f"enqueue takes Job objects (from Worker.new(...)), got {job!r}")
    plain = [job for job in jobs if not job.unique]
    unique = [job for job in jobs if job.unique]
    if plain:
        rows = yield queries.insert_jobs, _bulk_params(plain)
        for job, row in zip(plain, sorted(rows, key=lambda r: r[0]), strict=True):
            apply_row(job, row)
    for job in unique:
        yield from _insert_unique(queries, job)
    queues = sorted({job.queue for job in jobs if job.state == "available" and not job.conflict})
    if queues:
        payloads = [encode_payload({"queue": queue}) for queue in queues]
        yield (
            queries.notify_many,
            {"channel": channel(queries.prefix, "insert"), "payloads": payloads},
        )
    return list(jobs)


def _insert_unique(queries: Queries, job: Job) -> Generator[Step, list[tuple[Any, ...]], None]:
    options = UniqueOptions.parse(job.unique)  # type: ignore[arg-type]
    key = options.key_for(job.worker, job.queue, job.args, job.meta)
    yield queries.unique_lock, {"key": lock_key(key)}
    found = yield (
        queries.unique_find,
        {
            "uniq_key": key,
            "states": list(options.states),
            "period": options.period,
            **options.lookup(job.worker, job.queue, job.args, job.meta),
        },
    )
    if found:
        apply_row(job, found[0])
        job.conflict = True
        return
    job.meta = {**job.meta, "uniq_key": key}
    rows = yield queries.insert_jobs, _bulk_params([job])
    apply_row(job, rows[0])


def _bulk_params(jobs: Sequence[Job]) -> dict[str, Any]:
    return {"jobs": _encode([bulk_row(j) for j in jobs]).decode()}


def bulk_row(j: Job) -> tuple[Any, ...]:
    """One job as an element of INSERT_JOBS' JSON array."""
    return (
        j.queue,
        j.worker,
        msgspec.Raw(_encode(j.args)),
        msgspec.Raw(_encode(j.meta)),
        j.tags,
        j.max_attempts,
        j.priority,
        j.scheduled_at.astimezone(UTC).replace(tzinfo=None).isoformat() if j.scheduled_at else None,
        str(j.state),
    )


def apply_row(job: Job, row: tuple[Any, ...]) -> None:
    """Set the id, state and times the database gave ``job``."""
    job.id, job.state, inserted_at, scheduled_at = row
    job.inserted_at = inserted_at.replace(tzinfo=UTC)
    job.scheduled_at = scheduled_at.replace(tzinfo=UTC)


# An autocommit connection gets a transaction of its own so the steps are atomic. A connection
# that is not in autocommit mode belongs to a caller who commits or rolls back: the steps join
# that transaction (``conn.transaction()`` there would commit on exit, which is not ours to do).


def run_sync(conn: Any, steps: Steps) -> list[Job]:
    """Drive ``steps`` on a sync psycopg connection, inside one transaction."""
    if conn.autocommit:
        with conn.transaction():
            return _drive_sync(conn, steps)
    return _drive_sync(conn, steps)


def _drive_sync(conn: Any, steps: Steps) -> list[Job]:
    with conn.cursor(row_factory=tuple_row) as cur:
        try:
            sql, params = next(steps)
            while True:
                cur.execute(sql, params)
                rows = cur.fetchall() if cur.description else []
                sql, params = steps.send(rows)
        except StopIteration as done:
            return done.value


async def run_async(conn: Any, steps: Steps) -> list[Job]:
    """Drive ``steps`` on an async psycopg connection, inside one transaction."""
    if conn.autocommit:
        async with conn.transaction():
            return await _drive_async(conn, steps)
    return await _drive_async(conn, steps)


async def _drive_async(conn: Any, steps: Steps) -> list[Job]:
    async with conn.cursor(row_factory=tuple_row) as cur:
        try:
            sql, params = next(steps)
            while True:
                await cur.execute(sql, params)
                rows = await cur.fetchall() if cur.description else []
                sql, params = steps.send(rows)
        except StopIteration as done:
            return done.value


# -- connections callers pass as ``conn=`` ----------------------------------------------------
#
# As in Oban.py, ``conn`` may be a psycopg connection or cursor, or a SQLAlchemy session or
# connection on the psycopg driver (``postgresql+psycopg://``): the job is inserted on the
# psycopg connection underneath, inside the transaction the caller has open there.


def _driver_of(raw: Any) -> Any:
    driver = getattr(raw, "driver_connection", None) or getattr(raw, "dbapi_connection", None)
    if driver is None:
        return raw
    # SQLAlchemy's async adapters wrap the driver's connection once more.
    return getattr(driver, "_connection", None) or driver


def _not_psycopg(conn: Any, original: Any, kind: str) -> TypeError:
    return TypeError(
        f"conn= must be a psycopg {kind}Connection or {kind}Cursor, or a SQLAlchemy "
        f"{kind}Session/{kind}Connection using the psycopg driver (postgresql+psycopg://); got "
        f"{type(original).__module__}.{type(original).__qualname__}"
        + (f" (its driver connection is {type(conn).__qualname__})" if conn is not original else "")
    )


async def unwrap_async_conn(conn: Any) -> Any:
    """The psycopg ``AsyncConnection`` behind ``conn`` (see above); TypeError for others."""
    import psycopg

    original = conn
    if isinstance(conn, psycopg.AsyncCursor):
        conn = conn.connection
    if isinstance(conn, psycopg.AsyncConnection):
        return conn
    if hasattr(conn, "get_bind") and callable(getattr(conn, "connection", None)):
        conn = await conn.connection()  # SQLAlchemy AsyncSession -> AsyncConnection
    if hasattr(conn, "get_raw_connection"):
        conn = _driver_of(await conn.get_raw_connection())  # SQLAlchemy AsyncConnection
    if isinstance(conn, psycopg.AsyncConnection):
        return conn
    raise _not_psycopg(conn, original, "Async")


def unwrap_sync_conn(conn: Any) -> Any:
    """The psycopg ``Connection`` behind ``conn`` (a sync SQLAlchemy Session/Connection too)."""
    import psycopg

    original = conn
    if isinstance(conn, psycopg.Cursor):
        conn = conn.connection
    if isinstance(conn, psycopg.Connection):
        return conn
    if hasattr(conn, "get_bind") and callable(getattr(conn, "connection", None)):
        conn = conn.connection()  # SQLAlchemy Session -> Connection
    if hasattr(conn, "get_raw_connection") or hasattr(conn, "connection"):
        raw = conn.get_raw_connection() if hasattr(conn, "get_raw_connection") else conn.connection
        conn = _driver_of(raw)
    if isinstance(conn, psycopg.Connection):
        return conn
    raise _not_psycopg(conn, original, "")
