"""``oban-pro status``: schema layout, leader, live producers and job counts per queue."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from . import EXIT_OK, add_database_args

if TYPE_CHECKING:
    from ..store import ClusterStatus


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("status", help="show schema, leader, producers and queues")
    add_database_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from ..database import resolve_dsn
    from ..migrations import migration_status

    dsn = resolve_dsn(args.dsn)
    prefix = args.prefix or os.environ.get("OBAN_PREFIX") or "public"
    status = migration_status(dsn, prefix=prefix)
    print(f"schema {prefix}: layout {status.layout}, version {status.version}")
    if status.pending:
        print("  migrate up would: " + "; ".join(status.pending))
    if status.layout == "empty":
        return EXIT_OK
    cluster = asyncio.run(_read_status(dsn, prefix))
    for leader in cluster.leaders:
        print(f"leader of {leader.name}: {leader.node} "
              f"(lease until {leader.expires_at:%Y-%m-%d %H:%M:%S}Z)")  # fmt: skip
    print(f"producers: {len(cluster.producers)}")
    for p in cluster.producers:
        print(f"  {p.node:<24} {p.queue:<16} {p.meta}  heartbeat {p.seconds_since_beat:.1f}s ago")
    by_queue: dict[str, dict[str, int]] = {}
    for queue, state, n in cluster.counts:
        by_queue.setdefault(queue, {})[state] = n
    for queue, states in sorted(by_queue.items()):
        print(f"queue {queue}: " + ", ".join(f"{s} {n}" for s, n in sorted(states.items())))
    return EXIT_OK


async def _read_status(dsn: str, prefix: str) -> ClusterStatus:
    from psycopg_pool import AsyncConnectionPool

    from ..queries import Queries
    from ..store import Store

    async with AsyncConnectionPool(
        dsn, min_size=1, max_size=1, open=False, kwargs={"autocommit": True}
    ) as pool:
        return await Store(pool, Queries(prefix)).cluster_status()
