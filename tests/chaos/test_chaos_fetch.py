"""Several nodes draining one queue: no job is fetched twice (design.md invariant 4)."""

from __future__ import annotations

from collections import Counter

import pytest

from chaos.chaos_workers import Quick, read_runs

from .conftest import all_done, job_states, rows_by_id, runs_by_id, wait_for

pytestmark = pytest.mark.chaos


@pytest.mark.parametrize("count", [2, 3])
def test_nodes_draining_one_queue_never_fetch_a_job_twice(
    oban_dsn, oban_prefix, tmp_path, nodes, client, count
):
    dsn, prefix, log = oban_dsn, oban_prefix, tmp_path / "runs"
    names = [chr(ord("a") + i) for i in range(count)]
    group = [nodes.start(name, processes=2, queues="default:20") for name in names]
    jobs = client.enqueue_many([Quick.new({"log": str(log)}) for _ in range(1500)])
    ids = [j.id for j in jobs]
    wait_for(
        lambda: all_done(dsn, prefix, ids),
        120,
        f"1,500 jobs completed (now {dict(job_states(dsn, prefix, ids))})",
    )

    rows = rows_by_id(dsn, prefix, ids)
    # from the job rows: each job was fetched once (a second fetch would have made attempt 2)
    assert Counter(r["attempt"] for r in rows.values()) == {1: 1500}
    # from the per-execution log: each id ran once, in a worker process of the node that
    # fetched it
    runs = runs_by_id(read_runs(log))
    assert {i: len(r) for i, r in runs.items() if len(r) != 1} == {}
    assert set(runs) == set(ids)
    pids = {node.node: node.worker_pids() for node in group}
    for job_id, row in rows.items():
        assert runs[job_id][0][1] in pids[row["attempted_by"][0]], (job_id, row, runs[job_id])
    # every node took part
    assert set(Counter(r["attempted_by"][0] for r in rows.values())) == set(names)
