"""``oban-pro install`` / ``oban-pro uninstall``: Oban.py's schema commands.

- ``install`` is ``migrate up``: create what the prefix lacks, adopting an Elixir Oban or
  Oban.py schema without altering it (idempotent).
- ``uninstall`` drops what oban_pro created, *jobs included* (as Oban.py's ``uninstall`` does);
  tables another engine made are kept and listed. ``migrate down`` is the cautious form that
  refuses to drop jobs without ``--force``.

Both read ``--dsn`` > ``OBAN_DSN`` / ``DATABASE_URL`` > ``dsn`` in the config file (default
``./oban.toml``) > the embedded PostgreSQL, and ``--prefix`` > ``OBAN_PREFIX`` > ``prefix`` in
the config file > ``public``.
"""

from __future__ import annotations

import argparse

from . import EXIT_OK, add_database_args


def register(subparsers: argparse._SubParsersAction) -> None:
    for name, text in (
        ("install", "install the Oban tables (as `migrate up`)"),
        ("uninstall", "drop the Oban tables oban_pro created, jobs included"),
    ):
        parser = subparsers.add_parser(name, help=text, description=__doc__)
        add_database_args(parser)
        parser.add_argument("--config", default=None, help="TOML file (default ./oban.toml)")
        parser.set_defaults(func=run, action=name)


def run(args: argparse.Namespace) -> int:
    from .. import migrations
    from ..config import load_config
    from ..database import resolve_dsn
    from .migrate import _format_actions

    config = load_config({"dsn": args.dsn, "prefix": args.prefix}, config_file=args.config)
    dsn = resolve_dsn(config.dsn)
    prefix = config.prefix
    if args.action == "install":
        actions = migrations.migrate_up(dsn, prefix)
        print(_format_actions(f"install ({prefix})", actions, "already installed, up to date"))
        return EXIT_OK
    actions = migrations.migrate_down(dsn, prefix, force=True)
    print(_format_actions(f"uninstall ({prefix})", actions, "nothing created by oban_pro"))
    status = migrations.migration_status(dsn, prefix)
    if status.layout != "empty":
        print(
            f"kept {prefix}.oban_jobs and the other tables made by another engine "
            f"({status.layout}); oban_pro never drops what it did not create"
        )
    return EXIT_OK
