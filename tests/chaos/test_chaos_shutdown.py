"""Graceful shutdown under load: SIGTERM to a node process."""

from __future__ import annotations

import time

import pytest
from helpers import query

from chaos.chaos_workers import Hang, Nap, Quick, read_runs

from .conftest import (
    all_done,
    executing_on,
    job_states,
    leader,
    rows_by_id,
    runs_by_id,
    wait_for,
)

pytestmark = pytest.mark.chaos

SHUTDOWN_TIMEOUT = 3.0


def test_sigterm_under_load(oban_dsn, oban_prefix, tmp_path, nodes, client):
    """SIGTERM while 4 workers are busy and 1,000 jobs wait: exit code 0 soon after the grace
    period; jobs that finish in the grace period are acked; the rest are back to `available`
    at once with their attempt given back; producer rows deleted; leadership resigned; no
    process left. A second node then finishes everything: nothing lost, no ack lost."""
    dsn, prefix, log, release = oban_dsn, oban_prefix, tmp_path / "runs", tmp_path / "release"
    a = nodes.start("a", processes=4, queues="default:4", shutdown_timeout=SHUTDOWN_TIMEOUT)
    wait_for(lambda: leader(dsn, prefix) == "a", 15, "a to lead")
    hang = client.enqueue_many(
        [Hang.new({"log": str(log), "release": str(release), "max_seconds": 60}) for _ in range(2)]
    )
    quick = client.enqueue_many([Quick.new({"log": str(log)}, priority=1) for _ in range(1000)])
    wait_for(
        lambda: (
            len(executing_on(dsn, prefix, "a", Hang._worker_name)) == 2
            and job_states(dsn, prefix, [j.id for j in quick]).get("completed", 0) >= 100
        ),
        30,
        "2 hanging jobs and 100 quick ones done",
    )
    # Two jobs that finish within the grace period, started just before the SIGTERM.
    naps = client.enqueue_many([Nap.new({"log": str(log), "seconds": 1.0}) for _ in range(2)])
    wait_for(
        lambda: len(executing_on(dsn, prefix, "a", Nap._worker_name)) == 2,
        15,
        "the 1 s jobs to run",
    )
    ids = [j.id for j in hang + naps + quick]

    sent = time.monotonic()
    a.terminate()
    code = a.wait(SHUTDOWN_TIMEOUT + 15)
    took = time.monotonic() - sent
    print(f"\nSIGTERM -> exit {code} in {took:.2f}s (shutdown_timeout {SHUTDOWN_TIMEOUT}s)")
    assert code == 0, a.log_text()[-3000:]
    assert took < SHUTDOWN_TIMEOUT + 5

    # Right after exit, with no other node around: nothing executing, nothing waiting on a
    # lifeline.
    rows = rows_by_id(dsn, prefix, ids)
    assert [i for i, r in rows.items() if r["state"] == "executing"] == []
    for job in naps:
        assert rows[job.id]["state"] == "completed", rows[job.id]
    for job in hang:
        row = rows[job.id]
        assert row["state"] == "available" and row["attempt"] == 0, row
        assert row["errors"] == [] and "rescued" not in row["meta"], row
    for job in quick:
        row = rows[job.id]
        assert (row["state"], row["attempt"]) in (("completed", 1), ("available", 0)), row
    assert query(dsn, f'SELECT count(*) FROM "{prefix}".oban_producers')[0][0] == 0
    assert query(dsn, f'SELECT count(*) FROM "{prefix}".oban_leaders')[0][0] == 0
    wait_for(lambda: not a.known_alive(), 5, f"a's processes to exit: {a.known_alive()}")
    a_pids = a.worker_pids()

    # Another node finishes the rest: every job completes; only the released jobs ran twice.
    release.touch()
    b = nodes.start("b", processes=2)
    wait_for(
        lambda: all_done(dsn, prefix, ids),
        60,
        f"all jobs completed (now {dict(job_states(dsn, prefix, ids))})",
    )
    runs = runs_by_id(read_runs(log))
    b_pids = b.worker_pids()
    for job in hang:
        assert [(attempt, pid in a_pids, pid in b_pids) for attempt, pid, _ in runs[job.id]] == [
            (1, True, False),
            (1, False, True),
        ]
    assert {i: runs[i] for i in ids if len(runs[i]) != 1 and i not in {j.id for j in hang}} == {}
    assert all(r["attempt"] == 1 for r in rows_by_id(dsn, prefix, ids).values())


def test_sigterm_gives_back_isolated_jobs_on_deck_unrun(
    oban_dsn, oban_prefix, tmp_path, nodes, client
):
    """An isolated queue on 2 processes, both held by long jobs past the grace period: the next
    isolated jobs wait on deck in those children (and in the node's lines). SIGTERM: the node
    exits 0; none of them began; every job is back to `available` with its attempt given back
    (the long ones killed, the others handed back unrun); another node then runs each waiting
    job exactly once. (The pool's own test covers an on-deck job handed back while the job ahead
    ends within the grace.)"""
    dsn, prefix, log, release = oban_dsn, oban_prefix, tmp_path / "runs", tmp_path / "release"
    a = nodes.start(
        "a", processes=2, queues="default:6", shutdown_timeout=SHUTDOWN_TIMEOUT,
        settings={"isolated_queues": "default"},
    )  # fmt: skip
    hang = client.enqueue_many(
        [Hang.new({"log": str(log), "release": str(release), "max_seconds": 60}) for _ in range(2)]
    )
    wait_for(lambda: len(executing_on(dsn, prefix, "a", Hang._worker_name)) == 2, 15, "2 long jobs")
    quick = client.enqueue_many([Quick.new({"log": str(log)}, priority=1) for _ in range(10)])
    wait_for(lambda: len(executing_on(dsn, prefix, "a")) == 6, 15, "4 isolated jobs fetched behind")
    ids = [j.id for j in hang + quick]
    a.terminate()
    code = a.wait(SHUTDOWN_TIMEOUT + 15)
    assert code == 0, a.log_text()[-3000:]
    rows = rows_by_id(dsn, prefix, ids)
    assert {i: r["state"] for i, r in rows.items() if r["state"] != "available"} == {}
    assert all(r["attempt"] == 0 and r["errors"] == [] for r in rows.values()), rows
    quick_ids = {j.id for j in quick}
    assert [r for r in read_runs(log) if r[0] in quick_ids] == []  # none began on a

    release.touch()
    nodes.start("b", processes=2)
    wait_for(
        lambda: all_done(dsn, prefix, ids),
        60,
        f"all jobs completed (now {dict(job_states(dsn, prefix, ids))})",
    )
    runs = runs_by_id(read_runs(log))
    assert {i: len(runs[i]) for i in quick_ids if len(runs[i]) != 1} == {}
