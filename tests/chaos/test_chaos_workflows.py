"""Workflows under node death and races: real node processes (the CLI), real kill -9."""

from __future__ import annotations

from collections import defaultdict

import pytest
from workflow_workers import Step

from oban_pro.workflow import Workflow

from .conftest import executing_on, leader, rows_by_id, wait_for

pytestmark = pytest.mark.chaos

SETTINGS = {"heartbeat_ttl": 2.0, "lifeline_interval": 0.5}
IMPORTS = ("workflow_workers",)


def thousand_steps(log) -> Workflow:
    """1,000 steps: a start, four chains of 50 (sequences: each link waits for an ack), a
    fan-out of 798 that waits for the start, and an end that waits for all of them."""

    def step(**args):
        return Step.new({"log": str(log), **args})

    workflow = Workflow(name="chaos").add("start", step())
    for chain in range(4):
        previous = "start"
        for link in range(50):
            name = f"chain{chain}.{link}"
            workflow.add(name, step(sleep=0.01), deps=previous)
            previous = name
    workflow.add_many("fan", [step(sleep=0.005) for _ in range(798)], deps="start")
    workflow.add("end", step(), deps=["fan"] + [f"chain{c}.49" for c in range(4)])
    assert len(workflow) == 1000
    return workflow


def events(path) -> dict[int, list[tuple[str, int]]]:
    out: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        job_id, event, at, _pid = line.split()
        out[int(job_id)].append((event, int(at)))
    return out


def check_runs(rows: dict[int, dict], log) -> dict[int, list[tuple[str, int]]]:
    """Every step completed; none started before the jobs it waits for stopped (from the jobs'
    own log, whatever attempt); a step ran more than once only if it was rescued."""
    seen = events(log)
    assert {r["state"] for r in rows.values()} == {"completed"}
    assert set(seen) == set(rows), "every step ran"
    upstream: dict[int, set[int]] = defaultdict(set)
    for job_id, row in rows.items():
        for down in row["meta"].get("wf_sent", []):
            upstream[down].add(job_id)
    assert sum(len(u) for u in upstream.values()) == 4 * 50 + 798 + 798 + 4
    for job_id, ups in upstream.items():
        first_start = min(at for e, at in seen[job_id] if e == "start")
        for up in ups:
            last_stop = max(at for e, at in seen[up] if e == "stop")
            assert last_stop < first_start, f"job {job_id} started before upstream {up} stopped"
    for job_id, row in rows.items():
        starts = sum(e == "start" for e, _ in seen[job_id])
        assert starts <= 1 + row["meta"].get("rescued", 0), (job_id, seen[job_id], row["meta"])
    return seen


def test_kill_9_a_node_in_the_middle_of_a_1000_step_workflow(
    oban_dsn, oban_prefix, tmp_path, nodes, client
):
    dsn, prefix, log = oban_dsn, oban_prefix, tmp_path / "steps"
    b = nodes.start("b", processes=2, settings=SETTINGS, imports=IMPORTS)
    wait_for(lambda: leader(dsn, prefix) == "b", 15, "b to lead")
    a = nodes.start("a", processes=2, settings=SETTINGS, imports=IMPORTS)
    jobs = client.enqueue_many(thousand_steps(log))
    ids = [j.id for j in jobs]

    def mid_run():
        found = rows_by_id(dsn, prefix, ids)
        done = sum(r["state"] == "completed" for r in found.values())
        return 200 <= done <= 900 and executing_on(dsn, prefix, "a")

    wait_for(mid_run, 60, "node a running steps with 200-900 of 1,000 completed", interval=0.01)
    a.kill9()
    wait_for(
        lambda: {r["state"] for r in rows_by_id(dsn, prefix, ids).values()} == {"completed"},
        90,
        "every step completed on the survivor",
    )
    rows = rows_by_id(dsn, prefix, ids)
    check_runs(rows, log)
    assert any(r["meta"].get("rescued") for r in rows.values()), "a's running steps were rescued"
    assert b.known_alive()


def test_two_nodes_racing_on_one_workflow(oban_dsn, oban_prefix, tmp_path, nodes, client):
    dsn, prefix, log = oban_dsn, oban_prefix, tmp_path / "steps"
    for name in ("a", "b"):
        nodes.start(name, processes=2, settings=SETTINGS, imports=IMPORTS)
    jobs = client.enqueue_many(thousand_steps(log))
    ids = [j.id for j in jobs]
    wait_for(
        lambda: {r["state"] for r in rows_by_id(dsn, prefix, ids).values()} == {"completed"},
        90,
        "every step completed",
    )
    rows = rows_by_id(dsn, prefix, ids)
    seen = check_runs(rows, log)
    assert all(sum(e == "start" for e, _ in v) == 1 for v in seen.values()), "each ran once"
    nodes_used = {r["attempted_by"][0] for r in rows.values()}
    assert nodes_used == {"a", "b"}, "both nodes ran steps (and raced on the fan-in's counter)"
    end = rows[jobs[-1].id]
    assert end["meta"]["name"] == "end" and end["meta"]["wf_wait"] == 0
