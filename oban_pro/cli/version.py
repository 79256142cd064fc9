"""``oban-pro version``."""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    try:
        return version("oban-pro")
    except PackageNotFoundError:  # running from a source tree
        return "0+unknown"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("version", help="print the version")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(f"oban-pro {package_version()}")
    return 0
