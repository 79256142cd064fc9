"""The ``oban-pro`` command line (also ``python -m oban_pro``).

Each subcommand lives in its own module with ``register(subparsers)``; the module sets
``func`` on its parser, which returns the process exit code.

Exit codes: 0 success; 1 runtime failure (database unreachable, job errors in ``demo``);
2 bad usage or configuration; 130 interrupted twice (immediate stop).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ..errors import ObanError

SUBCOMMANDS = (
    "start",
    "install",
    "uninstall",
    "migrate",
    "status",
    "jobs",
    "workflows",
    "demo",
    "bench",
    "version",
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oban-pro",
        description=(
            "Oban-compatible PostgreSQL job engine that runs jobs on a pool of worker processes. "
            "With no --dsn (or OBAN_DSN / DATABASE_URL) an embedded PostgreSQL is started in "
            "./.oban-pro/."
        ),
        epilog=(
            "exit codes: 0 ok, 1 runtime failure, 2 bad usage or configuration, "
            "130 stopped by a second interrupt"
        ),
    )
    from .version import package_version

    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {package_version()}",
        help="print the version and exit",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        if name == "uninstall":
            continue  # registered by the install module
        try:
            module = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.endswith(f"cli.{name}"):
                continue  # subcommand not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except ObanError as exc:
        print(f"oban-pro: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ValueError) else EXIT_FAILURE


def add_database_args(parser: argparse.ArgumentParser) -> None:
    """--dsn and --prefix, shared by every subcommand that touches the database."""
    parser.add_argument(
        "--dsn",
        default=None,
        help="PostgreSQL DSN (env OBAN_DSN or DATABASE_URL; default: embedded)",
    )
    parser.add_argument(
        "--prefix",
        default=None,
        help="schema holding the oban tables (env OBAN_PREFIX; default public)",
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
