"""The Elixir app's side of Badge Forge, in SQL: the rows it writes and the rows it reads.

Nothing here is needed when a real Elixir app shares the database (``elixir/`` has its code).
It lets the example, and its test, run where there is no Elixir, writing exactly what Elixir
Oban writes (compat.md §2):

- :func:`insert_badge_jobs` is ``Oban.insert/1`` of ``Oban.Job.new(%{id: id, name: name},
  worker: "badge_forge.generator.GenerateBadge", queue: :badges)``: Ecto inserts the fields
  that are not nil (``state``, ``queue``, ``worker``, ``args``, ``meta``, ``tags``, ``errors``,
  ``attempt``, ``max_attempts``, ``priority``), so the timestamps take the columns' defaults
  and ``attempted_by`` stays NULL; then the notifier sends ``{"queue": "badges"}`` on
  ``<prefix>.oban_insert``.
- :func:`take_print_jobs` is the fetch of an Elixir node serving queue ``printing`` (Oban's
  Basic engine), and :func:`complete_print_jobs` its ack after ``BadgeForge.PrintCenter``
  returned ``:ok``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg

from oban_pro.naming import quoted_prefix

from .generator import PRINT_CENTER, PRINT_QUEUE

__all__ = [
    "GENERATOR",
    "complete_print_jobs",
    "insert_badge_jobs",
    "print_jobs",
    "take_print_jobs",
]

#: What the Elixir side writes in ``worker`` for the Python generator.
GENERATOR = "badge_forge.generator.GenerateBadge"
BADGE_QUEUE = "badges"

_INSERT = """
INSERT INTO {p}.oban_jobs
  (state, queue, worker, args, meta, tags, errors, attempt, max_attempts, priority)
VALUES ('available', %(queue)s, %(worker)s, %(args)s::jsonb, '{{}}'::jsonb, '{{}}'::text[],
        '{{}}'::jsonb[], 0, 20, 0)
RETURNING id
"""

_PRINT_JOBS = """
SELECT id, state::text, args, attempt, max_attempts, priority, tags, meta, to_jsonb(errors),
  attempted_by, scheduled_at <= timezone('UTC', now()) AS due
FROM {p}.oban_jobs
WHERE worker = %(worker)s AND queue = %(queue)s AND args->>'id' = ANY(%(ids)s::text[])
ORDER BY id
"""

# Oban's Basic engine fetch (Oban.Engines.Basic.fetch_jobs), for one Elixir node.
_TAKE = """
UPDATE {p}.oban_jobs AS j
SET state = 'executing', attempted_at = timezone('UTC', now()),
    attempted_by = ARRAY[%(node)s, %(uuid)s], attempt = j.attempt + 1
WHERE j.id IN (
  SELECT id FROM {p}.oban_jobs
  WHERE state = 'available' AND queue = %(queue)s
  ORDER BY priority, scheduled_at, id
  LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED
)
RETURNING j.id, j.worker, j.args
"""

_COMPLETE = """
UPDATE {p}.oban_jobs SET state = 'completed', completed_at = timezone('UTC', now())
WHERE id = ANY(%(ids)s::bigint[]) AND state = 'executing'
"""


def _sql(template: str, prefix: str) -> str:
    return template.format(p=quoted_prefix(prefix))  # validated: a schema name, quoted


def insert_badge_jobs(
    conn: psycopg.Connection[Any], attendees: Iterable[dict[str, Any]], *, prefix: str = "public"
) -> list[int]:
    """Insert one ``GenerateBadge`` job per ``{"id", "name"}`` as Elixir does; their ids."""
    ids = []
    with conn.transaction():
        for attendee in attendees:
            args = json.dumps({"id": attendee["id"], "name": attendee["name"]})
            row = conn.execute(
                _sql(_INSERT, prefix),
                {"queue": BADGE_QUEUE, "worker": GENERATOR, "args": args},
            ).fetchone()
            assert row is not None
            ids.append(row[0])
        conn.execute(
            "SELECT pg_notify(%s, %s)",
            (f"{prefix}.oban_insert", json.dumps({"queue": BADGE_QUEUE})),
        )
    return ids


def print_jobs(
    conn: psycopg.Connection[Any], badge_ids: Sequence[int | str], *, prefix: str = "public"
) -> list[dict[str, Any]]:
    """The ``BadgeForge.PrintCenter`` jobs for these badges, as rows (dicts)."""
    cur = conn.execute(
        _sql(_PRINT_JOBS, prefix),
        {"worker": PRINT_CENTER, "queue": PRINT_QUEUE, "ids": [str(i) for i in badge_ids]},
    )
    names = [column.name for column in cur.description or []]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def take_print_jobs(
    conn: psycopg.Connection[Any], *, limit: int = 10, prefix: str = "public"
) -> list[tuple[int, str, dict[str, Any]]]:
    """Fetch ``printing`` jobs as an Elixir node does: ``(id, worker, args)`` of each."""
    cur = conn.execute(
        _sql(_TAKE, prefix),
        {"queue": PRINT_QUEUE, "limit": limit, "node": "badge_forge@elixir",
         "uuid": str(uuid.uuid4())},
    )  # fmt: skip
    return [(job_id, worker, args) for job_id, worker, args in cur.fetchall()]


def complete_print_jobs(
    conn: psycopg.Connection[Any], job_ids: Sequence[int], *, prefix: str = "public"
) -> int:
    """Mark fetched ``printing`` jobs completed, as Elixir's ack does; how many were."""
    return conn.execute(_sql(_COMPLETE, prefix), {"ids": list(job_ids)}).rowcount
