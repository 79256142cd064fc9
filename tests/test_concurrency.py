"""A queue's limit is the number of its jobs executing at once on the node (Oban's meaning),
whatever the number of processes; each child runs many jobs at once. Real PostgreSQL, real
worker processes; every count comes from the jobs' own start/stop log, never from a clock."""

from __future__ import annotations

import pytest
from engine_workers import AsyncHoldIo, HoldIo, IsolatedHoldIo, PoisonAmongOthers, StuckInCIo
from helpers import job_row, wait_until
from pool_workers import most_at_once, read_events
from test_engine import FAST

from oban_pro import Oban

pytestmark = pytest.mark.asyncio


def node(dsn: str, prefix: str, **overrides) -> Oban:
    opts = {**FAST, "queues": {"io": 50}, "name": f"Oban-{prefix}", **overrides}
    return Oban(dsn=dsn, prefix=prefix, node="n1", **opts)


async def all_in(dsn, prefix, jobs, state, timeout=60.0):
    ids = [j.id for j in jobs]
    await wait_until(
        lambda: all(job_row(dsn, prefix, i)["state"] == state for i in ids),
        timeout=timeout,
        message=f"{len(ids)} jobs {state}",
    )


@pytest.mark.parametrize("worker", [AsyncHoldIo, HoldIo], ids=["async", "sync_blocking"])
async def test_limit_50_runs_50_at_once_on_2_processes(oban_dsn, oban_prefix, tmp_path, worker):
    # Each job holds until 50 have started: they can only finish by running 50 at once.
    log = tmp_path / "log"
    async with node(oban_dsn, oban_prefix) as oban:
        assert oban.config.processes == 2 and oban.config.threads == 0  # defaults
        jobs = await oban.enqueue_many(
            [worker.new({"log": str(log), "until": 50, "max_seconds": 30}) for _ in range(50)]
        )
        await all_in(oban_dsn, oban_prefix, jobs, "completed")
    events = read_events(log)
    assert most_at_once(events) == 50
    assert len({pid for _, _, pid in events}) == 2


async def test_scaling_a_queue_up_lets_its_sync_jobs_reach_the_new_limit(
    oban_dsn, oban_prefix, tmp_path
):
    log = tmp_path / "log"
    async with node(oban_dsn, oban_prefix, processes=1, queues={"io": 2}) as oban:
        jobs = await oban.enqueue_many(
            [HoldIo.new({"log": str(log), "until": 20, "max_seconds": 30}) for _ in range(20)]
        )
        await wait_until(lambda: len(read_events(log)) == 2, message="2 running (the limit)")
        await oban.scale_queue("io", limit=20)
        await all_in(oban_dsn, oban_prefix, jobs, "completed")
        assert oban.runtime.worker_pool.threads == 20
    assert most_at_once(read_events(log)) == 20


async def test_limit_1_never_runs_two_at_once(oban_dsn, oban_prefix, tmp_path):
    log = tmp_path / "log"
    async with node(oban_dsn, oban_prefix, queues={"io": 1}) as oban:
        # Each job holds until a second one starts (it never should), at most 0.2 s.
        jobs = await oban.enqueue_many(
            [HoldIo.new({"log": str(log), "until": 2, "max_seconds": 0.2}) for _ in range(6)]
            + [AsyncHoldIo.new({"log": str(log), "until": 2, "max_seconds": 0.2})
               for _ in range(6)]
        )  # fmt: skip
        await all_in(oban_dsn, oban_prefix, jobs, "completed")
    events = read_events(log)
    assert len(events) == 24 and most_at_once(events) == 1


async def test_limit_equal_to_processes_puts_each_job_in_its_own_pid(
    oban_dsn, oban_prefix, tmp_path
):
    log = tmp_path / "log"
    async with node(oban_dsn, oban_prefix, queues={"io": 2}) as oban:
        for _ in range(3):
            jobs = await oban.enqueue_many(
                [HoldIo.new({"log": str(log), "until": 2, "max_seconds": 30}) for _ in range(2)]
            )
            await all_in(oban_dsn, oban_prefix, jobs, "completed")
            log_ids = {j.id for j in jobs}
            pids = {pid for what, job, pid in read_events(log) if job in log_ids}
            assert len(pids) == 2


async def test_an_isolated_worker_never_shares_a_child(oban_dsn, oban_prefix, tmp_path):
    log, release = tmp_path / "log", tmp_path / "release"
    async with node(oban_dsn, oban_prefix) as oban:
        args = {"log": str(log), "release": str(release), "max_seconds": 30}
        jobs = await oban.enqueue_many([HoldIo.new(args) for _ in range(6)])
        await wait_until(
            lambda: sum(e[0] == "start" for e in read_events(log)) == 6, message="6 started"
        )
        isolated = await oban.enqueue_many([IsolatedHoldIo.new(args) for _ in range(2)])
        more = await oban.enqueue_many([HoldIo.new(args) for _ in range(6)])
        await wait_until(
            lambda: sum(e[0] == "start" for e in read_events(log)) >= 12, message="12 started"
        )
        release.touch()
        await all_in(oban_dsn, oban_prefix, jobs + isolated + more, "completed")
    events = read_events(log)
    for iso in (j.id for j in isolated):
        pid = next(p for _, j, p in events if j == iso)
        inside = False
        for what, job, p in events:
            if job == iso:
                inside = what == "start"
            elif inside:
                assert p != pid, f"job {job} ran beside isolated job {iso}"


@pytest.mark.reliability
async def test_segfault_among_ten_charges_only_the_poison_job(oban_dsn, oban_prefix, tmp_path):
    """Nothing is lost; the 9 innocent jobs complete without being charged; the poison job is
    discarded after max_crashes crashes while alone in its child."""
    log, release = tmp_path / "log", tmp_path / "release"
    async with node(oban_dsn, oban_prefix, processes=1, max_crashes=2) as oban:
        innocent = await oban.enqueue_many(
            [HoldIo.new({"log": str(log), "release": str(release)}) for _ in range(9)]
        )
        poison = await oban.enqueue(
            PoisonAmongOthers.new({"log": str(log), "until": 10}, max_attempts=10)
        )
        # The child dies with all ten in it: each is given back, uncharged, to run isolated.
        await wait_until(
            lambda: all(job_row(oban_dsn, oban_prefix, j.id)["errors"] for j in innocent),
            message="the shared crash recorded on every innocent job",
        )
        release.touch()
        await all_in(oban_dsn, oban_prefix, innocent, "completed")
        # Alone in its child, the poison job is charged: crash 1, then (retried by hand rather
        # than waiting for its backoff) crash 2, which is max_crashes.
        await wait_until(
            lambda: job_row(oban_dsn, oban_prefix, poison.id)["state"] == "retryable",
            message="poison job charged once",
        )
        await oban.retry_job(poison.id)
        row = await wait_until(
            lambda: (r := job_row(oban_dsn, oban_prefix, poison.id))["state"] == "discarded" and r,
            message="poison job discarded",
        )
        assert row["meta"]["crashes"] == 2 and row["meta"]["isolate"] is True
        assert "given back without being charged" in row["errors"][0]["error"]
        assert "poison-job guard" in row["errors"][-1]["error"]
    for job in innocent:
        row = job_row(oban_dsn, oban_prefix, job.id)
        assert row["attempt"] == 1 and "crashes" not in row["meta"]
        assert row["meta"]["isolate"] is True  # it shared the crash, so it then ran alone
        error = row["errors"][0]["error"]
        assert "SIGSEGV" in error and "while running 10 jobs" in error, error


async def test_graceful_shutdown_releases_every_job_of_every_child(oban_dsn, oban_prefix, tmp_path):
    log = tmp_path / "log"
    oban = node(oban_dsn, oban_prefix, shutdown_timeout=0.5)
    await oban.start()
    try:
        args = {"log": str(log), "release": str(tmp_path / "never"), "max_seconds": 30}
        jobs = await oban.enqueue_many([HoldIo.new(args) for _ in range(10)])
        await wait_until(lambda: len(read_events(log)) == 10, message="10 running")
        assert len({pid for _, _, pid in read_events(log)}) == 2
    finally:
        await oban.stop()
    for job in jobs:
        row = job_row(oban_dsn, oban_prefix, job.id)
        assert row["state"] == "available" and row["attempt"] == 0


async def test_stop_job_for_a_rescued_job_stops_it_and_acks_nothing(
    oban_dsn, oban_prefix, tmp_path
):
    """What rescue needs: the running jobs with their attempt and producer, and a way to stop
    the local copy of one the database gave to someone else (nothing is acked for it)."""
    log = tmp_path / "log"
    async with node(oban_dsn, oban_prefix) as oban:
        args = {"log": str(log), "release": str(tmp_path / "never"), "max_seconds": 30}
        jobs = await oban.enqueue_many([HoldIo.new(args) for _ in range(3)])
        await wait_until(lambda: len(read_events(log)) == 3, message="3 running")
        runtime = oban.runtime
        uuid = oban.producers["io"].uuid
        assert sorted(runtime.running()) == sorted((j.id, 1, uuid) for j in jobs)
        rescued, others = jobs[0], jobs[1:]
        assert runtime.stop_job(rescued.id, "rescued") is True
        await wait_until(
            lambda: ("stop", rescued.id) in {(w, j) for w, j, _ in read_events(log)},
            message="the rescued job's local copy to stop",
        )
        await wait_until(lambda: len(runtime.running()) == 2, message="it left the ledger")
        assert runtime.stop_job(rescued.id, "rescued") is False
        await runtime.acker.flush(5)
        row = job_row(oban_dsn, oban_prefix, rescued.id)
        assert row["state"] == "executing" and not row["errors"]  # not ours to ack
        assert oban.kill_job(others[0].id) is True  # pkill: acked as cancelled
        await wait_until(
            lambda: job_row(oban_dsn, oban_prefix, others[0].id)["state"] == "cancelled",
            message="the pkilled job cancelled",
        )
        # The pool never killed a child for these: the cooperative stop worked.
        assert sum(oban.runtime.worker_pool.stats.restarts.values()) == 0


@pytest.mark.reliability
async def test_a_job_stuck_past_its_timeout_gets_its_child_killed_and_the_others_given_back(
    oban_dsn, oban_prefix, tmp_path
):
    """One of 10 jobs in one child times out in a blocking C call: it alone fails with the
    timeout; the 9 others are given back with their attempt (then run again and complete),
    each with an error entry naming the job that caused the kill, and none is charged."""
    log = tmp_path / "log"
    async with node(oban_dsn, oban_prefix, processes=1, kill_grace=0.3) as oban:
        # They hold until 10 jobs have started: the 9 and the stuck one, then again on the rerun.
        others = await oban.enqueue_many(
            [HoldIo.new({"log": str(log), "until": 19, "max_seconds": 30}) for _ in range(9)]
        )
        stuck = await oban.enqueue(StuckInCIo.new({"log": str(log)}, max_attempts=1))
        row = await wait_until(
            lambda: (r := job_row(oban_dsn, oban_prefix, stuck.id))["state"] == "discarded" and r,
            message="the stuck job failed",
        )
        assert "exceeded its timeout of 0.5 s" in row["errors"][0]["error"]
        assert "did not stop within the kill grace of 0.3 s" in row["errors"][0]["error"]
        await all_in(oban_dsn, oban_prefix, others, "completed")
    for job in others:
        row = job_row(oban_dsn, oban_prefix, job.id)
        assert row["attempt"] == 1 and "crashes" not in row["meta"], row  # attempt returned
        error = row["errors"][0]["error"]
        assert f"because job {stuck.id} (engine_workers.StuckInCIo)" in error, error
        assert "isolate" not in row["meta"]  # the culprit is known: nothing to isolate
