"""``oban-pro workflows status|jobs|cancel|retry ID``: look at and act on one workflow.

A workflow is every job whose meta carries its ``workflow_id``, with its sub-workflows.
Exit code 1 when no job carries the id.
"""

from __future__ import annotations

import argparse
import json

from . import EXIT_FAILURE, EXIT_OK, add_database_args
from .jobs import _client


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "workflows", help="status, jobs, cancel or retry of a workflow (by its workflow_id)"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text in (
        ("status", "counts per state, current state, start and finish times"),
        ("jobs", "the workflow's jobs (sub-workflows included)"),
        ("cancel", "cancel every unfinished job (running ones are stopped)"),
        ("retry", "retry the cancelled and discarded jobs"),
    ):
        action = actions.add_parser(name, help=text)
        add_database_args(action)
        action.add_argument("workflow_id", metavar="WORKFLOW_ID")
        action.add_argument("--json", action="store_true", help="print JSON")
        action.set_defaults(func=run, verb=name)


def run(args: argparse.Namespace) -> int:
    from ..errors import WorkflowError

    with _client(args) as client:
        try:
            if args.verb == "status":
                return _status(client.workflow_status(args.workflow_id), args.json)
            if args.verb == "jobs":
                return _jobs(client.workflow_jobs(args.workflow_id), args.json)
            client.workflow_status(args.workflow_id)  # exists?
            method = client.cancel_workflow if args.verb == "cancel" else client.retry_workflow
            ids = method(args.workflow_id)
        except WorkflowError as exc:
            print(f"error: {exc}")
            return EXIT_FAILURE
    if args.json:
        print(json.dumps({args.verb: ids}))
    else:
        done = "cancelled" if args.verb == "cancel" else "retried"
        print(f"{done} {len(ids)} jobs" + (f": {', '.join(map(str, ids))}" if ids else ""))
    return EXIT_OK


def _status(status, as_json: bool) -> int:  # type: ignore[no-untyped-def]
    if as_json:
        print(json.dumps(status.to_dict(), default=str))
        return EXIT_OK
    label = f" ({status.name})" if status.name else ""
    print(f"workflow {status.id}{label}: {status.state}, {status.total} jobs")
    print("  " + ", ".join(f"{state} {n}" for state, n in status.counts.items() if n))
    for field in ("inserted_at", "started_at", "finished_at"):
        print(f"  {field}: {getattr(status, field) or '-'}")
    return EXIT_OK


def _jobs(jobs, as_json: bool) -> int:  # type: ignore[no-untyped-def]
    if not jobs:
        print("error: no workflow with that id (no job carries it in meta)")
        return EXIT_FAILURE
    for job in jobs:
        meta = job.meta or {}
        if as_json:
            print(json.dumps({"id": job.id, "state": job.state, "name": meta.get("name"),
                              "deps": meta.get("deps", []), "workflow_id": meta.get("workflow_id"),
                              "worker": job.worker, "attempt": job.attempt}))  # fmt: skip
        else:
            deps = ",".join(meta.get("deps", [])) or "-"
            print(f"{job.id:>10}  {job.state:<10} {str(meta.get('name')):<20} deps={deps:<20} "
                  f"{job.worker}")  # fmt: skip
    if not as_json:
        print(f"{len(jobs)} jobs")
    return EXIT_OK
