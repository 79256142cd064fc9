"""``python -m badge_forge``: Badge Forge's round trip on one database, with one command.

With no DSN (``--dsn``, ``OBAN_DSN``, ``DATABASE_URL``) it starts oban_pro's embedded
PostgreSQL. It migrates, plays the Elixir app's part (inserting ``GenerateBadge`` jobs exactly as
``Oban.insert/1`` does, see :mod:`badge_forge.elixir_side`), runs an oban_pro node serving queue
``badges`` on worker processes until every badge is rendered, and lists the
``BadgeForge.PrintCenter`` jobs left in queue ``printing`` for the Elixir app.

With ``--serve`` it only runs the node, for a real Elixir app that shares the database
(Ctrl-C or SIGTERM stops it). Exit code 0 when every badge was forged, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import psycopg

from oban_pro import Oban
from oban_pro.database import resolve_dsn
from oban_pro.migrations import migrate_up

from . import elixir_side
from .generator import OUTPUT_VARIABLE, PRINT_CENTER, PRINT_QUEUE

EXIT_OK, EXIT_FAILURE = 0, 1

DESCRIPTION = """\
Badge Forge's round trip on one database: plays the Elixir app (inserts GenerateBadge jobs in
queue badges as Oban.insert/1 does), runs an oban_pro node that renders each badge to a PDF on
its worker processes, and lists the BadgeForge.PrintCenter jobs it enqueued in queue printing
for the Elixir app. With no --dsn, OBAN_DSN or DATABASE_URL it uses oban_pro's embedded
PostgreSQL. --serve runs only the Python node, for a real Elixir app on the same database.
Exit code 0 when every badge was forged, 1 otherwise."""

SAMPLE_ATTENDEES = ["Ada Lovelace", "José Valim", "Grace Hopper", "Guido van Rossum"]

FINAL_STATES = ("completed", "discarded", "cancelled")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m badge_forge",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("names", nargs="*", help="attendees to forge badges for "
                        f"(default: {', '.join(SAMPLE_ATTENDEES)})")  # fmt: skip
    parser.add_argument("--dsn", help="PostgreSQL DSN (default: OBAN_DSN, DATABASE_URL, embedded)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get(OUTPUT_VARIABLE, "badges")),
        help=f"folder for the PDFs (default: ${OUTPUT_VARIABLE} or ./badges)",
    )
    parser.add_argument("--processes", type=int, default=2, help="worker processes (2)")
    parser.add_argument(
        "--serve", action="store_true", help="only run the Python node (the Elixir app enqueues)"
    )
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for the badges (120)")  # fmt: skip
    return parser.parse_args(argv)


def make_node(dsn: str, processes: int) -> Oban:
    """The Python node: serves ``badges`` only (``printing`` belongs to the Elixir app).

    It keeps the default name "Oban", which ``Oban.get_instance()`` in the worker looks up.
    """
    return Oban(
        dsn=dsn,
        queues={"badges": max(processes, 1) * 2},
        processes=processes,
        imports=["badge_forge.generator"],
    )


async def forge(dsn: str, names: list[str], processes: int, timeout: float) -> int:
    attendees = [{"id": str(uuid.uuid4()), "name": name} for name in names]
    with psycopg.connect(dsn, autocommit=True) as conn:
        job_ids = elixir_side.insert_badge_jobs(conn, attendees)
    print(f"the Elixir side enqueued {_jobs(len(job_ids), 'GenerateBadge')} in queue badges")
    started = time.monotonic()
    async with make_node(dsn, processes):
        states = await _wait_for_jobs(dsn, job_ids, timeout)
    took = time.monotonic() - started
    with psycopg.connect(dsn, autocommit=True) as conn:
        confirmations = elixir_side.print_jobs(conn, [a["id"] for a in attendees])
    by_id = {row["args"]["id"]: row for row in confirmations}
    for attendee in attendees:
        row = by_id.get(attendee["id"])
        where = row["args"]["path"] if row else "(no confirmation)"
        print(f"  {attendee['name']:<24} {where}")
    forged = sum(1 for state in states.values() if state == "completed")
    print(
        f"{forged}/{len(job_ids)} badges forged in {took:.1f}s on {processes} worker processes; "
        f"{_jobs(len(confirmations), PRINT_CENTER)} in queue {PRINT_QUEUE} for the Elixir app"
    )
    ok = forged == len(job_ids) and len(confirmations) == len(job_ids)
    return EXIT_OK if ok else EXIT_FAILURE


def _jobs(count: int, worker: str) -> str:
    return f"{count} {worker} job" + ("" if count == 1 else "s")


async def _wait_for_jobs(dsn: str, job_ids: list[int], timeout: float) -> dict[int, str]:
    """Each job's state once all are final (or when ``timeout`` passes)."""
    deadline = time.monotonic() + timeout
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while True:
            cur = await conn.execute(
                "SELECT id, state::text FROM public.oban_jobs WHERE id = ANY(%s)", (job_ids,)
            )
            states: dict[int, str] = {job_id: state for job_id, state in await cur.fetchall()}
            if all(states.get(i) in FINAL_STATES for i in job_ids):
                return states
            if time.monotonic() > deadline:
                print(f"timed out after {timeout:g}s; job states: {states}", file=sys.stderr)
                return states
            await asyncio.sleep(0.1)


async def serve(dsn: str, processes: int) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with make_node(dsn, processes):
        print("serving queue badges; Ctrl-C to stop", flush=True)
        await stop.wait()
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Set before the node starts its worker processes, which read it when a job runs.
    os.environ[OUTPUT_VARIABLE] = str(args.out.resolve())
    dsn = resolve_dsn(args.dsn)
    migrate_up(dsn)
    if args.serve:
        return asyncio.run(serve(dsn, args.processes))
    names = args.names or SAMPLE_ATTENDEES
    return asyncio.run(forge(dsn, names, args.processes, args.timeout))


if __name__ == "__main__":
    sys.exit(main())
