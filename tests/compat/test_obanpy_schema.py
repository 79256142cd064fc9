"""``oban_pro.schema``: Oban.py's ``install_sql``, ``uninstall_sql``, ``install``, ``uninstall``."""

from __future__ import annotations

import importlib

import psycopg
import pytest
from helpers import query
from psycopg_pool import AsyncConnectionPool

from oban_pro.errors import InvalidPrefixError
from oban_pro.migrations import detect_layout, migration_status

schema = importlib.import_module("oban_pro.schema")

TABLES = "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1"
ALL = ["oban_jobs", "oban_leaders", "oban_peers", "oban_producers", "oban_rate_limits"]


def tables(dsn: str, prefix: str) -> list[str]:
    return [name for (name,) in query(dsn, TABLES, (prefix,))]


def run_sql(dsn: str, sql: str) -> None:
    """As a migration tool runs it: one transaction."""
    with psycopg.connect(dsn) as conn:
        conn.execute(sql)


def test_install_sql_builds_what_migrate_up_builds_and_is_idempotent(oban_dsn, oban_empty_prefix):
    prefix = oban_empty_prefix
    sql = schema.install_sql(prefix)
    assert "{prefix}" not in sql and "{marker}" not in sql
    run_sql(oban_dsn, sql)
    run_sql(oban_dsn, sql)
    assert tables(oban_dsn, prefix) == ALL
    status = migration_status(oban_dsn, prefix)
    assert status.layout == "oban_pro" and status.up_to_date and status.version == 14
    query(oban_dsn, f"INSERT INTO \"{prefix}\".oban_jobs (worker) VALUES ('a.B')")
    run_sql(oban_dsn, schema.uninstall_sql(prefix))
    assert tables(oban_dsn, prefix) == []
    assert detect_layout(oban_dsn, prefix) == "empty"


def test_install_sql_creates_a_missing_schema_and_uninstall_sql_drops_it(oban_dsn):
    prefix = "compat_schema_sql"
    query(oban_dsn, f'DROP SCHEMA IF EXISTS "{prefix}" CASCADE')
    try:
        run_sql(oban_dsn, schema.install_sql(prefix))
        assert tables(oban_dsn, prefix) == ALL
        run_sql(oban_dsn, schema.uninstall_sql(prefix))
        assert query(oban_dsn, "SELECT 1 FROM pg_namespace WHERE nspname = %s", (prefix,)) == []
    finally:
        query(oban_dsn, f'DROP SCHEMA IF EXISTS "{prefix}" CASCADE')


def test_default_prefix_and_hostile_prefixes():
    assert '"public".oban_jobs' in schema.install_sql()
    assert "DROP TABLE" in schema.uninstall_sql()
    for bad in ("x; drop table y", "a.b", ""):
        with pytest.raises(InvalidPrefixError):
            schema.install_sql(bad)
        with pytest.raises(InvalidPrefixError):
            schema.uninstall_sql(bad)


async def test_install_and_uninstall_through_a_pool(oban_dsn, oban_empty_prefix):
    prefix = oban_empty_prefix
    async with AsyncConnectionPool(oban_dsn, min_size=1, max_size=2, open=False) as pool:
        actions = await schema.install(pool, prefix=prefix)
        assert any("oban_jobs" in action for action in actions)
        assert await schema.install(pool, prefix=prefix) == []
        assert tables(oban_dsn, prefix) == ALL
        dropped = await schema.uninstall(pool, prefix=prefix)
        assert any("oban_jobs" in action for action in dropped)
    assert tables(oban_dsn, prefix) == []
    await schema.install(oban_dsn, prefix)  # a DSN works too
    assert tables(oban_dsn, prefix) == ALL
    with pytest.raises(TypeError, match="AsyncConnectionPool"):
        await schema.install(object(), prefix)
