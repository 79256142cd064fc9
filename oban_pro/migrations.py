"""Create, adopt and remove the Oban tables in one PostgreSQL schema (the *prefix*).

The SQL lives in versioned files (``migrations/vNNN_<name>.sql`` in a source checkout, carried
inside the wheel as ``oban_pro/_migrations``). Each file names the objects it creates in header
lines (``-- creates: table oban_peers``) and creates each one only when it is missing, so every
file is idempotent on its own. On an empty schema they build exactly Elixir Oban's version-14
layout (compat.md §1) plus Oban.py's ``oban_leaders`` and ``oban_producers``, and oban_pro's
``oban_rate_limits`` (the windows of rate-limited queues).

Rules, and why:

- **Adopt, never alter.** An ``oban_jobs`` made by Elixir Oban or by Oban.py is used as it is:
  ``up`` adds only the *tables* (and the enum type) that are missing. It never rewrites a column
  type, reorders the enum, adds indexes or constraints to someone else's table, or touches its
  comment. Creating indexes on a live, large table would lock it; and each engine's own
  migrations expect to find their table the way they left it.
- **The version comment.** Elixir reads ``COMMENT ON TABLE oban_jobs`` as the migration version it
  reached. oban_pro writes ``'14'`` only on an ``oban_jobs`` it has just created itself (same
  statement, same transaction), so it can never lower or overwrite a comment. An Oban.py schema
  keeps whatever it has: no comment stays no comment, and Oban.py's own ``'1'`` stays ``'1'``.
  Stamping ``'14'`` on a table that lacks Elixir's 128-character checks and GIN indexes would tell
  Elixir that V01..V14 ran and make it skip them for good; leaving it alone means Elixir's
  migrator fails loudly instead (its V02 finds ``worker_length`` already there), which is the
  honest outcome for a table Elixir did not make.
- **Ownership markers (what ``down`` may drop).** Every object oban_pro creates carries a comment
  ``'oban_pro:<migration name>'``: on the *primary-key constraint* of each table it creates, on the
  enum type, and on the schema when it had to create the schema. ``down`` drops exactly the
  objects carrying such a marker, nothing else; there is no bookkeeping table, so adopting an
  Elixir schema adds only ``oban_leaders``, ``oban_producers`` and ``oban_rate_limits``. The
  marker never goes on ``oban_jobs`` itself or its columns: Elixir looks its version up by
  joining ``pg_description`` on the table's oid alone, and a second comment row with that oid
  (a column comment) would make it read version 0 and re-run every migration.
- **Data is safe.** ``down`` refuses to drop an ``oban_jobs`` that holds rows unless
  ``force=True`` (``--force``). The other tables hold only leases, heartbeats and rate windows.
- **One at a time.** ``up`` and ``down`` run in one transaction holding
  ``pg_advisory_xact_lock`` on a key derived from the prefix, so nodes that migrate at the same
  time queue up and all but the first find nothing to do. Given an open connection already inside
  a transaction, the migration joins it (as a savepoint) and the lock is held until the caller
  commits. Run it at READ COMMITTED (the default): each statement must see what the previous
  lock holder committed.
- **Hostile prefixes** are refused by :func:`oban_pro.naming.validate_prefix` before any
  connection is made; the prefix reaches SQL only as a quoted identifier or a string literal.

Layouts reported by :func:`detect_layout`: ``"empty"`` (no ``oban_jobs``), ``"oban_pro"`` (made
by these migrations), ``"elixir"`` (``errors jsonb[]``), ``"obanpy"`` (``errors jsonb``) and
``"unknown"`` (an ``oban_jobs`` with neither, which ``up`` refuses to adopt).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

import psycopg
from psycopg import errors as pg_errors

from .errors import MigrationError
from .naming import quote_ident, validate_prefix

log = logging.getLogger(__name__)

__all__ = [
    "Migration",
    "MigrationStatus",
    "available_migrations",
    "detect_layout",
    "load_migrations",
    "migrate",
    "migrate_down",
    "migrate_up",
    "migration_status",
    "migrations_source",
]

#: Comment prefix that marks an object as made by oban_pro (see the module docstring).
MARKER_PREFIX = "oban_pro:"
#: Marker written on a schema that ``up`` had to create.
SCHEMA_MARKER = MARKER_PREFIX + "schema"
#: The Elixir migration version that the v001 layout is equal to.
ELIXIR_VERSION = 14

LAYOUTS = ("empty", "oban_pro", "elixir", "obanpy", "unknown")

#: Columns oban_pro reads or writes; an adopted oban_jobs must have every one of them.
REQUIRED_JOB_COLUMNS = (
    "id", "state", "queue", "worker", "args", "errors", "attempt", "max_attempts",
    "inserted_at", "scheduled_at", "attempted_at", "completed_at", "discarded_at",
    "cancelled_at", "attempted_by", "priority", "tags", "meta",
)  # fmt: skip

_FILE_RE = re.compile(r"v(?P<version>\d{3})_(?P<slug>[a-z0-9_]+)\.sql")
_CREATES_RE = re.compile(r"^--\s*creates:\s*(?P<kind>table|type)\s+(?P<name>[a-z_][a-z0-9_]*)\s*$")
_PLACEHOLDERS = ("{prefix}", "{schema}", "{marker}")


# --------------------------------------------------------------------------------------------
# Migration files


@dataclass(frozen=True)
class DbObject:
    """A schema object a migration creates: ``kind`` is ``"table"`` or ``"type"``."""

    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


@dataclass(frozen=True)
class Migration:
    """One versioned SQL file: its name (file stem), version, SQL template and what it creates."""

    name: str
    version: int
    template: str
    creates: tuple[DbObject, ...]

    @property
    def marker(self) -> str:
        """The comment that marks the objects this migration created."""
        return MARKER_PREFIX + self.name

    def render(self, prefix: str) -> str:
        """The SQL with the placeholders filled in for ``prefix`` (validated here again)."""
        prefix = validate_prefix(prefix)
        return (
            self.template.replace("{prefix}", quote_ident(prefix))
            .replace("{schema}", _literal(prefix))
            .replace("{marker}", _literal(self.marker))
        )


def _literal(text: str) -> str:
    """A SQL string literal (standard_conforming_strings: only quotes need doubling)."""
    return "'" + text.replace("'", "''") + "'"


def migrations_source() -> Traversable:
    """The folder the migration files are read from.

    An installed wheel carries them as ``oban_pro/_migrations``; a source or editable checkout
    reads the top-level ``migrations/`` folder beside the package.
    """
    packaged = resources.files("oban_pro") / "_migrations"
    if packaged.is_dir():
        return packaged
    import oban_pro

    return Path(oban_pro.__file__).resolve().parent.parent / "migrations"


def _parse_creates(template: str) -> tuple[DbObject, ...]:
    objects = []
    for line in template.splitlines():
        match = _CREATES_RE.match(line.strip())
        if match:
            objects.append(DbObject(match["kind"], match["name"]))
    return tuple(objects)


def _parse_migration(filename: str, template: str) -> Migration:
    match = _FILE_RE.fullmatch(filename)
    if not match:
        raise MigrationError(f"migration file {filename!r} is not named vNNN_<name>.sql")
    creates = _parse_creates(template)
    if not creates:
        raise MigrationError(f"migration {filename} has no '-- creates: table|type NAME' lines")
    return Migration(filename[:-4], int(match["version"]), template, creates)


def load_migrations(source: Traversable | None = None) -> list[Migration]:
    """Every migration file in ``source`` (default :func:`migrations_source`), by version."""
    folder = source if source is not None else migrations_source()
    if not folder.is_dir():
        raise MigrationError(f"migration folder {folder} not found: is oban_pro installed fully?")
    migrations = [
        _parse_migration(entry.name, entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    ]
    migrations.sort(key=lambda m: m.version)
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version number in {folder}")
    return migrations


def available_migrations() -> list[str]:
    """Names of the migrations this installation carries, in order (e.g. ``v001_oban_jobs``)."""
    return [m.name for m in load_migrations()]


# --------------------------------------------------------------------------------------------
# What the catalog holds


@dataclass
class SchemaFacts:
    """What one prefix holds, as far as the migrations care (read by :func:`_inspect`)."""

    prefix: str
    schema_exists: bool = False
    schema_comment: str | None = None
    #: table name -> comment on its primary-key constraint (the ownership marker), or None
    tables: dict[str, str | None] = field(default_factory=dict)
    #: type name -> comment (the ownership marker), or None
    types: dict[str, str | None] = field(default_factory=dict)
    jobs_comment: str | None = None
    #: oban_jobs column name -> format_type text
    job_columns: dict[str, str] = field(default_factory=dict)
    enum_labels: list[str] = field(default_factory=list)

    def has(self, obj: DbObject) -> bool:
        """Whether ``obj`` exists in the prefix (whoever made it)."""
        return obj.name in (self.tables if obj.kind == "table" else self.types)

    def marker_of(self, obj: DbObject) -> str | None:
        """The comment that would mark ``obj`` as oban_pro's (see the module docstring)."""
        return (self.tables if obj.kind == "table" else self.types).get(obj.name)

    def made_by_oban_pro(self, obj: DbObject) -> bool:
        """Whether ``obj`` carries an oban_pro marker, i.e. ``down`` may drop it."""
        marker = self.marker_of(obj)
        return bool(marker and marker.startswith(MARKER_PREFIX))


_TABLES_SQL = """
SELECT c.relname,
       (SELECT obj_description(k.oid, 'pg_constraint')
          FROM pg_constraint k
         WHERE k.conrelid = c.oid AND k.contype = 'p') AS marker,
       obj_description(c.oid, 'pg_class') AS table_comment
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND c.relname LIKE 'oban%%'
"""

_TYPES_SQL = """
SELECT t.typname, obj_description(t.oid, 'pg_type')
FROM pg_type t
JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname = %s AND t.typname LIKE 'oban%%'
"""

_COLUMNS_SQL = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = 'oban_jobs' AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

_ENUM_SQL = """
SELECT e.enumlabel
FROM pg_enum e
JOIN pg_type t ON t.oid = e.enumtypid
JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname = %s AND t.typname = 'oban_job_state'
ORDER BY e.enumsortorder
"""


def _inspect(conn: psycopg.Connection, prefix: str) -> SchemaFacts:
    facts = SchemaFacts(prefix)
    row = conn.execute(
        "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = %s",
        (prefix,),
    ).fetchone()
    if row is None:
        return facts
    facts.schema_exists, facts.schema_comment = True, row[0]
    for name, marker, table_comment in conn.execute(_TABLES_SQL, (prefix,)):
        facts.tables[name] = marker
        if name == "oban_jobs":
            facts.jobs_comment = table_comment
    facts.types = dict(conn.execute(_TYPES_SQL, (prefix,)).fetchall())
    facts.job_columns = dict(conn.execute(_COLUMNS_SQL, (prefix,)).fetchall())
    facts.enum_labels = [label for (label,) in conn.execute(_ENUM_SQL, (prefix,))]
    return facts


def _parse_version(comment: str | None) -> int | None:
    """Elixir's version marker: the table comment when it is a whole number, else None."""
    if comment is not None and comment.strip().isdigit():
        return int(comment.strip())
    return None


def _layout(facts: SchemaFacts) -> str:
    if "oban_jobs" not in facts.tables:
        return "empty"
    if facts.made_by_oban_pro(DbObject("table", "oban_jobs")):
        return "oban_pro"
    errors_type = facts.job_columns.get("errors")
    if errors_type == "jsonb[]":
        return "elixir"
    if errors_type == "jsonb":
        return "obanpy"
    return "unknown"


def _problems(facts: SchemaFacts, layout: str) -> list[str]:
    """Reasons why oban_pro cannot use (and ``up`` refuses to adopt) an existing oban_jobs."""
    if layout in ("empty", "oban_pro"):
        return []
    table = f"{facts.prefix}.oban_jobs"
    if layout == "unknown":
        errors_type = facts.job_columns.get("errors", "missing")
        return [
            f"{table} has an errors column of type {errors_type}, neither Elixir's jsonb[] nor "
            "Oban.py's jsonb: it was not made by an Oban engine oban_pro knows"
        ]
    missing = [name for name in REQUIRED_JOB_COLUMNS if name not in facts.job_columns]
    if not missing:
        return []
    hint = (
        f"run Elixir Oban's migrations up to version {ELIXIR_VERSION} first"
        if layout == "elixir"
        else "upgrade it with the engine that made it first"
    )
    return [
        f"{table} lacks the columns {', '.join(missing)}; oban_pro never alters a table it did "
        f"not create: {hint}"
    ]


# --------------------------------------------------------------------------------------------
# Plans


@dataclass(frozen=True)
class _Step:
    """One object ``up`` would create, and the migration that creates it."""

    migration: Migration
    obj: DbObject

    def describe(self, prefix: str) -> str:
        unlogged = " (UNLOGGED)" if self.obj.name in _UNLOGGED_TABLES else ""
        return f"create {self.obj.kind} {prefix}.{self.obj.name}{unlogged} [{self.migration.name}]"


_UNLOGGED_TABLES = frozenset({"oban_peers", "oban_leaders", "oban_producers"})


def _plan_up(facts: SchemaFacts, migrations: Sequence[Migration]) -> list[_Step]:
    return [
        _Step(migration, obj)
        for migration in migrations
        for obj in migration.creates
        if not facts.has(obj)
    ]


def _describe_plan(facts: SchemaFacts, steps: Sequence[_Step]) -> list[str]:
    lines = [] if facts.schema_exists else [f"create schema {facts.prefix}"]
    lines += [step.describe(facts.prefix) for step in steps]
    if any(step.obj == DbObject("table", "oban_jobs") for step in steps):
        lines.append(f"set the Elixir version comment on {facts.prefix}.oban_jobs to '14'")
    return lines


def _plan_down(facts: SchemaFacts, migrations: Sequence[Migration]) -> list[DbObject]:
    """Objects carrying an oban_pro marker, in the order to drop them (reverse of creation)."""
    return [
        obj
        for migration in reversed(migrations)
        for obj in reversed(migration.creates)
        if facts.made_by_oban_pro(obj)
    ]


# --------------------------------------------------------------------------------------------
# Connections and locking


@contextmanager
def _connection(conn_or_dsn: str | psycopg.Connection) -> Iterator[psycopg.Connection]:
    """Use the caller's open connection, or open (and close) one from a DSN."""
    if isinstance(conn_or_dsn, psycopg.Connection):
        yield conn_or_dsn
    elif isinstance(conn_or_dsn, str):
        with psycopg.connect(conn_or_dsn, autocommit=True) as conn:
            yield conn
    else:
        raise TypeError(f"expected a DSN string or a psycopg.Connection, got {conn_or_dsn!r}")


def lock_key(prefix: str) -> int:
    """The advisory-lock key for migrating ``prefix``: stable across processes and versions."""
    digest = hashlib.sha256(f"oban_pro.migrations:{prefix}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _lock(conn: psycopg.Connection, prefix: str) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(prefix),))


# --------------------------------------------------------------------------------------------
# Public API


@dataclass(frozen=True)
class MigrationStatus:
    """What a prefix holds and what :func:`migrate_up` would do there."""

    prefix: str
    #: one of :data:`LAYOUTS`
    layout: str
    #: Elixir's version marker (the oban_jobs table comment), when it is a number
    version: int | None
    #: human-readable actions ``up`` would take; empty when up to date
    pending: list[str]
    #: ``"jsonb[]"`` (Elixir/oban_pro), ``"jsonb"`` (Oban.py), None without oban_jobs
    errors_column_type: str | None
    #: oban_job_state labels in enum order
    enum_labels: list[str] = field(default_factory=list)
    #: objects carrying an oban_pro marker, in creation order: what ``down`` would drop
    created_by_oban_pro: list[str] = field(default_factory=list)
    #: reasons oban_pro cannot use this schema; ``up`` raises MigrationError while any remain
    problems: list[str] = field(default_factory=list)

    @property
    def up_to_date(self) -> bool:
        return not self.pending and not self.problems


def _status_from(facts: SchemaFacts, migrations: Sequence[Migration]) -> MigrationStatus:
    layout = _layout(facts)
    problems = _problems(facts, layout)
    return MigrationStatus(
        prefix=facts.prefix,
        layout=layout,
        version=_parse_version(facts.jobs_comment),
        pending=[] if problems else _describe_plan(facts, _plan_up(facts, migrations)),
        errors_column_type=facts.job_columns.get("errors"),
        enum_labels=list(facts.enum_labels),
        created_by_oban_pro=[str(obj) for obj in reversed(_plan_down(facts, migrations))],
        problems=problems,
    )


def migration_status(
    conn_or_dsn: str | psycopg.Connection, prefix: str = "public"
) -> MigrationStatus:
    """Report the layout found in ``prefix`` and what :func:`migrate_up` would do. Read-only."""
    prefix = validate_prefix(prefix)
    migrations = load_migrations()
    with _connection(conn_or_dsn) as conn, conn.transaction(force_rollback=True):
        return _status_from(_inspect(conn, prefix), migrations)


def detect_layout(conn_or_dsn: str | psycopg.Connection, prefix: str = "public") -> str:
    """Which engine made ``prefix``'s oban_jobs: one of :data:`LAYOUTS`."""
    prefix = validate_prefix(prefix)
    with _connection(conn_or_dsn) as conn, conn.transaction(force_rollback=True):
        return _layout(_inspect(conn, prefix))


def _create_schema(conn: psycopg.Connection, prefix: str) -> None:
    quoted = quote_ident(prefix)
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
    conn.execute(f"COMMENT ON SCHEMA {quoted} IS {_literal(SCHEMA_MARKER)}")


def migrate_up(conn_or_dsn: str | psycopg.Connection, prefix: str = "public") -> list[str]:
    """Create whatever of the Oban tables ``prefix`` lacks; return the actions taken.

    Idempotent: on an up-to-date schema it returns ``[]`` and changes nothing. Raises
    :class:`~oban_pro.errors.InvalidPrefixError` for an unsafe prefix (before connecting) and
    :class:`~oban_pro.errors.MigrationError` when an existing oban_jobs cannot be adopted.
    """
    prefix = validate_prefix(prefix)
    migrations = load_migrations()
    with _connection(conn_or_dsn) as conn, conn.transaction():
        _lock(conn, prefix)
        facts = _inspect(conn, prefix)
        problems = _problems(facts, _layout(facts))
        if problems:
            raise MigrationError("; ".join(problems))
        steps = _plan_up(facts, migrations)
        actions = _describe_plan(facts, steps)
        if not facts.schema_exists:
            _create_schema(conn, prefix)
        for migration in migrations:
            if any(step.migration is migration for step in steps):
                conn.execute(migration.render(prefix))
        _check_done(conn, prefix, migrations)
    for action in actions:
        log.info("oban_pro migrate up: %s", action)
    return actions


def _check_done(conn: psycopg.Connection, prefix: str, migrations: Sequence[Migration]) -> None:
    """Fail the transaction if a migration file did not create what its header promises."""
    left = _plan_up(_inspect(conn, prefix), migrations)
    if left:
        missing = ", ".join(str(step.obj) for step in left)
        raise MigrationError(f"migrations ran but {prefix} still lacks: {missing}")


def _job_count(conn: psycopg.Connection, prefix: str, cap: int = 10_000) -> int:
    """Rows in oban_jobs, counted up to ``cap`` (enough to refuse; cheap on huge tables)."""
    row = conn.execute(
        f"SELECT count(*) FROM (SELECT 1 FROM {quote_ident(prefix)}.oban_jobs LIMIT %s) AS s",
        (cap,),
    ).fetchone()
    return int(row[0]) if row else 0


def _refuse_data_loss(conn: psycopg.Connection, prefix: str, targets: Sequence[DbObject]) -> None:
    if DbObject("table", "oban_jobs") not in targets:
        return
    count = _job_count(conn, prefix)
    if count:
        shown = f"{count}+" if count >= 10_000 else str(count)
        raise MigrationError(
            f"{prefix}.oban_jobs holds {shown} jobs; refusing to drop it. Pass force=True "
            "(oban-pro migrate down --force) to drop the table and its jobs"
        )


def _drop(conn: psycopg.Connection, prefix: str, obj: DbObject) -> None:
    statement = f"DROP {obj.kind.upper()} {quote_ident(prefix)}.{quote_ident(obj.name)}"
    try:
        with conn.transaction():
            conn.execute(statement)
    except pg_errors.DependentObjectsStillExist as exc:
        raise MigrationError(f"cannot drop {obj} in {prefix}: {exc.diag.message_detail}") from exc


def _drop_schema_if_ours(conn: psycopg.Connection, facts: SchemaFacts) -> list[str]:
    """Drop the schema when ``up`` created it and it is now empty; keep it otherwise."""
    if facts.prefix == "public" or facts.schema_comment != SCHEMA_MARKER:
        return []
    try:
        with conn.transaction():
            conn.execute(f"DROP SCHEMA {quote_ident(facts.prefix)}")
    except pg_errors.DependentObjectsStillExist:
        return []  # it holds other objects now: it is no longer only ours
    return [f"drop schema {facts.prefix}"]


def migrate_down(
    conn_or_dsn: str | psycopg.Connection, prefix: str = "public", force: bool = False
) -> list[str]:
    """Drop what oban_pro's migrations created in ``prefix`` (and only that); return the actions.

    Objects another engine made are kept, so on an Elixir schema this drops only
    ``oban_leaders`` and ``oban_producers``. Refuses (:class:`~oban_pro.errors.MigrationError`)
    to drop an ``oban_jobs`` that holds jobs unless ``force`` is true.
    """
    prefix = validate_prefix(prefix)
    migrations = load_migrations()
    with _connection(conn_or_dsn) as conn, conn.transaction():
        _lock(conn, prefix)
        facts = _inspect(conn, prefix)
        if not facts.schema_exists:
            return []
        targets = _plan_down(facts, migrations)
        if not force:
            _refuse_data_loss(conn, prefix, targets)
        actions = []
        for obj in targets:
            _drop(conn, prefix, obj)
            actions.append(f"drop {obj.kind} {prefix}.{obj.name}")
        actions += _drop_schema_if_ours(conn, facts)
    for action in actions:
        log.info("oban_pro migrate down: %s", action)
    return actions


#: Alias: ``migrate(dsn)`` brings a schema up to date.
migrate = migrate_up
