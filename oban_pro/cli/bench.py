"""``oban-pro bench <scenario>``: the load benchmarks of a source checkout.

The benchmarks live in the ``bench/`` folder at the root of the repository (beside ``oban_pro/``;
they are not part of the installed wheel). This command finds that folder (the checkout this
package was imported from, or the current directory), puts it on ``sys.path`` and hands over to
``bench.cli``, exactly as ``python -m bench`` does. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from types import ModuleType

from . import EXIT_USAGE

NOT_FOUND = (
    "oban-pro bench: the benchmarks were not found. They live in the bench/ folder of a source "
    "checkout of oban_pro (not in the installed package): run this command from the root of a "
    "checkout (git clone, then `pip install -e '.[bench]'`), or run `python -m bench` there."
)


def _roots() -> list[Path]:
    here = Path(__file__).resolve()
    return [here.parents[2], Path.cwd()]


def find_bench() -> ModuleType | None:
    """Import the ``bench`` package of a source checkout, or return None."""
    for root in _roots():
        if (root / "bench" / "__init__.py").is_file() and (root / "bench" / "cli.py").is_file():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            try:
                module = importlib.import_module("bench")
            except ImportError:
                continue
            if getattr(module, "ensure_importable", None) is None:
                continue  # some other package called bench
            module.ensure_importable()  # children and node processes import bench.workers
            return importlib.import_module("bench.cli")
    return None


def register(subparsers: argparse._SubParsersAction) -> None:
    cli = find_bench()
    if cli is None:
        parser = subparsers.add_parser(
            "bench", help="load benchmarks (needs a source checkout)", description=NOT_FOUND
        )
        parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        parser.set_defaults(func=_not_found)
        return
    parser = subparsers.add_parser(
        "bench",
        help="load benchmarks: throughput, cpu, latency, rescue, insert, peer",
        description="Load benchmarks (bench/ of the source checkout); results go to "
        "bench/results/. Same as `python -m bench`.",
    )
    cli.add_subcommands(parser)
    parser.set_defaults(func=cli.run_args)


def _not_found(args: argparse.Namespace) -> int:
    print(NOT_FOUND, file=sys.stderr)
    return EXIT_USAGE
