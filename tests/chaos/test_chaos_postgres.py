"""PostgreSQL restarted under load: nodes reconnect, every job completes, no ack is lost.

Uses the session's embedded server (``oban_embedded.stop()`` / ``.start()``); skipped when the
tests run against an external server (``OBAN_TEST_DSN``).
"""

from __future__ import annotations

import time

import pytest

from chaos.chaos_workers import Nap, Quick, read_runs

from .conftest import all_done, job_states, leader, producers, rows_by_id, runs_by_id, wait_for

pytestmark = pytest.mark.chaos


def _warnings_after(node, mark: int) -> bool:
    text = node.log_text()[mark:]
    return " WARNING " in text or " ERROR " in text


def _restart(oban_embedded, nodes, down_for: float) -> float:
    """Stop the server; keep it down until every node has noticed (a warning in its log) and
    at least ``down_for`` seconds have passed; start it again. Returns the outage length."""
    marks = [len(n.log_text()) for n in nodes]
    stopped = time.monotonic()
    oban_embedded.stop()
    try:
        wait_for(
            lambda: all(_warnings_after(n, m) for n, m in zip(nodes, marks, strict=True)),
            30,
            "every node to notice the outage",
        )
        remaining = down_for - (time.monotonic() - stopped)
        if remaining > 0:
            time.sleep(remaining)  # the scenario's outage length, not a synchronisation
    finally:
        oban_embedded.start()
    return time.monotonic() - stopped


def _check_exactly_once(dsn, prefix, ids, log):
    rows = rows_by_id(dsn, prefix, ids)
    runs = runs_by_id(read_runs(log))
    twice = {i: runs[i] for i in ids if len(runs[i]) != 1}
    rescued = {i: rows[i]["errors"] for i in ids if rows[i]["meta"].get("rescued")}
    assert not twice, f"jobs not run exactly once: {twice}; rescued: {rescued}"
    assert not rescued, f"live nodes' jobs were rescued: {rescued}"
    assert all(r["attempt"] == 1 and not r["errors"] for r in rows.values())


@pytest.fixture
def embedded(oban_embedded):
    if oban_embedded is None:
        pytest.skip("needs the embedded server (OBAN_TEST_DSN points at an external one)")
    return oban_embedded


def test_postgres_restart_under_load(oban_dsn, oban_prefix, tmp_path, nodes, client, embedded):
    """A quick restart (well under heartbeat_ttl) in the middle of 1,500 jobs: nodes
    reconnect, every job completes exactly once (so no ack was lost: a lost ack would leave its
    job executing until rescued and run again), heartbeats and notifications resume."""
    dsn, prefix, log = oban_dsn, oban_prefix, tmp_path / "runs"
    # A long ttl: this test is about reconnecting, not about liveness across an outage.
    # A long poll: after the restart only a (re-established) notification wakes a producer fast.
    settings = {"heartbeat_ttl": 10.0, "poll_interval": 5.0}
    a = nodes.start("a", settings=settings)
    b = nodes.start("b", settings=settings)
    jobs = client.enqueue_many(
        [
            Nap.new({"log": str(log), "seconds": 0.5})
            if i % 50 == 0
            else Quick.new({"log": str(log)})
            for i in range(1500)
        ]
    )
    ids = [j.id for j in jobs]
    wait_for(lambda: job_states(dsn, prefix, ids).get("completed", 0) >= 300, 60, "300 completed")
    client.close()  # its connection dies with the server
    outage = _restart(embedded, [a, b], down_for=1.0)
    print(f"\npostgres down for {outage:.2f}s")

    wait_for(
        lambda: all_done(dsn, prefix, ids),
        120,
        f"all jobs completed (now {dict(job_states(dsn, prefix, ids))})",
    )
    _check_exactly_once(dsn, prefix, ids, log)
    assert a.proc.poll() is None and b.proc.poll() is None
    # heartbeats resumed: both producers fresh
    wait_for(
        lambda: sorted(n for n, _q, age in producers(dsn, prefix) if age < 2.0) == ["a", "b"],
        10,
        "fresh heartbeats from a and b",
    )
    wait_for(lambda: leader(dsn, prefix) in ("a", "b"), 10, "a leader again")
    # notifications resumed: a new job starts well before the 5 s poll would find it
    started = time.monotonic()
    job = client.enqueue(Quick.new({"log": str(log)}))
    wait_for(lambda: all_done(dsn, prefix, [job.id]), 10, "the job enqueued after the restart")
    assert time.monotonic() - started < 3.0, "woken by a notification, not by the 5 s poll"


def test_outage_longer_than_heartbeat_ttl_rescues_nothing_alive(
    oban_dsn, oban_prefix, tmp_path, nodes, client, embedded
):
    """PostgreSQL down for longer than heartbeat_ttl while three nodes run long jobs. No node
    died, so when the server returns no job may be rescued or run twice (design.md invariant 2:
    a job whose node is alive is never rescued). Timings are ordinary ones (a heartbeat every
    1 s, a producer dead after 3 s of silence); the lifeline runs often, as a leader may."""
    dsn, prefix, log = oban_dsn, oban_prefix, tmp_path / "runs"
    ttl = 3.0
    settings = {"heartbeat_interval": 1.0, "heartbeat_ttl": ttl, "lifeline_interval": 0.1,
                "leader_ttl": 3.0}  # fmt: skip
    a = nodes.start("a", settings=settings)
    wait_for(lambda: leader(dsn, prefix) == "a", 15, "a to lead")
    others = [nodes.start(name, settings=settings) for name in ("b", "c")]
    long_jobs = client.enqueue_many([Nap.new({"log": str(log), "seconds": 12.0}) for _ in range(6)])
    ids = [j.id for j in long_jobs]
    wait_for(lambda: job_states(dsn, prefix, ids).get("executing") == 6, 15, "6 long jobs running")
    assert {r["attempted_by"][0] for r in rows_by_id(dsn, prefix, ids).values()} == {"a", "b", "c"}
    client.close()
    outage = _restart(embedded, [a, *others], down_for=ttl + 2.0)
    print(f"\npostgres down for {outage:.2f}s (heartbeat_ttl {ttl}s)")
    wait_for(lambda: all_done(dsn, prefix, ids), 60,
             f"long jobs completed (now {dict(job_states(dsn, prefix, ids))})")  # fmt: skip
    _check_exactly_once(dsn, prefix, ids, log)


def test_outage_with_a_pool_that_reconnects_late_rescues_nothing_alive(
    oban_dsn, oban_prefix, tmp_path, nodes, client, embedded
):
    """Issue 9's cause, on purpose: node c's database pool reconnects 8 s after the server is
    back (psycopg_pool's backoff was seen doing that), longer than heartbeat_ttl. Its heartbeat
    has a connection of its own that retries every second, so c is never judged dead and none
    of the long jobs runs twice."""
    dsn, prefix, log = oban_dsn, oban_prefix, tmp_path / "runs"
    ttl = 3.0
    settings = {"heartbeat_interval": 1.0, "heartbeat_ttl": ttl, "lifeline_interval": 0.1,
                "leader_ttl": 3.0}  # fmt: skip
    a = nodes.start("a", settings=settings)
    wait_for(lambda: leader(dsn, prefix) == "a", 15, "a to lead")
    b = nodes.start("b", settings=settings)
    slow = {**settings, "test_pool_reconnect_delay": 8.0}
    c = nodes.start("c", settings=slow, imports=["chaos.chaos_workers", "chaos.slow_pool"])
    long_jobs = client.enqueue_many([Nap.new({"log": str(log), "seconds": 16.0}) for _ in range(6)])
    ids = [j.id for j in long_jobs]
    wait_for(lambda: job_states(dsn, prefix, ids).get("executing") == 6, 30, "6 long jobs running")
    assert "c" in {r["attempted_by"][0] for r in rows_by_id(dsn, prefix, ids).values()}
    client.close()
    outage = _restart(embedded, [a, b, c], down_for=ttl + 2.0)
    print(f"\npostgres down for {outage:.2f}s (heartbeat_ttl {ttl}s)")
    wait_for(lambda: all_done(dsn, prefix, ids), 60,
             f"long jobs completed (now {dict(job_states(dsn, prefix, ids))})")  # fmt: skip
    _check_exactly_once(dsn, prefix, ids, log)
    assert "registered it again" not in c.log_text()
