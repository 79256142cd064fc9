"""``oban-pro start``: run a node until SIGTERM / SIGINT.

SIGTERM or a first SIGINT stops gracefully: no more fetching, running jobs get up to
``--shutdown-timeout`` seconds, then children stop, finished work is acked, unfinished jobs go
back to ``available`` at once, producer rows are deleted and leadership is resigned (exit 0).
A second SIGINT stops immediately (exit 130): children are killed and their jobs released.

Cron workers (Oban.py's behaviour): modules named by ``--cron-modules`` are imported, and those
found under ``--cron-paths`` that declare ``@worker``/``@job`` with ``cron=``. With neither, and
no ``--import``, the current directory is searched. ``--dry-run`` checks the configuration and
imports those modules, then exits without touching the database.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout

from ..config import Config, load_config
from ..errors import SchemaNotReadyError
from ..logs import configure_logging
from . import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, add_database_args

log = logging.getLogger(__name__)

# flag -> (config field, help). Every flag also reads OBAN_<FIELD>.
FLAGS: dict[str, tuple[str, str]] = {
    "--queues": ("queues", "queues and limits, e.g. default:10,media:4"),
    "--processes": ("processes", "worker processes (default: CPU count)"),
    "--node": ("node", "node name (default: host name)"),
    "--name": ("name", "instance name (default Oban)"),
    "--shutdown-timeout": ("shutdown_timeout", "seconds running jobs get on shutdown (15)"),
    "--max-jobs-per-child": ("max_jobs_per_child", "recycle a child after N jobs (0 = never)"),
    "--max-memory": ("max_memory", "recycle/kill a child past this RSS, e.g. 512MiB (0 = off)"),
    "--max-crashes": ("max_crashes", "discard a job after it killed its child N times (3)"),
    "--job-timeout": ("job_timeout", "default per-job timeout in seconds (0 = none)"),
    "--threads": ("threads", "threads per child for sync jobs (0 = sum of queue limits)"),
    "--kill-grace": ("kill_grace", "seconds a stopped job gets before its child is killed (3)"),
    "--cancel-grace": (
        "cancel_grace",
        "seconds a cancelled job gets to see job.cancelled() and return (1)",
    ),
    "--isolated-queues": ("isolated_queues", "queues whose jobs each run alone in a child"),
    "--memory-ceiling": ("memory_ceiling", "kill a draining child past this RSS (1.5x max)"),
    "--start-method": ("start_method", "forkserver (default), spawn or fork"),
    "--metrics-port": ("metrics_port", "serve Prometheus /metrics on this port"),
    "--metrics-host": ("metrics_host", "address for /metrics (127.0.0.1)"),
    "--pool-min-size": ("pool_min_size", "connections the pool keeps open (1)"),
    "--pool-max-size": ("pool_size", "most connections the pool opens (4; env OBAN_POOL_MAX_SIZE)"),
    "--cron-modules": ("cron_modules", "modules with cron workers, comma-separated"),
    "--cron-paths": ("cron_paths", "folders to search for cron workers, comma-separated"),
    "--log-level": ("log_level", "debug, info, warning, error (info)"),
    "--log-format": ("log_format", "text or json (text)"),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "start",
        help="run a node",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit codes: 0 clean stop, 1 runtime failure, 2 bad configuration, "
        "130 second interrupt. Every flag also reads OBAN_<NAME> (e.g. OBAN_QUEUES).",
    )
    add_node_args(parser)
    parser.set_defaults(func=run)


def add_node_args(parser: argparse.ArgumentParser) -> None:
    add_database_args(parser)
    parser.add_argument("--config", default=None, help="TOML file (default ./oban.toml)")
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=None,
        metavar="MODULE",
        help="module defining workers/cron (repeatable)",
    )
    for flag, (_field, text) in FLAGS.items():
        parser.add_argument(flag, default=None, help=text)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the configuration and import the cron modules, then exit (no database)",
    )


def config_from_args(args: argparse.Namespace, **extra: Any) -> Config:
    overrides: dict[str, Any] = {"dsn": args.dsn, "prefix": args.prefix, **extra}
    if getattr(args, "imports", None):
        overrides["imports"] = args.imports
    for flag, (field, _text) in FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value is not None:
            overrides[field] = value
    config = load_config(overrides, config_file=args.config)
    if not (config.imports or config.cron_modules or config.cron_paths):
        # As Oban.py's `oban start`: look for cron workers in the current directory.
        config.cron_paths = ["."]
    return config


def dry_run(config: Config) -> int:
    """Import what a start would import (workers and cron modules), then report."""
    import importlib

    from ..oban import import_cron_modules
    from ..worker import cron_entries

    for module in config.imports:
        importlib.import_module(module)
    modules = import_cron_modules(config.cron_modules, config.cron_paths)
    queues = ", ".join(f"{q}:{n}" for q, n in config.queues.items()) or "none"
    print(
        f"dry run: configuration is valid; queues {queues}; {len(modules)} cron modules "
        f"imported ({', '.join(modules) or 'none'}); {len(cron_entries())} cron entries"
    )
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    configure_logging(config.log_level, config.log_format, config.node)
    if getattr(args, "dry_run", False):
        return dry_run(config)
    if not config.queues:
        print(
            "oban-pro start: no queues configured (use --queues default:10 or OBAN_QUEUES)",
            file=sys.stderr,
        )
        return 2
    try:
        return asyncio.run(serve(config))
    except (OSError, TimeoutError, psycopg.OperationalError, PoolTimeout) as exc:
        log.error("could not start the node: %s (is the database at --dsn reachable?)", exc)
        return EXIT_FAILURE
    except SchemaNotReadyError as exc:
        log.error("could not start the node: %s", exc)
        return EXIT_FAILURE


async def serve(config: Config) -> int:
    from ..database import resolve_dsn
    from ..oban import Oban

    config.dsn = config.dsn or resolve_dsn(None)
    oban = Oban(config=config)
    stop = asyncio.Event()
    interrupts = 0

    def on_signal(signum: int) -> None:
        nonlocal interrupts
        interrupts += 1 if signum == signal.SIGINT else 0
        if interrupts >= 2:
            log.warning("second interrupt: stopping immediately")
            oban.config.shutdown_timeout = 0
        else:
            log.info("received %s: stopping gracefully", signal.Signals(signum).name)
        stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await oban.start()
    queues = ", ".join(f"{q}:{n}" for q, n in config.queues.items())
    log.info("node %s running queues %s on %d processes", config.node, queues, config.processes)
    await stop.wait()
    stopping = asyncio.create_task(oban.stop())
    while not stopping.done():
        # a second interrupt while stopping cuts the grace period short
        await asyncio.wait({stopping}, timeout=0.1)
        if interrupts >= 2:
            oban.config.shutdown_timeout = 0
            oban.stop_now()
    await stopping
    log.info("node %s stopped", config.node)
    return EXIT_INTERRUPTED if interrupts >= 2 else EXIT_OK
