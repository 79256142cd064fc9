"""Installing the Oban tables from Python or a migration tool (Oban.py's ``oban.schema``).

``install_sql()`` / ``uninstall_sql()`` give the SQL for Alembic, Django and friends;
``await install(pool)`` / ``await uninstall(pool)`` run it. They are the same operations as
``oban-pro migrate up`` and ``oban-pro migrate down --force`` (see :mod:`oban_pro.migrations`):

- install creates what the prefix lacks (Elixir Oban's version-14 ``oban_jobs``, ``oban_peers``,
  ``oban_leaders``, ``oban_producers``), adopting tables Elixir Oban or Oban.py made without
  altering them; it is idempotent and safe from many nodes at once (an advisory lock);
- uninstall drops what oban_pro created, jobs included, and keeps the tables another engine
  made (an Elixir app or an Oban.py installer may still use them). Oban.py's uninstall drops
  every Oban table whoever made it; that is the one difference.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from .migrations import (
    MARKER_PREFIX,
    SCHEMA_MARKER,
    _literal,
    load_migrations,
    lock_key,
    migrate_down,
    migrate_up,
)
from .naming import quote_ident, validate_prefix

__all__ = ["install", "install_sql", "uninstall", "uninstall_sql"]


def install_sql(prefix: str = "public") -> str:
    """The SQL that installs (or completes) the Oban tables in ``prefix``; idempotent.

    For migration tools, e.g. Alembic's ``op.execute(install_sql())`` or Django's
    ``migrations.RunSQL(install_sql())``. Run it in one transaction (migration tools do).
    """
    prefix = validate_prefix(prefix)
    quoted, literal = quote_ident(prefix), _literal(prefix)
    parts = [
        f"-- oban_pro schema install for {prefix}",
        f"SELECT pg_advisory_xact_lock({lock_key(prefix)});",
        f"""DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = {literal}) THEN
    CREATE SCHEMA {quoted};
    COMMENT ON SCHEMA {quoted} IS {_literal(SCHEMA_MARKER)};
  END IF;
END
$$;""",
    ]
    parts += [migration.render(prefix).strip() for migration in load_migrations()]
    return "\n\n".join(parts) + "\n"


def uninstall_sql(prefix: str = "public") -> str:
    """The SQL that drops what oban_pro created in ``prefix`` (jobs included).

    Tables and types another engine made carry no oban_pro marker and are kept; the schema is
    dropped only when oban_pro created it and it is empty.
    """
    prefix = validate_prefix(prefix)
    quoted, literal = quote_ident(prefix), _literal(prefix)
    marker = _literal(MARKER_PREFIX)
    n = len(MARKER_PREFIX)
    parts = [
        f"-- oban_pro schema uninstall for {prefix}",
        f"SELECT pg_advisory_xact_lock({lock_key(prefix)});",
    ]
    for migration in reversed(load_migrations()):
        for obj in reversed(migration.creates):
            name = quote_ident(obj.name)
            if obj.kind == "table":
                check = f"""SELECT 1 FROM pg_constraint k
    JOIN pg_class c ON c.oid = k.conrelid
    JOIN pg_namespace s ON s.oid = c.relnamespace
    WHERE s.nspname = {literal} AND c.relname = {_literal(obj.name)} AND k.contype = 'p'
      AND left(obj_description(k.oid, 'pg_constraint'), {n}) = {marker}"""
            else:
                check = f"""SELECT 1 FROM pg_type t
    JOIN pg_namespace s ON s.oid = t.typnamespace
    WHERE s.nspname = {literal} AND t.typname = {_literal(obj.name)}
      AND left(obj_description(t.oid, 'pg_type'), {n}) = {marker}"""
            parts.append(
                f"""DO $$
BEGIN
  IF EXISTS ({check}) THEN
    DROP {obj.kind.upper()} {quoted}.{name};
  END IF;
END
$$;"""
            )
    if prefix != "public":
        parts.append(
            f"""DO $$
BEGIN
  IF obj_description((SELECT oid FROM pg_namespace WHERE nspname = {literal}), 'pg_namespace')
       = {_literal(SCHEMA_MARKER)} THEN
    BEGIN
      DROP SCHEMA {quoted};
    EXCEPTION WHEN dependent_objects_still_exist THEN
      NULL; -- it holds other objects now: it is no longer only ours
    END;
  END IF;
END
$$;"""
        )
    return "\n\n".join(parts) + "\n"


async def install(pool: Any, prefix: str = "public") -> list[str]:
    """Install the Oban tables through ``pool`` (an ``AsyncConnectionPool``, as in Oban.py, or a
    DSN); returns the actions taken (``[]`` when up to date). See ``oban-pro migrate up``."""
    prefix = validate_prefix(prefix)
    return await asyncio.to_thread(_with_connection, pool, migrate_up, prefix)


async def uninstall(pool: Any, prefix: str = "public") -> list[str]:
    """Drop what oban_pro created (jobs included) through ``pool``; returns the actions."""
    prefix = validate_prefix(prefix)
    return await asyncio.to_thread(_with_connection, pool, _force_down, prefix)


def _force_down(conn: psycopg.Connection, prefix: str) -> list[str]:
    return migrate_down(conn, prefix, force=True)


def _with_connection(pool: Any, action: Any, prefix: str) -> list[str]:
    conninfo, kwargs = _where(pool)
    with psycopg.connect(conninfo, **{**kwargs, "autocommit": True}) as conn:
        return action(conn, prefix)


def _where(pool: Any) -> tuple[str, dict[str, Any]]:
    """Where ``pool`` connects: (conninfo, connection keywords)."""
    if isinstance(pool, str):
        return pool, {}
    conninfo = getattr(pool, "conninfo", None)
    if not isinstance(conninfo, str):
        raise TypeError(
            "install()/uninstall() take a psycopg_pool AsyncConnectionPool (or ConnectionPool) "
            f"with a conninfo string, or a DSN; got {type(pool).__name__}"
        )
    kwargs = dict(getattr(pool, "kwargs", None) or {})
    kwargs.pop("row_factory", None)
    return conninfo, kwargs
