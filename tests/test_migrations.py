"""Migrations against a real PostgreSQL: the created catalog, adoption, concurrency, down, CLI.

Expected values are written out literally from compat.md §1 (Elixir Oban's v14 layout) as
PostgreSQL prints them back; ``{p}`` stands for the test's prefix.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from oban_pro import migrations as m
from oban_pro.errors import InvalidPrefixError, MigrationError
from oban_pro.naming import quote_ident

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"

pytestmark = pytest.mark.timeout(120)


# --------------------------------------------------------------------------------------------
# Helpers


def load_fixture(dsn: str, prefix: str, name: str, *extra: str) -> None:
    """Run ``tests/fixtures/<name>.sql``, then the ``extra`` statements (``{p}`` = prefix).

    Each part of the file between ``-- (commit)`` lines runs in a transaction of its own.
    """
    sql = (FIXTURES / f"{name}.sql").read_text()
    sql = sql.replace("{prefix}", quote_ident(prefix)).replace("{schema}", f"'{prefix}'")
    parts = re.split(r"^-- \(commit\).*$", sql, flags=re.MULTILINE)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for part in parts:
            with conn.transaction():
                conn.execute(part)
        with conn.transaction():
            for statement in extra:
                conn.execute(statement.replace("{p}", quote_ident(prefix)))


def query(dsn: str, sql: str, *params: object) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def execute(dsn: str, sql: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql)


def schema_exists(dsn: str, prefix: str) -> bool:
    return bool(scalar(dsn, "SELECT count(*) FROM pg_namespace WHERE nspname = %s", prefix))


def scalar(dsn: str, sql: str, *params: object) -> object:
    rows = query(dsn, sql, *params)
    return rows[0][0] if rows else None


_NS = "(SELECT oid FROM pg_namespace WHERE nspname = %(ns)s)"

SNAPSHOT_QUERIES = {
    "schema": f"SELECT coalesce(obj_description({_NS}, 'pg_namespace'), '')",
    "relations": f"""
        SELECT c.relname, c.relkind, c.relpersistence,
               coalesce(obj_description(c.oid, 'pg_class'), ''),
               coalesce(array_to_string(c.reloptions, ','), '')
        FROM pg_class c WHERE c.relnamespace = {_NS}""",
    "columns": f"""
        SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, coalesce(pg_get_expr(d.adbin, d.adrelid), ''), a.attidentity
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = {_NS} AND c.relkind = 'r' AND a.attnum > 0
          AND NOT a.attisdropped""",
    "constraints": f"""
        SELECT c.relname, k.conname, k.contype, pg_get_constraintdef(k.oid, true),
               k.convalidated, coalesce(obj_description(k.oid, 'pg_constraint'), '')
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
        WHERE k.connamespace = {_NS}""",
    "indexes": f"""
        SELECT x.relname, pg_get_indexdef(i.indexrelid)
        FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid
        WHERE x.relnamespace = {_NS}""",
    "types": f"""
        SELECT t.typname, t.typtype, coalesce(obj_description(t.oid, 'pg_type'), '')
        FROM pg_type t WHERE t.typnamespace = {_NS}""",
    "enum": f"""
        SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
        FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid
        WHERE t.typnamespace = {_NS} GROUP BY t.typname""",
    "triggers": f"""
        SELECT t.tgname, c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE c.relnamespace = {_NS} AND NOT t.tgisinternal""",
    "functions": f"SELECT p.proname FROM pg_proc p WHERE p.pronamespace = {_NS}",
}


def _generic(row: tuple, prefix: str) -> tuple:
    """``row`` with the schema name written as ``{p}``, so that two schemas compare equal."""
    return tuple(v.replace(f"{prefix}.", "{p}.") if isinstance(v, str) else v for v in row)


def snapshot(dsn: str, prefix: str) -> dict[str, set[tuple]]:
    """Everything in the catalog about ``prefix``, with the prefix itself written as ``{p}``."""
    result = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for key, sql in SNAPSHOT_QUERIES.items():
            rows = conn.execute(sql, {"ns": prefix}).fetchall()
            result[key] = {_generic(row, prefix) for row in rows}
    return result


def snapshot_diff(before: dict, after: dict) -> dict[str, dict[str, set]]:
    """Per catalog area, the rows added and removed (areas with no change are left out)."""
    diff = {}
    for key in before:
        added, removed = after[key] - before[key], before[key] - after[key]
        if added or removed:
            diff[key] = {"added": added, "removed": removed}
    return diff


def relations_added(diff: dict) -> set[str]:
    return {row[0] for row in diff.get("relations", {}).get("added", set())}


def tables_of(diff: dict, area: str) -> set[str]:
    """The tables the added rows of ``area`` (columns, constraints) belong to."""
    return {row[0] for row in diff.get(area, {}).get("added", set())}


@pytest.fixture
def fresh_prefix(oban_dsn: str) -> Iterator[str]:
    """A prefix whose schema does not exist yet (dropped after the test if it got created)."""
    prefix = "n_" + uuid.uuid4().hex[:12]
    yield prefix
    with psycopg.connect(oban_dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(prefix)} CASCADE")


# --------------------------------------------------------------------------------------------
# The layout created on an empty schema (compat.md §1)

EXPECTED_JOB_COLUMNS = [
    ("id", "bigint", True, "nextval('{p}.oban_jobs_id_seq'::regclass)"),
    ("state", "{p}.oban_job_state", True, "'available'::{p}.oban_job_state"),
    ("queue", "text", True, "'default'::text"),
    ("worker", "text", True, ""),
    ("args", "jsonb", True, "'{}'::jsonb"),
    ("errors", "jsonb[]", True, "ARRAY[]::jsonb[]"),
    ("attempt", "integer", True, "0"),
    ("max_attempts", "integer", True, "20"),
    ("inserted_at", "timestamp without time zone", True, "timezone('UTC'::text, now())"),
    ("scheduled_at", "timestamp without time zone", True, "timezone('UTC'::text, now())"),
    ("attempted_at", "timestamp without time zone", False, ""),
    ("completed_at", "timestamp without time zone", False, ""),
    ("attempted_by", "text[]", False, ""),
    ("discarded_at", "timestamp without time zone", False, ""),
    ("priority", "integer", True, "0"),
    ("tags", "text[]", False, "ARRAY[]::text[]"),
    ("meta", "jsonb", False, "'{}'::jsonb"),
    ("cancelled_at", "timestamp without time zone", False, ""),
]

EXPECTED_SIDE_COLUMNS = {
    "oban_peers": [
        ("name", "text", True, ""),
        ("node", "text", True, ""),
        ("started_at", "timestamp without time zone", True, ""),
        ("expires_at", "timestamp without time zone", True, ""),
    ],
    "oban_leaders": [
        ("name", "text", True, "'oban'::text"),
        ("node", "text", True, ""),
        ("elected_at", "timestamp without time zone", True, ""),
        ("expires_at", "timestamp without time zone", True, ""),
    ],
    "oban_producers": [
        ("uuid", "uuid", True, ""),
        ("name", "text", True, "'oban'::text"),
        ("node", "text", True, ""),
        ("queue", "text", True, ""),
        ("meta", "jsonb", True, "'{}'::jsonb"),
        ("started_at", "timestamp without time zone", True, "timezone('UTC'::text, now())"),
        ("updated_at", "timestamp without time zone", True, "timezone('UTC'::text, now())"),
    ],
    "oban_rate_limits": [
        ("queue", "text", True, ""),
        ("key", "text", True, "''::text"),
        ("starts", "timestamp without time zone[]", True, "'{}'::timestamp without time zone[]"),
    ],
}

EXPECTED_INDEXES = {
    ("oban_jobs_pkey", "CREATE UNIQUE INDEX oban_jobs_pkey ON {p}.oban_jobs USING btree (id)"),
    (
        "oban_jobs_state_queue_priority_scheduled_at_id_index",
        "CREATE INDEX oban_jobs_state_queue_priority_scheduled_at_id_index ON {p}.oban_jobs "
        "USING btree (state, queue, priority, scheduled_at, id)",
    ),
    ("oban_jobs_args_index", "CREATE INDEX oban_jobs_args_index ON {p}.oban_jobs USING gin (args)"),
    ("oban_jobs_meta_index", "CREATE INDEX oban_jobs_meta_index ON {p}.oban_jobs USING gin (meta)"),
    (
        "oban_jobs_state_cancelled_at_index",
        "CREATE INDEX oban_jobs_state_cancelled_at_index ON {p}.oban_jobs "
        "USING btree (state, cancelled_at)",
    ),
    (
        "oban_jobs_state_discarded_at_index",
        "CREATE INDEX oban_jobs_state_discarded_at_index ON {p}.oban_jobs "
        "USING btree (state, discarded_at)",
    ),
    ("oban_peers_pkey", "CREATE UNIQUE INDEX oban_peers_pkey ON {p}.oban_peers USING btree (name)"),
    (
        "oban_leaders_pkey",
        "CREATE UNIQUE INDEX oban_leaders_pkey ON {p}.oban_leaders USING btree (name)",
    ),
    (
        "oban_producers_pkey",
        "CREATE UNIQUE INDEX oban_producers_pkey ON {p}.oban_producers USING btree (uuid)",
    ),
    (
        "oban_rate_limits_pkey",
        "CREATE UNIQUE INDEX oban_rate_limits_pkey ON {p}.oban_rate_limits "
        "USING btree (queue, key)",
    ),
}

# (table, name, definition as pg_get_constraintdef(oid, true) prints it, validated)
EXPECTED_CONSTRAINTS = {
    ("oban_jobs", "oban_jobs_pkey", "PRIMARY KEY (id)", True),
    (
        "oban_jobs",
        "worker_length",
        "CHECK (char_length(worker) > 0 AND char_length(worker) < 128)",
        True,
    ),
    (
        "oban_jobs",
        "queue_length",
        "CHECK (char_length(queue) > 0 AND char_length(queue) < 128)",
        True,
    ),
    ("oban_jobs", "positive_max_attempts", "CHECK (max_attempts > 0)", True),
    ("oban_jobs", "attempt_range", "CHECK (attempt >= 0 AND attempt <= max_attempts)", True),
    ("oban_jobs", "non_negative_priority", "CHECK (priority >= 0) NOT VALID", False),
    ("oban_peers", "oban_peers_pkey", "PRIMARY KEY (name)", True),
    ("oban_leaders", "oban_leaders_pkey", "PRIMARY KEY (name)", True),
    ("oban_producers", "oban_producers_pkey", "PRIMARY KEY (uuid)", True),
    ("oban_rate_limits", "oban_rate_limits_pkey", "PRIMARY KEY (queue, key)", True),
}

ELIXIR_STATES = [
    "available", "suspended", "scheduled", "executing",
    "retryable", "completed", "discarded", "cancelled",
]  # fmt: skip
OBANPY_STATES = [
    "available", "scheduled", "suspended", "executing",
    "retryable", "completed", "discarded", "cancelled",
]  # fmt: skip


def columns(dsn: str, prefix: str, table: str) -> list[tuple]:
    rows = query(
        dsn,
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               coalesce(pg_get_expr(d.adbin, d.adrelid), '')
        FROM pg_attribute a
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attrelid = (quote_ident(%s) || '.' || quote_ident(%s))::regclass
          AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
        """,
        prefix,
        table,
    )
    return [_generic(row, prefix) for row in rows]


def enum_labels(dsn: str, prefix: str) -> list[str]:
    rows = query(
        dsn,
        "SELECT unnest(enum_range(NULL::" + quote_ident(prefix) + ".oban_job_state))::text",
    )
    return [label for (label,) in rows]


def table_comment(dsn: str, prefix: str, table: str = "oban_jobs") -> str | None:
    return scalar(
        dsn,
        "SELECT obj_description((quote_ident(%s) || '.' || quote_ident(%s))::regclass, 'pg_class')",
        prefix,
        table,
    )


def test_oban_jobs_columns_match_compat(oban_dsn: str, oban_prefix: str) -> None:
    assert columns(oban_dsn, oban_prefix, "oban_jobs") == EXPECTED_JOB_COLUMNS


@pytest.mark.parametrize("table", sorted(EXPECTED_SIDE_COLUMNS))
def test_side_table_columns(oban_dsn: str, oban_prefix: str, table: str) -> None:
    assert columns(oban_dsn, oban_prefix, table) == EXPECTED_SIDE_COLUMNS[table]


def test_indexes_match_compat(oban_dsn: str, oban_prefix: str) -> None:
    found = snapshot(oban_dsn, oban_prefix)["indexes"]
    assert found == EXPECTED_INDEXES


def test_constraints_match_compat(oban_dsn: str, oban_prefix: str) -> None:
    # PostgreSQL 18 also lists NOT NULL constraints (contype 'n'); those are covered by columns.
    rows = snapshot(oban_dsn, oban_prefix)["constraints"]
    found = {
        (table, name, definition, validated)
        for table, name, kind, definition, validated, _comment in rows
        if kind != "n"
    }
    assert found == EXPECTED_CONSTRAINTS


def test_enum_in_elixir_order(oban_dsn: str, oban_prefix: str) -> None:
    assert enum_labels(oban_dsn, oban_prefix) == ELIXIR_STATES


def test_version_comment_is_14(oban_dsn: str, oban_prefix: str) -> None:
    assert table_comment(oban_dsn, oban_prefix) == "14"


def test_elixir_reads_version_14(oban_dsn: str, oban_prefix: str) -> None:
    """Elixir's own version query (Oban.Migrations.Postgres.migrated_version/1) finds one '14'.

    It joins pg_description on objoid alone, so any other comment with the table's oid (a column
    comment, say) would give it two rows and make it read version 0.
    """
    rows = query(
        oban_dsn,
        """
        SELECT description
        FROM pg_class
        LEFT JOIN pg_description ON pg_description.objoid = pg_class.oid
        LEFT JOIN pg_namespace ON pg_namespace.oid = pg_class.relnamespace
        WHERE pg_class.relname = 'oban_jobs'
        AND pg_namespace.nspname = %s
        """,
        oban_prefix,
    )
    assert rows == [("14",)]


def test_python_tables_take_oban_py_inserts(oban_dsn: str, oban_prefix: str) -> None:
    """Oban.py inserts producer rows relying on the column defaults, which these tables have."""
    execute(
        oban_dsn,
        f"INSERT INTO {oban_prefix}.oban_producers (uuid, node, queue, updated_at) "
        "VALUES (gen_random_uuid(), 'node-1', 'default', timezone('UTC', now()))",
    )
    rows = query(
        oban_dsn, f"SELECT name, meta, started_at IS NOT NULL FROM {oban_prefix}.oban_producers"
    )
    assert rows == [("oban", {}, True)]


def test_persistence_and_no_triggers(oban_dsn: str, oban_prefix: str) -> None:
    snap = snapshot(oban_dsn, oban_prefix)
    tables = {name: persistence for name, kind, persistence, *_ in snap["relations"] if kind == "r"}
    assert tables == {
        "oban_jobs": "p",
        "oban_peers": "u",
        "oban_leaders": "u",
        "oban_producers": "u",
        "oban_rate_limits": "p",
    }
    assert snap["triggers"] == set()
    assert snap["functions"] == set()


def test_up_reports_actions_and_is_idempotent(oban_dsn: str, oban_empty_prefix: str) -> None:
    actions = m.migrate_up(oban_dsn, prefix=oban_empty_prefix)
    p = oban_empty_prefix
    assert actions == [
        f"create type {p}.oban_job_state [v001_oban_jobs]",
        f"create table {p}.oban_jobs [v001_oban_jobs]",
        f"create table {p}.oban_peers (UNLOGGED) [v002_oban_peers]",
        f"create table {p}.oban_leaders (UNLOGGED) [v003_oban_leaders_producers]",
        f"create table {p}.oban_producers (UNLOGGED) [v003_oban_leaders_producers]",
        f"create table {p}.oban_rate_limits [v004_oban_rate_limits]",
        f"set the Elixir version comment on {p}.oban_jobs to '14'",
    ]
    before = snapshot(oban_dsn, p)
    assert m.migrate_up(oban_dsn, prefix=p) == []
    assert m.migrate(oban_dsn, prefix=p) == []  # the alias
    assert snapshot_diff(before, snapshot(oban_dsn, p)) == {}


def test_created_layout_equals_elixir_replay(
    oban_dsn: str, oban_prefix: str, oban_empty_prefix: str
) -> None:
    """oban_jobs and oban_peers as oban_pro makes them equal Elixir's V01..V14 replayed."""
    # oban_prefix and oban_empty_prefix are two different schemas (the first one migrated).
    elixir_prefix = "e_" + uuid.uuid4().hex[:12]
    with psycopg.connect(oban_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {elixir_prefix}")
    try:
        load_fixture(oban_dsn, elixir_prefix, "elixir_v14")
        ours, theirs = snapshot(oban_dsn, oban_prefix), snapshot(oban_dsn, elixir_prefix)
    finally:
        with psycopg.connect(oban_dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {elixir_prefix} CASCADE")
    shared = ("oban_jobs", "oban_peers")

    def without_markers(rows: set[tuple], area: str) -> set[tuple]:
        keep = {r for r in rows if r[0] in shared or r[0].startswith(shared)}
        if area == "constraints":  # the ownership marker is the only comment on constraints
            keep = {r[:-1] for r in keep}
        return keep

    for area in ("columns", "constraints", "indexes", "relations"):
        assert without_markers(ours[area], area) == without_markers(theirs[area], area), area
    assert ours["enum"] == theirs["enum"]


# --------------------------------------------------------------------------------------------
# Adopting schemas made by others


def test_adopts_elixir_v14_adding_only_python_tables(oban_dsn: str, oban_empty_prefix: str) -> None:
    p = oban_empty_prefix
    load_fixture(oban_dsn, p, "elixir_v14")
    assert m.detect_layout(oban_dsn, p) == "elixir"
    before = snapshot(oban_dsn, p)

    actions = m.migrate_up(oban_dsn, prefix=p)

    assert actions == [
        f"create table {p}.oban_leaders (UNLOGGED) [v003_oban_leaders_producers]",
        f"create table {p}.oban_producers (UNLOGGED) [v003_oban_leaders_producers]",
        f"create table {p}.oban_rate_limits [v004_oban_rate_limits]",
    ]
    diff = snapshot_diff(before, snapshot(oban_dsn, p))
    assert all(not change["removed"] for change in diff.values()), diff
    assert relations_added(diff) == {
        "oban_leaders", "oban_leaders_pkey", "oban_producers", "oban_producers_pkey",
        "oban_rate_limits", "oban_rate_limits_pkey",
    }  # fmt: skip
    python_tables = {"oban_leaders", "oban_producers", "oban_rate_limits"}
    assert tables_of(diff, "columns") == python_tables
    assert tables_of(diff, "constraints") == python_tables
    # the only new types are the new tables' row types (and their array types)
    assert {row[0].lstrip("_") for row in diff["types"]["added"]} == python_tables
    assert set(diff) <= {"relations", "columns", "constraints", "indexes", "types"}
    assert table_comment(oban_dsn, p) == "14"
    assert m.detect_layout(oban_dsn, p) == "elixir"


@pytest.mark.parametrize("comment", ["13", "20"])
def test_never_lowers_or_overwrites_version(
    oban_dsn: str, oban_empty_prefix: str, comment: str
) -> None:
    p = oban_empty_prefix
    load_fixture(oban_dsn, p, "elixir_v14", f"COMMENT ON TABLE {{p}}.oban_jobs IS '{comment}'")
    assert m.migration_status(oban_dsn, p).version == int(comment)
    m.migrate_up(oban_dsn, prefix=p)
    m.migrate_up(oban_dsn, prefix=p)
    assert table_comment(oban_dsn, p) == comment


def test_adopts_obanpy_without_rewriting_types(oban_dsn: str, oban_empty_prefix: str) -> None:
    p = oban_empty_prefix
    load_fixture(oban_dsn, p, "obanpy")
    assert m.detect_layout(oban_dsn, p) == "obanpy"
    before = snapshot(oban_dsn, p)
    jobs_before = columns(oban_dsn, p, "oban_jobs")

    actions = m.migrate_up(oban_dsn, prefix=p)

    assert actions == [
        f"create table {p}.oban_peers (UNLOGGED) [v002_oban_peers]",
        f"create table {p}.oban_rate_limits [v004_oban_rate_limits]",
    ]
    diff = snapshot_diff(before, snapshot(oban_dsn, p))
    assert all(not change["removed"] for change in diff.values()), diff
    assert relations_added(diff) == {
        "oban_peers", "oban_peers_pkey", "oban_rate_limits", "oban_rate_limits_pkey"
    }  # fmt: skip
    assert tables_of(diff, "columns") == {"oban_peers", "oban_rate_limits"}
    jobs_after = columns(oban_dsn, p, "oban_jobs")
    assert jobs_after == jobs_before
    types = {name: type_ for name, type_, _null, _default in jobs_after}
    assert (types["errors"], types["attempt"], types["max_attempts"], types["priority"]) == (
        "jsonb", "smallint", "smallint", "smallint",
    )  # fmt: skip
    assert enum_labels(oban_dsn, p) == OBANPY_STATES
    assert table_comment(oban_dsn, p) is None  # no comment stays no comment
    assert m.detect_layout(oban_dsn, p) == "obanpy"


def test_obanpy_own_version_comment_is_kept(oban_dsn: str, oban_empty_prefix: str) -> None:
    p = oban_empty_prefix
    load_fixture(oban_dsn, p, "obanpy", "COMMENT ON TABLE {p}.oban_jobs IS '1'")
    m.migrate_up(oban_dsn, prefix=p)
    assert table_comment(oban_dsn, p) == "1"
    assert m.migration_status(oban_dsn, p).pending == []


def test_refuses_to_adopt_an_old_elixir_table(oban_dsn: str, oban_empty_prefix: str) -> None:
    """An Elixir table from before V09 lacks meta/cancelled_at: up refuses, changes nothing."""
    p = oban_empty_prefix
    load_fixture(
        oban_dsn,
        p,
        "elixir_v14",
        "ALTER TABLE {p}.oban_jobs DROP COLUMN meta, DROP COLUMN cancelled_at",
        "COMMENT ON TABLE {p}.oban_jobs IS '8'",
    )
    before = snapshot(oban_dsn, p)
    status = m.migration_status(oban_dsn, p)
    assert status.layout == "elixir" and status.pending == []
    assert "lacks the columns cancelled_at, meta" in status.problems[0]
    with pytest.raises(MigrationError, match="version 14"):
        m.migrate_up(oban_dsn, prefix=p)
    assert snapshot_diff(before, snapshot(oban_dsn, p)) == {}


def test_unknown_layout_is_refused(oban_dsn: str, oban_empty_prefix: str) -> None:
    p = oban_empty_prefix
    load_fixture(oban_dsn, p, "elixir_v14", "ALTER TABLE {p}.oban_jobs DROP COLUMN errors")
    status = m.migration_status(oban_dsn, p)
    assert status.layout == "unknown" and status.errors_column_type is None
    with pytest.raises(MigrationError, match="not made by an Oban engine"):
        m.migrate_up(oban_dsn, prefix=p)


# --------------------------------------------------------------------------------------------
# Concurrency, prefixes, connections

_RACER = r"""
import json, sys
import psycopg
from oban_pro.migrations import migrate_up

dsn, prefix = sys.argv[1:3]
with psycopg.connect(dsn, autocommit=True) as conn:
    print("ready", flush=True)
    sys.stdin.readline()  # the start signal: every racer is connected by now
    print(json.dumps(migrate_up(conn, prefix)), flush=True)
"""


def _python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def test_four_concurrent_migrations(oban_dsn: str, oban_prefix: str, fresh_prefix: str) -> None:
    """Four processes migrate the same missing schema at once: all succeed, one does the work."""
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, oban_dsn, fresh_prefix],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_python_env(),
        )
        for _ in range(4)
    ]
    try:
        for racer in racers:
            assert racer.stdout is not None and racer.stdout.readline().strip() == "ready"
        for racer in racers:
            assert racer.stdin is not None
            racer.stdin.write("go\n")
            racer.stdin.flush()
        outputs = [racer.communicate(timeout=60) for racer in racers]
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
    assert [racer.returncode for racer in racers] == [0] * 4, [err for _, err in outputs]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert sorted(len(actions) for actions in results) == [0, 0, 0, 8]  # schema + 6 + comment
    single, raced = snapshot(oban_dsn, oban_prefix), snapshot(oban_dsn, fresh_prefix)
    del single["schema"], raced["schema"]  # only the raced schema was created by oban_pro
    assert raced == single


HOSTILE_PREFIXES = ['x"; drop table y; --', "a.b", "has space", "", "a" * 64, "1abc", None]


@pytest.mark.parametrize("prefix", HOSTILE_PREFIXES)
def test_hostile_prefixes_are_refused(oban_dsn: str, prefix: str) -> None:
    schemas = "SELECT array_agg(nspname ORDER BY nspname) FROM pg_namespace"
    before = scalar(oban_dsn, schemas)
    for call in (m.migrate_up, m.migrate_down, m.migration_status, m.detect_layout):
        with pytest.raises(InvalidPrefixError):
            call(oban_dsn, prefix)  # type: ignore[operator]
    assert scalar(oban_dsn, schemas) == before


def test_accepts_an_open_connection(oban_dsn: str, oban_empty_prefix: str) -> None:
    p = oban_empty_prefix
    with psycopg.connect(oban_dsn) as conn:  # not autocommit: idle, then its own transaction
        assert len(m.migrate_up(conn, p)) == 7
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert m.detect_layout(oban_dsn, p) == "oban_pro"  # committed, seen from elsewhere


def test_joins_the_callers_transaction(oban_dsn: str, oban_empty_prefix: str) -> None:
    p = oban_empty_prefix
    with psycopg.connect(oban_dsn) as conn:
        conn.execute("SELECT 1")  # a transaction is open now
        m.migrate_up(conn, p)
        assert m.detect_layout(conn, p) == "oban_pro"
        conn.rollback()
    assert m.detect_layout(oban_dsn, p) == "empty"


def test_rejects_other_arguments() -> None:
    with pytest.raises(TypeError):
        m.migrate_up(42, "public")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Down


def test_down_removes_everything_it_created(oban_dsn: str, oban_prefix: str) -> None:
    p = oban_prefix
    actions = m.migrate_down(oban_dsn, p)
    assert actions == [
        f"drop table {p}.oban_rate_limits",
        f"drop table {p}.oban_producers",
        f"drop table {p}.oban_leaders",
        f"drop table {p}.oban_peers",
        f"drop table {p}.oban_jobs",
        f"drop type {p}.oban_job_state",
    ]
    snap = snapshot(oban_dsn, p)
    assert snap["relations"] == set() and snap["types"] == set()
    assert schema_exists(oban_dsn, p)
    assert m.migrate_down(oban_dsn, p) == []


def test_down_on_elixir_removes_only_python_tables(oban_dsn: str, oban_empty_prefix: str) -> None:
    p = oban_empty_prefix
    load_fixture(oban_dsn, p, "elixir_v14")
    before = snapshot(oban_dsn, p)
    m.migrate_up(oban_dsn, p)
    assert m.migrate_down(oban_dsn, p) == [
        f"drop table {p}.oban_rate_limits",
        f"drop table {p}.oban_producers",
        f"drop table {p}.oban_leaders",
    ]
    assert snapshot_diff(before, snapshot(oban_dsn, p)) == {}


def test_down_on_obanpy_removes_only_what_it_added(oban_dsn: str, oban_empty_prefix: str) -> None:
    p = oban_empty_prefix
    load_fixture(oban_dsn, p, "obanpy")
    before = snapshot(oban_dsn, p)
    m.migrate_up(oban_dsn, p)
    assert m.migrate_down(oban_dsn, p) == [
        f"drop table {p}.oban_rate_limits",
        f"drop table {p}.oban_peers",
    ]
    assert snapshot_diff(before, snapshot(oban_dsn, p)) == {}


def test_down_refuses_to_drop_jobs_without_force(oban_dsn: str, oban_prefix: str) -> None:
    p = oban_prefix
    execute(oban_dsn, f"INSERT INTO {p}.oban_jobs (worker) VALUES ('W')")
    before = snapshot(oban_dsn, p)
    with pytest.raises(MigrationError, match="force=True"):
        m.migrate_down(oban_dsn, p)
    assert snapshot_diff(before, snapshot(oban_dsn, p)) == {}  # nothing dropped, not even peers
    assert len(m.migrate_down(oban_dsn, p, force=True)) == 6
    assert m.detect_layout(oban_dsn, p) == "empty"


def test_up_creates_a_missing_schema_and_down_drops_it(oban_dsn: str, fresh_prefix: str) -> None:
    p = fresh_prefix
    assert m.migrate_up(oban_dsn, p)[0] == f"create schema {p}"
    assert m.migrate_down(oban_dsn, p)[-1] == f"drop schema {p}"
    assert not schema_exists(oban_dsn, p)


def test_down_keeps_a_created_schema_that_holds_other_objects(
    oban_dsn: str, fresh_prefix: str
) -> None:
    p = fresh_prefix
    m.migrate_up(oban_dsn, p)
    execute(oban_dsn, f"CREATE TABLE {p}.mine (x int)")
    assert f"drop schema {p}" not in m.migrate_down(oban_dsn, p)
    assert scalar(oban_dsn, f"SELECT count(*) FROM {p}.mine") == 0


# --------------------------------------------------------------------------------------------
# Status


def test_status_empty(oban_dsn: str, oban_empty_prefix: str) -> None:
    status = m.migration_status(oban_dsn, oban_empty_prefix)
    assert (status.layout, status.version, status.errors_column_type) == ("empty", None, None)
    assert len(status.pending) == 7 and not status.problems and not status.up_to_date


def test_status_missing_schema_changes_nothing(oban_dsn: str, fresh_prefix: str) -> None:
    status = m.migration_status(oban_dsn, fresh_prefix)
    assert status.pending[0] == f"create schema {fresh_prefix}"
    assert not schema_exists(oban_dsn, fresh_prefix)


def test_status_oban_pro(oban_dsn: str, oban_prefix: str) -> None:
    status = m.migration_status(oban_dsn, oban_prefix)
    assert (status.layout, status.version, status.errors_column_type) == ("oban_pro", 14, "jsonb[]")
    assert status.up_to_date and status.enum_labels == ELIXIR_STATES
    assert status.created_by_oban_pro == [
        "type oban_job_state", "table oban_jobs", "table oban_peers",
        "table oban_leaders", "table oban_producers", "table oban_rate_limits",
    ]  # fmt: skip


def test_status_elixir(oban_dsn: str, oban_empty_prefix: str) -> None:
    p = oban_empty_prefix
    load_fixture(oban_dsn, p, "elixir_v14")
    status = m.migration_status(oban_dsn, p)
    assert (status.layout, status.version, status.errors_column_type) == ("elixir", 14, "jsonb[]")
    assert status.pending == [
        f"create table {p}.oban_leaders (UNLOGGED) [v003_oban_leaders_producers]",
        f"create table {p}.oban_producers (UNLOGGED) [v003_oban_leaders_producers]",
        f"create table {p}.oban_rate_limits [v004_oban_rate_limits]",
    ]
    assert status.created_by_oban_pro == []


def test_status_obanpy(oban_dsn: str, oban_empty_prefix: str) -> None:
    p = oban_empty_prefix
    load_fixture(oban_dsn, p, "obanpy")
    status = m.migration_status(oban_dsn, p)
    assert (status.layout, status.version, status.errors_column_type) == ("obanpy", None, "jsonb")
    assert status.pending == [
        f"create table {p}.oban_peers (UNLOGGED) [v002_oban_peers]",
        f"create table {p}.oban_rate_limits [v004_oban_rate_limits]",
    ]
    assert status.enum_labels == OBANPY_STATES


# --------------------------------------------------------------------------------------------
# CLI


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oban_pro", "migrate", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=_python_env(),
        cwd=REPO,
    )


def test_cli_status_up_down(oban_dsn: str, oban_empty_prefix: str) -> None:
    p = oban_empty_prefix
    load_fixture(oban_dsn, p, "elixir_v14")
    status = run_cli("status", "--dsn", oban_dsn, "--prefix", p)
    assert status.returncode == 0, status.stderr
    assert "layout:          elixir" in status.stdout
    assert "version comment: 14" in status.stdout
    assert f"create table {p}.oban_leaders" in status.stdout

    up = run_cli("up", "--dsn", oban_dsn, "--prefix", p)
    assert up.returncode == 0, up.stderr
    assert f"create table {p}.oban_producers" in up.stdout
    assert "up would do nothing" in run_cli("status", "--dsn", oban_dsn, "--prefix", p).stdout

    down = run_cli("down", "--dsn", oban_dsn, "--prefix", p)
    assert down.returncode == 0, down.stderr
    assert f"drop table {p}.oban_leaders" in down.stdout


def test_cli_down_refusal_exits_1(oban_dsn: str, oban_prefix: str) -> None:
    execute(oban_dsn, f"INSERT INTO {oban_prefix}.oban_jobs (worker) VALUES ('W')")
    down = run_cli("down", "--dsn", oban_dsn, "--prefix", oban_prefix)
    assert down.returncode == 1 and "--force" in down.stderr
    forced = run_cli("down", "--dsn", oban_dsn, "--prefix", oban_prefix, "--force")
    assert forced.returncode == 0, forced.stderr


def test_cli_prefix_from_environment(oban_dsn: str, oban_prefix: str) -> None:
    env = _python_env() | {"OBAN_PREFIX": oban_prefix}
    result = subprocess.run(
        [sys.executable, "-m", "oban_pro", "migrate", "status", "--dsn", oban_dsn],
        capture_output=True, text=True, timeout=60, env=env, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"prefix:          {oban_prefix}" in result.stdout


def test_cli_hostile_prefix_exits_2(oban_dsn: str) -> None:
    result = run_cli("status", "--dsn", oban_dsn, "--prefix", 'x"; drop table y; --')
    assert result.returncode == 2
    assert "invalid prefix" in result.stderr


# --------------------------------------------------------------------------------------------
# Files and packaging


def test_migration_files_are_well_formed() -> None:
    found = m.load_migrations()
    on_disk = sorted(path.stem for path in (REPO / "migrations").glob("*.sql"))
    assert [mig.name for mig in found] == on_disk
    assert [mig.version for mig in found] == list(range(1, len(found) + 1))
    for mig in found:
        sql = mig.render("some_schema")
        assert not any(token in sql for token in ("{prefix}", "{schema}", "{marker}")), mig.name
        assert f"'oban_pro:{mig.name}'" in sql
        assert "TRIGGER" not in sql.upper().replace("NO TRIGGERS", "")


def test_source_checkout_reads_the_top_level_folder() -> None:
    import oban_pro

    source = m.migrations_source()
    if Path(oban_pro.__file__).resolve().is_relative_to(REPO):
        assert Path(str(source)) == REPO / "migrations"


def _build_wheel(out: Path) -> Path:
    """Build the wheel with `build` (or pip), without network when hatchling is installed."""
    offline = importlib.util.find_spec("hatchling") is not None
    if importlib.util.find_spec("build") is not None:
        cmd = [sys.executable, "-m", "build", "--wheel", "--outdir", str(out)]
        cmd += ["--no-isolation"] if offline else []
    else:
        cmd = [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-w", str(out)]
        cmd += ["--no-build-isolation"] if offline else []
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = out.glob("oban_pro-*.whl")
    return wheel


_LIST_INSTALLED = r"""
import json, oban_pro, oban_pro.migrations as m
print(json.dumps({
    "package": oban_pro.__file__,
    "source": str(m.migrations_source()),
    "files": {mig.name: mig.template for mig in m.load_migrations()},
}))
"""


@pytest.mark.timeout(180)
def test_installed_wheel_carries_the_migrations(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path / "dist")
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(target)}
    listed = subprocess.run(
        [sys.executable, "-c", _LIST_INSTALLED],
        capture_output=True, text=True, timeout=60, cwd=elsewhere, env=env,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    found = json.loads(listed.stdout)
    assert Path(found["package"]).resolve().is_relative_to(target.resolve())
    assert Path(found["source"]) == target / "oban_pro" / "_migrations"
    expected = {p.stem: p.read_text() for p in (REPO / "migrations").glob("*.sql")}
    assert found["files"] == expected
