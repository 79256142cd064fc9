"""``oban-pro status``: schema layout, leader, live producers and job counts per queue."""

from __future__ import annotations

import argparse
import os

from . import EXIT_OK, add_database_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("status", help="show schema, leader, producers and queues")
    add_database_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import psycopg

    from ..database import resolve_dsn
    from ..migrations import migration_status
    from ..queries import Queries

    dsn = resolve_dsn(args.dsn)
    prefix = args.prefix or os.environ.get("OBAN_PREFIX") or "public"
    status = migration_status(dsn, prefix=prefix)
    print(f"schema {prefix}: layout {status.layout}, version {status.version}")
    if status.pending:
        print("  migrate up would: " + "; ".join(status.pending))
    if status.layout == "empty":
        return EXIT_OK
    queries = Queries(prefix)
    with psycopg.connect(dsn, autocommit=True) as conn:
        leaders = conn.execute(queries.all_leaders).fetchall()
        producers = conn.execute(queries.all_producers).fetchall()
        counts = conn.execute(queries.queue_counts).fetchall()
    for name, node, expires in leaders:
        print(f"leader of {name}: {node} (lease until {expires:%Y-%m-%d %H:%M:%S}Z)")
    print(f"producers: {len(producers)}")
    for node, queue, meta, age in producers:
        print(f"  {node:<24} {queue:<16} {meta}  heartbeat {age:.1f}s ago")
    by_queue: dict[str, dict[str, int]] = {}
    for queue, state, n in counts:
        by_queue.setdefault(queue, {})[state] = n
    for queue, states in sorted(by_queue.items()):
        print(f"queue {queue}: " + ", ".join(f"{s} {n}" for s, n in sorted(states.items())))
    return EXIT_OK
