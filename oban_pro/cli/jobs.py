"""``oban-pro jobs list|retry|cancel|delete``: look at and act on job rows."""

from __future__ import annotations

import argparse
import json
import os

from . import EXIT_FAILURE, EXIT_OK, add_database_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("jobs", help="list, retry, cancel or delete jobs")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="list recent jobs")
    add_database_args(listing)
    listing.add_argument("--state", default=None, help="only this state")
    listing.add_argument("--queue", default=None, help="only this queue")
    listing.add_argument("--limit", type=int, default=20, help="rows to show (20)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(func=run_list)
    for name, text in (
        ("retry", "make jobs available again"),
        ("cancel", "cancel jobs (running ones are stopped)"),
        ("delete", "delete jobs that are not executing"),
    ):
        action = actions.add_parser(name, help=text)
        add_database_args(action)
        action.add_argument("ids", nargs="+", type=int, metavar="ID")
        action.set_defaults(func=run_action, verb=name)


def _client(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from ..client import Client
    from ..database import resolve_dsn

    return Client(
        resolve_dsn(args.dsn), prefix=args.prefix or os.environ.get("OBAN_PREFIX") or "public"
    )


def run_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        jobs = client.list_jobs(state=args.state, queue=args.queue, limit=args.limit)
    for job in jobs:
        if args.json:
            print(
                json.dumps(
                    {
                        "id": job.id,
                        "state": job.state,
                        "queue": job.queue,
                        "worker": job.worker,
                        "attempt": job.attempt,
                        "max_attempts": job.max_attempts,
                        "args": job.args,
                    },
                    default=str,
                )
            )
        else:
            print(
                f"{job.id:>10}  {job.state:<10} {job.queue:<12} {job.worker:<40} "
                f"{job.attempt}/{job.max_attempts}  {json.dumps(job.args)[:60]}"
            )
    if not args.json:
        print(f"{len(jobs)} jobs")
    return EXIT_OK


def run_action(args: argparse.Namespace) -> int:
    with _client(args) as client:
        method = {
            "retry": client.retry_jobs,
            "cancel": client.cancel_jobs,
            "delete": client.delete_jobs,
        }[args.verb]
        done = method(args.ids)
    missed = sorted(set(args.ids) - set(done))
    print(f"{args.verb}: {len(done)} of {len(args.ids)} jobs")
    if missed:
        print(
            f"not changed (missing, or in a state that does not allow {args.verb}): "
            f"{', '.join(map(str, missed))}"
        )
    return EXIT_OK if not missed else EXIT_FAILURE
