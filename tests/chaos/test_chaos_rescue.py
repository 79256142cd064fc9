"""Node death and liveness: kill -9 a node under load; long jobs on live nodes never run twice."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest

from chaos.chaos_workers import Burn, Hang, Nap, Quick, read_runs

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

HEARTBEAT_TTL = 2.0
LIFELINE_INTERVAL = 0.5
#: Allowance on top of heartbeat_ttl + lifeline_interval for a loaded 2-core machine.
RESCUE_SLACK = 2.5


def test_kill_9_node_under_load(oban_dsn, oban_prefix, tmp_path, nodes, client):
    """2,000 jobs (20 of them 1.5 s long) on two nodes; kill -9 one mid-run. Every job
    completes on the survivor, none is lost, and the only jobs that ran twice are the ones the
    dead node was running, each attempt exactly once; rescue comes within heartbeat_ttl +
    lifeline_interval (+ slack)."""
    dsn, prefix, log = oban_dsn, oban_prefix, tmp_path / "runs"
    timings = {"heartbeat_ttl": HEARTBEAT_TTL, "lifeline_interval": LIFELINE_INTERVAL}
    # b starts first and leads, so the rescue measured is the lifeline's, not a lease expiry.
    b = nodes.start("b", processes=3, settings=timings)
    wait_for(lambda: leader(dsn, prefix) == "b", 15, "b to lead")
    a = nodes.start("a", processes=3, settings=timings)

    jobs = client.enqueue_many(
        [
            Nap.new({"log": str(log), "seconds": 1.5})
            if i % 100 == 0
            else Quick.new({"log": str(log)})
            for i in range(2000)
        ]
    )
    ids = [j.id for j in jobs]
    long_ids = {j.id for j in jobs if j.worker == Nap._worker_name}

    # Under load, with a long job running on a: kill -9 its coordinator.
    wait_for(
        lambda: (
            executing_on(dsn, prefix, "a", Nap._worker_name)
            and job_states(dsn, prefix, ids).get("completed", 0) >= 300
        ),
        60,
        "a long job running on node a after 300 completions",
    )
    a_pids = a.worker_pids()
    killed_at = a.kill9()
    time.sleep(0.5)  # an ack statement in flight at the kill has committed by now
    held = set(executing_on(dsn, prefix, "a"))  # well before heartbeat_ttl: nothing rescued yet

    # Rescue: the moment no job is left executing under the dead node.
    wait_for(
        lambda: not executing_on(dsn, prefix, "a"), 30, "a's jobs to be rescued", interval=0.02
    )
    rescue_seconds = time.time() - killed_at

    # The dead node's worker processes notice by themselves and stop (a running job is never
    # left executing beside its rescued copy).
    wait_for(lambda: not a.known_alive(), 10, f"node a's processes to exit: {a.known_alive()}")

    wait_for(
        lambda: all_done(dsn, prefix, ids),
        120,
        f"2,000 jobs completed (now {dict(job_states(dsn, prefix, ids))})",
    )
    rows = rows_by_id(dsn, prefix, ids)
    runs = runs_by_id(read_runs(log))
    b_pids = b.worker_pids()

    rescued = {i for i, r in rows.items() if r["meta"].get("rescued")}
    restarted = [at for i in rescued for attempt, _pid, at in runs[i] if attempt >= 2]
    first_restart = min(restarted) - killed_at if restarted else float("nan")
    print(
        f"\nkill -9 -> rescue: {rescue_seconds:.2f}s; kill -9 -> first rescued job started on "
        f"b: {first_restart:.2f}s; rescued {len(rescued)} jobs "
        f"({len(rescued & long_ids)} long)"
    )

    assert rescue_seconds <= HEARTBEAT_TTL + LIFELINE_INTERVAL + RESCUE_SLACK, rescue_seconds
    assert rescued, "the node was killed while running jobs, so some must have been rescued"
    assert rescued & long_ids, "the long job running on a at the kill was rescued"

    # None lost: every job ran; each attempt ran at most once; duplicates only for rescued jobs.
    assert set(runs) == set(ids)
    for job_id, row in rows.items():
        attempts = Counter(attempt for attempt, _pid, _at in runs[job_id])
        assert max(attempts.values()) == 1, (job_id, runs[job_id])
        assert row["attempt"] == 1 + row["meta"].get("rescued", 0), (job_id, row)
        if len(runs[job_id]) > 1:
            assert job_id in rescued, (job_id, runs[job_id], row)
    for job_id in rescued:
        row = rows[job_id]
        assert row["meta"]["rescued"] == 1 and row["attempt"] == 2, row
        assert "node a " in row["errors"][-1]["error"], row["errors"]
        assert row["attempted_by"][0] == "b"
        # the final attempt ran on the survivor; an earlier one (if any started) on a
        assert runs[job_id][-1][1] in b_pids, runs[job_id]
        assert all(pid in a_pids for _a, pid, _t in runs[job_id][:-1]), runs[job_id]
    # Exactly the jobs the dead node held are rescued: the ones it was running (up to its limit
    # of 10) and the ones it finished but had not acked yet (how many depends on the machine's
    # speed, so no count is asserted: a bound of 15 failed one run in five under load).
    assert rescued == held, (sorted(rescued - held), sorted(held - rescued))


def test_long_jobs_on_live_nodes_never_run_twice(oban_dsn, oban_prefix, tmp_path, nodes, client):
    """Jobs running 3x heartbeat_ttl (sleeping and CPU-bound, the CPU ones saturating both
    cores) while the lifeline runs every 0.5 s: none is rescued or run twice."""
    dsn, prefix, log = oban_dsn, oban_prefix, tmp_path / "runs"
    seconds = HEARTBEAT_TTL * 3 + 1.0
    settings = {"heartbeat_ttl": HEARTBEAT_TTL, "lifeline_interval": LIFELINE_INTERVAL}
    # Limit 3 per node: neither node can take all 4 long jobs, and each keeps room for quick ones.
    a = nodes.start("a", processes=3, settings=settings, queues="default:3")
    b = nodes.start("b", processes=3, settings=settings, queues="default:3")
    wait_for(lambda: leader(dsn, prefix) in ("a", "b"), 15, "a leader (it runs the lifeline)")
    long_jobs = client.enqueue_many(
        [Nap.new({"log": str(log), "seconds": seconds}) for _ in range(2)]
        + [Burn.new({"log": str(log), "seconds": seconds}) for _ in range(2)]
    )
    wait_for(
        lambda: job_states(dsn, prefix, [j.id for j in long_jobs]).get("executing") == 4,
        15,
        "4 long jobs executing",
    )
    quick = client.enqueue_many([Quick.new({"log": str(log)}) for _ in range(300)])
    ids = [j.id for j in long_jobs + quick]
    wait_for(
        lambda: all_done(dsn, prefix, ids),
        60,
        f"all jobs completed (now {dict(job_states(dsn, prefix, ids))})",
    )

    rows = rows_by_id(dsn, prefix, ids)
    runs = runs_by_id(read_runs(log))
    for job in long_jobs:
        row = rows[job.id]
        assert row["attempt"] == 1 and not row["errors"], row
        assert "rescued" not in row["meta"], row
        assert len(runs[job.id]) == 1, runs[job.id]
    assert {rows[j.id]["attempted_by"][0] for j in long_jobs} == {"a", "b"}
    assert all(len(runs[i]) == 1 and rows[i]["attempt"] == 1 for i in ids)
    for node in (a, b):
        assert "rescued" not in node.log_text(), node.log_text()[-3000:]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_a_node_that_learns_its_job_was_rescued_stops_its_copy(
    oban_dsn, oban_prefix, tmp_path, nodes, client
):
    """Node a is frozen (SIGSTOP) for longer than heartbeat_ttl while running a job: by every
    rule a silent node is gone, so the leader b rescues the job and runs it again. When a wakes,
    its first heartbeat learns that the row is no longer its attempt and stops its local copy at
    once, so the two copies never both finish; its stale state writes nothing to the row."""
    dsn, prefix, log = oban_dsn, oban_prefix, tmp_path / "runs"
    release, ends = tmp_path / "release", tmp_path / "ends"
    b = nodes.start("b", settings={"heartbeat_ttl": HEARTBEAT_TTL})
    wait_for(lambda: leader(dsn, prefix) == "b", 15, "b to lead")
    a = nodes.start("a", queues="default:1", settings={"heartbeat_ttl": HEARTBEAT_TTL})
    # b may take it first: pause b's queue locally by giving it nothing until a holds the job.
    b.proc.send_signal(signal.SIGSTOP)
    try:
        job = client.enqueue(Hang.new({"log": str(log), "release": str(release),
                                       "ends": str(ends)}))  # fmt: skip
        wait_for(lambda: executing_on(dsn, prefix, "a"), 15, "a to run the job")
        wait_for(lambda: read_runs(log), 15, "the first copy to start")
    finally:
        b.proc.send_signal(signal.SIGCONT)
    first_pid = read_runs(log)[0][2]
    a.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: executing_on(dsn, prefix, "b"), 30, "b to rescue and run the job")
    finally:
        a.proc.send_signal(signal.SIGCONT)
    # The copy stops cooperatively (an exception raised in its thread: it logs its end), or
    # its child is killed after the kill grace.
    wait_for(
        lambda: any(r[1] == 1 for r in read_runs(ends)) or not _pid_alive(first_pid),
        15,
        "a to stop its rescued copy",
    )
    assert not release.exists()
    assert "stopping its local copy" in a.log_text()
    row = rows_by_id(dsn, prefix, [job.id])[job.id]
    assert row["state"] == "executing" and row["attempted_by"][0] == "b" and row["attempt"] == 2
    release.write_text("go")
    wait_for(lambda: all_done(dsn, prefix, [job.id]), 15, "the second copy to complete")
    row = rows_by_id(dsn, prefix, [job.id])[job.id]
    assert row["meta"]["rescued"] == 1 and row["attempt"] == 2
    assert [(attempt, pid) for attempt, pid, _ in runs_by_id(read_runs(log))[job.id]][0] == (
        1,
        first_pid,
    )
