"""Looking at waiting jobs: :func:`all_enqueued`, :func:`assert_enqueued`,
:func:`refute_enqueued`, and :func:`reset_oban`.

Each helper has two forms:

- **Oban.py's** (no positional argument): async, finds the :class:`~oban_pro.Oban` instance by
  name (``oban="Oban"``, or pass the instance), and matches jobs in ``available``,
  ``scheduled`` or ``suspended`` by any job field, with Oban.py's rules: ``worker`` a class or
  its name, ``args`` a partial match on top-level keys, ``scheduled_in`` within a second of
  that far from now, any other field by equality. ``timeout`` waits for a match (or, to
  refute, watches that long). Jobs come newest first.
- **oban_pro's** (a DSN first): synchronous, needs no instance, filters ``worker``, ``queue``
  and ``args`` (JSON containment) in SQL over ``available`` and ``scheduled`` jobs, oldest
  first, and :func:`assert_enqueued` returns the matching jobs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, overload

import psycopg

from ..job import Job, scheduled_from_now
from ..operations import COLUMNS
from ..queries import Queries
from ..registry import worker_name

if TYPE_CHECKING:
    from ..oban import Oban

__all__ = [
    "SCHEDULED_IN_DELTA",
    "all_enqueued",
    "assert_enqueued",
    "find_instance",
    "refute_enqueued",
    "reset_oban",
]

#: Seconds a job's ``scheduled_at`` may be from the expected time to match ``scheduled_in``.
SCHEDULED_IN_DELTA = 1.0

#: Seconds between looks while a ``timeout`` runs.
POLL_INTERVAL = 0.01


def find_instance(oban: str | Oban) -> Oban:
    """The instance itself, or the one called ``oban`` (``NotRunningError`` if none is)."""
    from ..oban import Oban

    return Oban.get_instance(oban) if isinstance(oban, str) else oban


# -- all_enqueued ---------------------------------------------------------------------------


@overload
def all_enqueued(
    dsn: str,
    /,
    *,
    prefix: str = "public",
    worker: type | str | None = None,
    queue: str | None = None,
    args: Mapping[str, Any] | None = None,
) -> list[Job]: ...


@overload
def all_enqueued(
    *, oban: str | Oban = "Oban", **filters: Any
) -> Coroutine[Any, Any, list[Job]]: ...


def all_enqueued(
    dsn: str | None = None, /, *, oban: str | Oban = "Oban", **filters: Any
) -> list[Job] | Coroutine[Any, Any, list[Job]]:
    """Jobs waiting to run that match every filter (see the module's two forms).

    ``await all_enqueued(worker=EmailWorker, args={"to": "a@b"})`` (Oban.py's form), or
    ``all_enqueued(dsn, prefix=..., worker=..., queue=..., args=...)`` (oban_pro's).
    """
    if dsn is not None:
        return _all_enqueued_sql(dsn, **filters)
    return _all_enqueued(oban, filters)


async def _all_enqueued(oban: str | Oban, filters: Mapping[str, Any]) -> list[Job]:
    instance = find_instance(oban)
    wanted = _normalized(filters)
    jobs: list[Job] = await instance._run(_waiting_jobs_steps(instance.queries))
    return [job for job in jobs if _matches(job, wanted)]


def _waiting_jobs_steps(queries: Queries) -> Generator[Any, Any, list[Job]]:
    rows = yield queries.waiting_jobs, {}
    return [Job.from_row(dict(zip(COLUMNS, row, strict=True))) for row in rows]


def _normalized(filters: Mapping[str, Any]) -> dict[str, Any]:
    """The filters with a worker class turned into its name (as the message shows them)."""
    wanted = dict(filters)
    if "worker" in wanted and not isinstance(wanted["worker"], str):
        found = wanted["worker"]
        wanted["worker"] = getattr(found, "_worker_name", None) or worker_name(found)
    return wanted


def _matches(job: Job, filters: Mapping[str, Any]) -> bool:
    for key, expected in filters.items():
        if key == "args":
            if any(k not in job.args or job.args[k] != v for k, v in expected.items()):
                return False
        elif key == "scheduled_in":
            if not _scheduled_in(job, expected):
                return False
        elif getattr(job, key, None) != expected:
            return False
    return True


def _scheduled_in(job: Job, delay: timedelta | float) -> bool:
    if job.scheduled_at is None:
        return False
    drift = scheduled_from_now(delay) - job.scheduled_at
    return abs(drift.total_seconds()) <= SCHEDULED_IN_DELTA


def _all_enqueued_sql(
    dsn: str,
    *,
    prefix: str = "public",
    worker: type | str | None = None,
    queue: str | None = None,
    args: Mapping[str, Any] | None = None,
) -> list[Job]:
    name = _normalized({"worker": worker})["worker"] if worker is not None else None
    queries = Queries(prefix)
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            queries.enqueued_jobs,
            {
                "worker": name,
                "queue": queue,
                "args": json.dumps(dict(args)) if args is not None else None,
            },
        ).fetchall()
    return [Job.from_row(dict(zip(COLUMNS, row, strict=True))) for row in rows]


# -- assert / refute ------------------------------------------------------------------------


@overload
def assert_enqueued(dsn: str, /, **match: Any) -> list[Job]: ...


@overload
def assert_enqueued(
    *, oban: str | Oban = "Oban", timeout: float = 0, **filters: Any
) -> Coroutine[Any, Any, None]: ...


def assert_enqueued(
    dsn: str | None = None, /, *, oban: str | Oban = "Oban", timeout: float = 0, **filters: Any
) -> list[Job] | Coroutine[Any, Any, None]:
    """Fail (``AssertionError``) unless a waiting job matches the filters.

    ``await assert_enqueued(worker=EmailWorker, args={"to": "a@b"}, timeout=0.2)`` waits up to
    ``timeout`` seconds for one (Oban.py's form). ``assert_enqueued(dsn, prefix=..., **match)``
    checks once and returns the matching jobs (oban_pro's form).
    """
    if dsn is not None:
        return _assert_enqueued_sql(dsn, **filters)
    return _assert_enqueued(oban, timeout, filters)


async def _assert_enqueued(oban: str | Oban, timeout: float, filters: dict[str, Any]) -> None:
    async def found() -> bool:
        return bool(await _all_enqueued(oban, filters))

    if not await _poll_until(found, timeout):
        waiting = await _all_enqueued(oban, {})
        raise AssertionError(
            f"Expected a job matching: {_normalized(filters)} to be enqueued"
            f"{_within(timeout)}. Instead found:\n\n{_listing(waiting)}"
        )


@overload
def refute_enqueued(dsn: str, /, **match: Any) -> None: ...


@overload
def refute_enqueued(
    *, oban: str | Oban = "Oban", timeout: float = 0, **filters: Any
) -> Coroutine[Any, Any, None]: ...


def refute_enqueued(
    dsn: str | None = None, /, *, oban: str | Oban = "Oban", timeout: float = 0, **filters: Any
) -> Coroutine[Any, Any, None] | None:
    """Fail (``AssertionError``) if a waiting job matches the filters.

    ``await refute_enqueued(worker=EmailWorker, timeout=0.2)`` watches for ``timeout`` seconds
    (Oban.py's form); ``refute_enqueued(dsn, prefix=..., **match)`` checks once (oban_pro's).
    """
    if dsn is not None:
        _refute_enqueued_sql(dsn, **filters)
        return None
    return _refute_enqueued(oban, timeout, filters)


async def _refute_enqueued(oban: str | Oban, timeout: float, filters: dict[str, Any]) -> None:
    async def found() -> bool:
        return bool(await _all_enqueued(oban, filters))

    if await _poll_until(found, timeout):
        matching = await _all_enqueued(oban, filters)
        raise AssertionError(
            f"Expected no jobs matching: {_normalized(filters)} to be enqueued"
            f"{_within(timeout)}. Instead found:\n\n{_listing(matching)}"
        )


def _within(timeout: float) -> str:
    return f" within {timeout}s" if timeout > 0 else ""


def _listing(jobs: list[Job]) -> str:
    return "\n".join(f"  {job}" for job in jobs)


async def _poll_until(condition: Callable[[], Awaitable[bool]], timeout: float) -> bool:
    """Whether ``condition`` held at some look within ``timeout`` seconds (one look at 0)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(timeout, 0)
    while loop.time() < deadline:
        if await condition():
            return True
        await asyncio.sleep(POLL_INTERVAL)
    return await condition()


def _assert_enqueued_sql(dsn: str, **match: Any) -> list[Job]:
    found = _all_enqueued_sql(dsn, **match)
    if not found:
        waiting = _all_enqueued_sql(dsn, prefix=match.get("prefix", "public"))
        raise AssertionError(
            f"expected a job matching {match!r} to be enqueued; waiting jobs: "
            f"{[(j.worker, j.queue, j.args) for j in waiting][:20]}"
        )
    return found


def _refute_enqueued_sql(dsn: str, **match: Any) -> None:
    found = _all_enqueued_sql(dsn, **match)
    if found:
        raise AssertionError(f"expected no job matching {match!r}; found {found[:5]!r}")


# -- reset ----------------------------------------------------------------------------------


async def reset_oban(oban: str | Oban = "Oban") -> None:
    """Empty ``oban_jobs``, ``oban_leaders`` and ``oban_producers`` of the instance's prefix,
    ids restarting at 1 (Oban.py's ``reset_oban``), e.g. in an autouse fixture after each test.
    """
    instance = find_instance(oban)
    await (await instance._ensure_store()).reset_tables()
