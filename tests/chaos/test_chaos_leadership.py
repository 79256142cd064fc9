"""Leadership failover (kill -9 the leader) and cron's once-per-minute guarantee across it."""

from __future__ import annotations

import asyncio
import importlib
import time
from datetime import UTC, datetime, timedelta

import pytest
from helpers import query

from chaos.chaos_workers import Hang, read_runs
from oban_pro import Oban
from oban_pro.cron import CronEntry
from oban_pro.plugins.scheduler import Scheduler

from .conftest import (
    all_done,
    duplicate_cron_minutes,
    executing_on,
    leader,
    rows_by_id,
    runs_by_id,
    wait_for,
)

pytestmark = pytest.mark.chaos

# the module, not the ``worker`` decorator that ``oban_pro`` exports under the same name
worker_module = importlib.import_module("oban_pro.registry")  # cron entries live there

LEADER_TTL = 2.0
#: Allowance for a loaded 2-core machine on top of one lease plus one election period.
FAILOVER_SLACK = 2.5


def test_leader_killed_another_node_leads_within_one_lease(
    oban_dsn, oban_prefix, tmp_path, nodes, client
):
    """kill -9 the leader of three nodes: exactly one other node takes over within one lease
    (+ the election period and slack) and keeps it; as the new leader it runs the lifeline
    (the dead leader's job is rescued and run again); cron never inserts a minute twice."""
    dsn, prefix, log, release = oban_dsn, oban_prefix, tmp_path / "runs", tmp_path / "release"
    settings = {"leader_ttl": LEADER_TTL, "heartbeat_ttl": 2.0}
    imports = ("chaos.chaos_workers", "chaos.cron_workers")
    a = nodes.start("a", settings=settings, imports=imports)
    wait_for(lambda: leader(dsn, prefix) == "a", 15, "a to lead")
    job = client.enqueue(Hang.new({"log": str(log), "release": str(release)}))
    wait_for(lambda: executing_on(dsn, prefix, "a"), 15, "a job running on the leader")
    b = nodes.start("b", settings=settings, imports=imports)
    c = nodes.start("c", settings=settings, imports=imports)
    assert leader(dsn, prefix) == "a"
    marks = {n.node: len(n.log_text()) for n in (b, c)}

    killed_at = a.kill9()
    successor = wait_for(
        lambda: leader(dsn, prefix) in ("b", "c") and leader(dsn, prefix),
        20,
        "b or c to lead",
        interval=0.02,
    )
    failover = time.time() - killed_at
    print(f"\nkill -9 leader -> {successor} leads: {failover:.2f}s (leader_ttl {LEADER_TTL}s)")
    assert failover <= LEADER_TTL + LEADER_TTL / 3 + FAILOVER_SLACK, failover

    # It keeps the lease for two more lease periods, and only it ever took over.
    deadline = time.monotonic() + 2 * LEADER_TTL
    while time.monotonic() < deadline:
        assert leader(dsn, prefix) == successor
        time.sleep(0.1)
    took = {n.node: n.log_text()[marks[n.node] :].count("took leadership") for n in (b, c)}
    lost = {n.node: n.log_text()[marks[n.node] :].count("lost leadership") for n in (b, c)}
    assert took == {"b": int(successor == "b"), "c": int(successor == "c")}, took
    assert lost == {"b": 0, "c": 0}, lost

    # The new leader runs the lifeline: the dead leader's job comes back and runs elsewhere.
    release.touch()
    wait_for(lambda: all_done(dsn, prefix, [job.id]), 30, "the rescued job to complete")
    row = rows_by_id(dsn, prefix, [job.id])[job.id]
    assert row["meta"]["rescued"] == 1 and row["attempted_by"][0] in ("b", "c")
    assert [attempt for attempt, _pid, _at in runs_by_id(read_runs(log))[job.id]] == [1, 2]
    assert duplicate_cron_minutes(dsn, prefix) == []


_CRON: list[CronEntry] = []


def _cron_entries() -> list[CronEntry]:
    """The ``* * * * *`` entry declared with ``@worker(cron=...)`` in chaos.cron_workers,
    taken out of the process-wide list at once so no other test's node inserts it."""
    if not _CRON:
        module = importlib.import_module("chaos.cron_workers")
        name = module.CronTick._worker_name
        _CRON.extend(e for e in worker_module.cron_entries() if e.worker == name)
        worker_module._cron_entries[:] = [
            e for e in worker_module._cron_entries if e.worker != name
        ]
    assert [e.expression for e in _CRON] == ["* * * * *"]
    return list(_CRON)


class _Leading:
    """The node view a scheduler reads: this one believes it leads."""

    is_leader = True


async def test_cron_never_inserts_a_minute_twice_across_failover(oban_dsn, oban_prefix):
    """Two nodes' schedulers for the same minute (an old leader that inserted it and a new one
    that takes over mid-minute, or two that both believe they lead): one job per minute."""
    entries = _cron_entries()
    old = Oban(dsn=oban_dsn, prefix=oban_prefix, name=f"cron-old-{oban_prefix}")
    new = Oban(dsn=oban_dsn, prefix=oban_prefix, name=f"cron-new-{oban_prefix}")
    try:
        # Each with its own instance's Store, both leading.
        old_scheduler = Scheduler(await old._ensure_store(), _Leading(), entries)
        new_scheduler = Scheduler(await new._ensure_store(), _Leading(), entries)
        minute = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=5)

        # failover mid-minute: the old leader inserted minute M, the new one runs M again
        assert len(await old_scheduler.step(now=minute + timedelta(seconds=1))) == 1
        assert await new_scheduler.step(now=minute + timedelta(seconds=40)) == []
        # two leaders at once (a lease that expired under a paused leader): still one insert
        for n in range(1, 6):
            at = minute + timedelta(minutes=n, seconds=n)
            results = await asyncio.gather(old_scheduler.step(now=at), new_scheduler.step(now=at))
            assert sum(len(r) for r in results) == 1, (at, results)
        # the new leader goes on with the next minute
        later = minute + timedelta(minutes=6)
        assert len(await new_scheduler.step(now=later)) == 1
    finally:
        await old.stop()
        await new.stop()
    rows = query(
        oban_dsn,
        f"SELECT meta->>'cron_at', meta->>'cron_expr', queue, count(*) "
        f'FROM "{oban_prefix}".oban_jobs GROUP BY 1, 2, 3 ORDER BY 1',
    )
    expected = [
        ((minute + timedelta(minutes=n)).isoformat(), "* * * * *", "chaos_cron", 1)
        for n in range(7)
    ]
    assert rows == expected
    assert duplicate_cron_minutes(oban_dsn, oban_prefix) == []
