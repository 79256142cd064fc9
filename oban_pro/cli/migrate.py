"""``oban-pro migrate up|down|status``: create, remove or inspect the Oban tables in a prefix.

- ``up`` creates what the prefix lacks (Elixir's v14 layout plus ``oban_leaders`` and
  ``oban_producers``) and adopts an existing Elixir or Oban.py schema without altering it.
- ``down`` drops only what oban_pro's migrations created; ``--force`` also drops an
  ``oban_jobs`` that still holds jobs.
- ``status`` prints the layout found and what ``up`` would do; it changes nothing.

Exit codes: 0 ok; 1 the migration cannot run (e.g. ``down`` refused, database unreachable);
2 bad usage (e.g. an unsafe ``--prefix``). See :mod:`oban_pro.migrations` for the rules.
"""

from __future__ import annotations

import argparse
import os

from .. import migrations
from ..naming import validate_prefix

_LAYOUT_NAMES = {
    "empty": "empty (no oban_jobs table)",
    "oban_pro": "oban_pro (made by oban-pro migrate)",
    "elixir": "elixir (made by Elixir Oban's migrations; errors is jsonb[])",
    "obanpy": "obanpy (made by Oban.py's installer; errors is plain jsonb)",
    "unknown": "unknown (an oban_jobs no known engine made)",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``migrate`` subcommand."""
    from . import add_database_args  # the package module is fully loaded by the time we run

    parser = subparsers.add_parser(
        "migrate",
        help="create, remove or inspect the oban tables (up | down | status)",
        description=(
            "up: create what the prefix lacks (Elixir Oban's v14 layout plus oban_leaders and "
            "oban_producers), adopting an Elixir or Oban.py schema without altering it. "
            "down: drop only what oban_pro created. status: report the layout and what up "
            "would do."
        ),
        epilog="exit codes: 0 ok, 1 migration refused or failed, 2 bad usage (e.g. unsafe prefix)",
    )
    parser.add_argument(
        "action",
        choices=("up", "down", "status"),
        help="up: create what is missing; down: drop what oban_pro created; status: report",
    )
    add_database_args(parser)
    parser.add_argument(
        "--force",
        action="store_true",
        help="with down: drop oban_jobs even when it holds jobs (they are lost)",
    )
    parser.set_defaults(func=run)


def resolve_prefix(explicit: str | None) -> str:
    """--prefix > OBAN_PREFIX > ``prefix`` in oban.toml/pyproject > ``public``; validated."""
    prefix = explicit or os.environ.get("OBAN_PREFIX")
    if not prefix:
        from ..config import read_file_settings

        prefix = read_file_settings().get("prefix") or "public"
    return validate_prefix(prefix)


def run(args: argparse.Namespace) -> int:
    """Run one migrate action; returns the exit code (errors propagate to ``cli.main``)."""
    # Validate the prefix before resolving the DSN: a bad prefix must not start a server.
    prefix = resolve_prefix(args.prefix)
    from ..database import resolve_dsn

    dsn = resolve_dsn(args.dsn)
    if args.action == "status":
        print(format_status(migrations.migration_status(dsn, prefix)))
        return 0
    if args.action == "up":
        actions = migrations.migrate_up(dsn, prefix)
        print(_format_actions(f"migrate up ({prefix})", actions, "already up to date"))
        return 0
    actions = migrations.migrate_down(dsn, prefix, force=args.force)
    print(_format_actions(f"migrate down ({prefix})", actions, "nothing created by oban_pro"))
    return 0


def _format_actions(title: str, actions: list[str], nothing: str) -> str:
    if not actions:
        return f"{title}: {nothing}"
    return "\n".join([f"{title}:"] + [f"  - {action}" for action in actions])


def format_status(status: migrations.MigrationStatus) -> str:
    """The human-readable report ``oban-pro migrate status`` prints."""
    version = "none" if status.version is None else str(status.version)
    lines = [
        f"prefix:          {status.prefix}",
        f"layout:          {_LAYOUT_NAMES.get(status.layout, status.layout)}",
        f"version comment: {version}",
        f"errors column:   {status.errors_column_type or '-'}",
        f"job states:      {', '.join(status.enum_labels) or '-'}",
        f"made by oban_pro: {', '.join(status.created_by_oban_pro) or 'nothing'}",
    ]
    if status.problems:
        lines.append("problems (up refuses to run):")
        lines += [f"  - {problem}" for problem in status.problems]
    elif status.pending:
        lines.append("up would:")
        lines += [f"  - {action}" for action in status.pending]
    else:
        lines.append("up would do nothing: up to date")
    return "\n".join(lines)
