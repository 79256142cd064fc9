"""Command line of the benchmarks: ``python -m bench <scenario>`` (``oban-pro bench <scenario>``).

Exit codes: 0 done; 1 a scenario failed (e.g. duplicate executions in ``rescue``); 2 bad usage,
or ``peer`` found no Python >= 3.12.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .common import Options

SCENARIOS: dict[str, str] = {
    "throughput": "no-op jobs/s end to end at limits 10/50/100 and 1/2/N processes, vs SQL ceiling",
    "cpu": "CPU-bound ~20 ms pure-Python jobs: speedup over one process (ideal: core count)",
    "latency": "enqueue-to-start and enqueue-to-complete p50/p95/p99 on an idle node",
    "rescue": "kill -9 a node holding long jobs: seconds until they run again; duplicates",
    "insert": "enqueue / enqueue_many vs bare multi-row INSERT, executemany and COPY",
    "peer": "the same workloads on the open-source Oban.py and on oban_pro, A B A B, ratios",
    "limits": "global_limit bookkeeping cost (A B vs plain) and a rate limit's achieved rate",
    "workflow": "1 -> 10,000 -> 1 workflow vs 10,002 plain jobs (ratio), ack cost per step",
    "table_size": "the throughput drain from an empty table vs one with 1M other rows; fetch plan",
    "soak": "3 nodes, 200k mixed jobs under kill -9, PostgreSQL restarts, SIGSTOP: lost? twice?",
    "all": "every scenario above, one after another",
    "plot": "redraw the PNG of result JSON files (no benchmark is run)",
}
ORDER = ["throughput", "cpu", "latency", "rescue", "insert", "peer", "limits"]
# Run by hand (about 12 minutes), not by ``all``; its JSON can still be replotted.
EXTRA = ["soak", "workflow", "table_size"]


def common_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dsn",
        default=None,
        help="PostgreSQL DSN (default: OBAN_DSN / DATABASE_URL / embedded in ./.oban-pro)",
    )
    common.add_argument(
        "--size",
        type=int,
        default=None,
        help="workload size (jobs, samples or rows; see the scenario's help)",
    )
    common.add_argument(
        "--repeat", type=int, default=3, help="repetitions; tables show the median and min-max (3)"
    )
    common.add_argument(
        "--processes", type=int, default=None, help="worker processes N (default: the core count)"
    )
    common.add_argument(
        "--json",
        dest="json_path",
        default=None,
        help="write results here (default: bench/results/<scenario>.json)",
    )
    common.add_argument(
        "--plot",
        action="store_true",
        help="also write a PNG next to the JSON (needs matplotlib: the 'bench' extra)",
    )
    common.add_argument("--quiet", action="store_true", help="no table, no progress bar")
    return common


def add_subcommands(parser: argparse.ArgumentParser) -> None:
    """Add one subcommand per scenario to ``parser`` (used by ``oban-pro bench`` too)."""
    common = common_parser()
    sub = parser.add_subparsers(dest="scenario", metavar="SCENARIO")
    for name, help_text in SCENARIOS.items():
        if name == "plot":
            p = sub.add_parser(name, help=help_text, description=help_text)
            p.add_argument("files", nargs="+", help="result JSON files (bench/results/*.json)")
            continue
        if name == "all":
            p = sub.add_parser(
                name,
                help=help_text,
                parents=[common],
                description="Run every scenario with its defaults.",
            )
            p.add_argument("--skip", default="", help="comma-separated scenarios to leave out")
            continue
        module = importlib.import_module(f"bench.{name}")
        p = sub.add_parser(
            name,
            help=help_text,
            parents=[common],
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="oban_pro load benchmarks; results in bench/results/ (see bench/README.md)",
    )
    add_subcommands(parser)
    return parser


COMMON_KEYS = {"dsn", "size", "repeat", "processes", "json_path", "plot", "quiet"}


def run_args(args: argparse.Namespace) -> int:
    scenario = getattr(args, "scenario", None)
    if not scenario:
        build_parser().print_help()
        return 2
    if scenario == "plot":
        return replot(args.files)
    if args.repeat < 1:
        print("bench: --repeat must be >= 1", file=sys.stderr)
        return 2
    values = vars(args)
    extra = {
        k: v
        for k, v in values.items()
        if k not in COMMON_KEYS and k not in ("scenario", "func", "command", "skip")
    }
    opts = Options(scenario=scenario, extra=extra, **{k: values[k] for k in COMMON_KEYS})
    if scenario == "all":
        return _run_all(opts, [s for s in args.skip.split(",") if s])
    module = importlib.import_module(f"bench.{scenario}")
    return int(module.run(opts) or 0)


def replot(files: Sequence[str]) -> int:
    """Draw ``<file>.png`` from each result JSON with its scenario's plot."""
    import json

    for name in files:
        payload = json.loads(open(name).read())
        scenario = payload.get("scenario")
        if scenario not in ORDER + EXTRA:
            print(f"bench plot: {name} is not a benchmark result", file=sys.stderr)
            return 2
        module = importlib.import_module(f"bench.{scenario}")
        module._plot(Options(scenario=scenario, json_path=name), payload)
        print(f"wrote {name[: -len('.json')] if name.endswith('.json') else name}.png")
    return 0


def _run_all(opts: Options, skip: list[str]) -> int:
    worst = 0
    for name in ORDER:
        if name in skip:
            continue
        sub = Options(
            scenario=name,
            dsn=opts.dsn,
            size=None,
            repeat=opts.repeat,
            processes=opts.processes,
            json_path=None,
            plot=opts.plot,
            quiet=opts.quiet,
        )
        module = importlib.import_module(f"bench.{name}")
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        sub.extra = vars(parser.parse_args([]))
        code = int(module.run(sub) or 0)
        worst = max(worst, code)
    return worst


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_args(args)
