"""Workflows end to end: real PostgreSQL, real worker processes (oban_pro/workflow*.py)."""

from __future__ import annotations

from collections import defaultdict

import psycopg
import pytest
from helpers import FAST_TIMINGS, query, wait_until
from workflow_workers import AsyncSumResults, Step, SumResults

from oban_pro import Job, Oban
from oban_pro.client import Client
from oban_pro.errors import WorkflowError, WorkflowValidationError
from oban_pro.queries import Queries
from oban_pro.store import Store
from oban_pro.term import decode_recorded
from oban_pro.workflow import Workflow

pytestmark = pytest.mark.asyncio

FAST = dict(FAST_TIMINGS, processes=2, imports=["workflow_workers"], shutdown_timeout=5.0)


def node(dsn: str, prefix: str, name: str = "n1", **overrides) -> Oban:
    opts = {**FAST, "queues": {"default": 10}, "name": f"Oban-{prefix}-{name}", **overrides}
    return Oban(dsn=dsn, prefix=prefix, node=name, **opts)


def rows(dsn: str, prefix: str) -> dict[int, dict]:
    found = query(
        dsn,
        f'SELECT id, state::text, meta, to_jsonb(errors), attempt FROM "{prefix}".oban_jobs',
    )
    return {i: {"state": s, "meta": m, "errors": e, "attempt": a} for i, s, m, e, a in found}


def by_name(dsn: str, prefix: str) -> dict[str, dict]:
    out = {}
    for job_id, row in rows(dsn, prefix).items():
        row["id"] = job_id
        out[row["meta"]["name"]] = row
    return out


def all_final(dsn: str, prefix: str) -> bool:
    found = rows(dsn, prefix)
    return bool(found) and all(
        r["state"] in ("completed", "cancelled", "discarded") for r in found.values()
    )


def events(path) -> dict[int, list[tuple[str, int]]]:
    """job id -> [(start|stop, monotonic ns)] from the workers' log."""
    out: dict[int, list[tuple[str, int]]] = defaultdict(list)
    try:
        text = open(path).read()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        job_id, event, at, _pid = line.split()
        out[int(job_id)].append((event, int(at)))
    return out


def upstream_of(found: dict[int, dict]) -> dict[int, set[int]]:
    """Each job's upstream jobs, from the edges every job carries (wf_next or wf_sent)."""
    ups: dict[int, set[int]] = defaultdict(set)
    for job_id, row in found.items():
        for down in row["meta"].get("wf_next", []) + row["meta"].get("wf_sent", []):
            ups[down].add(job_id)
    return ups


def assert_order(dsn: str, prefix: str, log) -> dict[int, list[tuple[str, int]]]:
    """No job started before every job it waits for had stopped (from the jobs' own log)."""
    found = rows(dsn, prefix)
    seen = events(log)
    for job_id, ups in upstream_of(found).items():
        starts = [at for event, at in seen.get(job_id, []) if event == "start"]
        if not starts:
            continue
        for up in ups:
            stops = [at for event, at in seen.get(up, []) if event == "stop"]
            if not stops:  # an upstream cancelled before it ran, ignored by this job
                assert found[up]["state"] in ("cancelled", "discarded"), (job_id, up)
                assert job_id not in [i for i in found if found[i]["state"] == "suspended"]
                continue
            assert max(stops) < min(starts), (
                f"job {job_id} started before its upstream {up} stopped"
            )
    return seen


def step(log, **args) -> Job:
    return Step.new({"log": str(log), **args})


# -- building and validation (no database) ----------------------------------------------------


async def test_validation_names_the_step():
    with pytest.raises(WorkflowValidationError, match="step 'b'.*depends on 'zz'"):
        Workflow().add("a", Job("W")).add("b", Job("W"), deps=["a", "zz"]).validate()
    with pytest.raises(WorkflowValidationError, match="step 'a'.*exists"):
        Workflow().add("a", Job("W")).add("a", Job("W"))
    with pytest.raises(WorkflowValidationError, match="cycle: .*a"):
        (
            Workflow()
            .add("a", Job("W"), deps="c")
            .add("b", Job("W"), deps="a")
            .add("c", Job("W"), deps="b")
            .validate()
        )
    with pytest.raises(WorkflowValidationError, match="step 'a'.*itself"):
        Workflow().add("a", Job("W"), deps="a")
    with pytest.raises(WorkflowValidationError, match="step 'x'.*expected a Job"):
        Workflow().add("x", {"not": "a job"})  # type: ignore[arg-type]
    with pytest.raises(WorkflowValidationError, match="step 'm.0'.*True or False"):
        Workflow().add_many("m", [Job("W"), Job("W")], ignore_cancelled="yes")  # type: ignore[arg-type]
    with pytest.raises(WorkflowValidationError, match="unique"):
        Workflow().add("u", Job("W", unique=True))
    sub = Workflow().add("x", Job("W"))
    outer = Workflow().add_workflow("s", sub)
    with pytest.raises(WorkflowValidationError, match="already a sub-workflow"):
        Workflow().add_workflow("t", sub)
    with pytest.raises(WorkflowValidationError, match="contain itself"):
        sub.add_workflow("loop", outer)


async def test_invalid_workflow_inserts_nothing(oban_dsn, oban_prefix):
    bad = Workflow().add("a", Job("W")).add("b", Job("W"), deps="missing")
    with Client(oban_dsn, prefix=oban_prefix) as client:
        with pytest.raises(WorkflowValidationError):
            client.enqueue_many(bad)
    assert rows(oban_dsn, oban_prefix) == {}


# -- insert and holding -----------------------------------------------------------------------


async def test_insert_holds_waiting_steps_suspended_with_oban_pro_meta(oban_dsn, oban_prefix):
    workflow = (
        Workflow(name="pipeline", workflow_id="wf-1")
        .add("a", Job("W"))
        .add_many("b", [Job("W"), Job("W")], deps="a")
        .add("c", Job("W", scheduled_in=3600), deps="b", ignore_discarded=True)
    )
    with Client(oban_dsn, prefix=oban_prefix) as client:
        jobs = client.enqueue_many(workflow)
    assert [j.state for j in jobs] == ["available", "suspended", "suspended", "suspended"]
    assert [j.id for j in jobs] == sorted(j.id for j in jobs)
    found = by_name(oban_dsn, oban_prefix)
    a, c = found["a"], found["c"]
    assert a["meta"]["workflow_id"] == "wf-1" and a["meta"]["workflow_name"] == "pipeline"
    assert a["meta"]["deps"] == [] and a["meta"]["wf_next"] == [jobs[1].id, jobs[2].id]
    b0 = found["0"]["meta"]
    assert b0["sup_workflow_id"] == "wf-1" and b0["workflow_name"] == "b"
    assert b0["wf_wait"] == 1 and b0["wf_next"] == [jobs[3].id]
    assert c["meta"]["deps"] == ["b"] and c["meta"]["wf_wait"] == 2
    assert c["meta"]["ignore_discarded"] is True and c["meta"]["wf_subs"] == {
        "b": [b0["workflow_id"]]
    }


async def test_insert_joins_the_callers_transaction(oban_dsn, oban_prefix):
    with psycopg.connect(oban_dsn) as conn:  # not autocommit: the caller's transaction
        Client(prefix=oban_prefix).enqueue_many(
            Workflow().add("a", Job("W")).add("b", Job("W"), deps="a"), conn=conn
        )
        conn.rollback()
    assert rows(oban_dsn, oban_prefix) == {}


# -- running ----------------------------------------------------------------------------------


async def run_to_the_end(dsn, prefix, workflow, timeout=60.0, **overrides):
    async with node(dsn, prefix, **overrides) as oban:
        jobs = await oban.enqueue_many(workflow)
        await wait_until(lambda: all_final(dsn, prefix), timeout=timeout, message="final states")
    return jobs


async def test_sequence_fan_out_fan_in_diamond(oban_dsn, oban_prefix, tmp_path):
    log = tmp_path / "log"
    workflow = (
        Workflow(name="shapes")
        .add("a", step(log))
        .add("b", step(log), deps="a")  # sequence
        .add_many("fan", [step(log, sleep=0.02) for _ in range(6)], deps="b")  # fan-out
        .add("left", step(log), deps="fan")  # fan-in
        .add("right", step(log), deps="fan")
        .add("join", step(log), deps=["left", "right"])  # diamond
    )
    await run_to_the_end(oban_dsn, oban_prefix, workflow)
    found = rows(oban_dsn, oban_prefix)
    assert {r["state"] for r in found.values()} == {"completed"}
    seen = assert_order(oban_dsn, oban_prefix, log)
    assert sorted(seen) == sorted(found)
    assert all(len(v) == 2 for v in seen.values()), "every step ran exactly once"
    assert all("wf_next" not in r["meta"] and r["meta"].get("wf_wait", 0) == 0
               for r in found.values())  # fmt: skip


async def test_sub_workflow_waits_for_its_deps_and_is_waited_for(oban_dsn, oban_prefix, tmp_path):
    log = tmp_path / "log"
    extract = (
        Workflow(name="extract")
        .add("pull", step(log, sleep=0.05))
        .add("clean", step(log), deps="pull")
    )
    workflow = (
        Workflow(name="etl")
        .add("setup", step(log, sleep=0.05))
        .add_workflow("extract", extract, deps="setup")
        .add("finish", step(log), deps="extract")
    )
    await run_to_the_end(oban_dsn, oban_prefix, workflow)
    found = by_name(oban_dsn, oban_prefix)
    assert {r["state"] for r in found.values()} == {"completed"}
    assert found["pull"]["meta"]["sup_workflow_id"] == workflow.id
    seen = assert_order(oban_dsn, oban_prefix, log)
    start = {name: min(at for e, at in seen[r["id"]] if e == "start") for name, r in found.items()}
    stop = {name: max(at for e, at in seen[r["id"]] if e == "stop") for name, r in found.items()}
    assert stop["setup"] < start["pull"]
    assert stop["pull"] < start["clean"] and stop["clean"] < start["finish"]


# -- failures upstream ------------------------------------------------------------------------


async def test_a_dependency_that_fails_then_completes_is_waited_for(
    oban_dsn, oban_prefix, tmp_path
):
    log = tmp_path / "log"
    workflow = (
        Workflow()
        .add(
            "flaky",
            step(log, fail_times=2),
        )
        .add("after", step(log), deps="flaky")
    )
    workflow_jobs = await run_to_the_end(oban_dsn, oban_prefix, workflow)
    found = by_name(oban_dsn, oban_prefix)
    assert found["flaky"]["state"] == "completed" and found["flaky"]["attempt"] == 3
    assert found["after"]["state"] == "completed" and found["after"]["attempt"] == 1
    seen = assert_order(oban_dsn, oban_prefix, log)
    assert [e for e, _ in seen[workflow_jobs[1].id]] == ["start", "stop"], "ran once, after"


@pytest.mark.parametrize("how", ["discarded", "cancelled"])
async def test_failed_upstream_cancels_what_waits_unless_ignored(
    oban_dsn, oban_prefix, tmp_path, how
):
    log = tmp_path / "log"
    bad = (
        step(log, fail_times=99).update({"max_attempts": 1}) if how == "discarded"
        else step(log, cancel=True)
    )  # fmt: skip
    ignore = {f"ignore_{how}": True}
    workflow = (
        Workflow()
        .add("bad", bad)
        .add("strict", step(log), deps="bad")
        .add("below_strict", step(log), deps="strict", ignore_cancelled=True)
        .add("deep", step(log), deps="strict")
        .add("deeper", step(log), deps="deep")
        .add("tolerant", step(log), deps="bad", **ignore)
        .add("after_tolerant", step(log), deps="tolerant")
    )
    await run_to_the_end(oban_dsn, oban_prefix, workflow)
    found = by_name(oban_dsn, oban_prefix)
    assert found["bad"]["state"] == how
    # the default: cancelled, with an error naming the upstream step, cascading down
    assert found["strict"]["state"] == "cancelled"
    assert (
        f"upstream step bad (job {found['bad']['id']}) was {how}"
        in (found["strict"]["errors"][-1]["error"])
    )
    assert found["deep"]["state"] == found["deeper"]["state"] == "cancelled"
    assert "upstream step deep" in found["deeper"]["errors"][-1]["error"]
    # ignore_cancelled below a cancelled step, and ignore_<how> below the failed one: they run
    assert found["below_strict"]["state"] == "completed"
    assert found["tolerant"]["state"] == "completed"
    assert found["after_tolerant"]["state"] == "completed"
    ran = events(log)
    for name in ("strict", "deep", "deeper"):
        assert found[name]["id"] not in ran, f"{name} must never have run"
    assert_order(oban_dsn, oban_prefix, log)


async def test_cancel_a_running_workflow(oban_dsn, oban_prefix, tmp_path):
    log, hold, started = tmp_path / "log", tmp_path / "hold", tmp_path / "started"
    workflow = (
        Workflow(name="long")
        .add("first", step(log))
        .add_many("busy", [step(log, hold=str(hold)) for _ in range(3)], deps="first")
        .add("last", step(log), deps="busy")
    )
    async with node(oban_dsn, oban_prefix) as oban:
        await oban.enqueue_many(workflow)
        await wait_until(
            lambda: (
                sum(r["state"] == "executing" for r in rows(oban_dsn, oban_prefix).values()) == 3
            ),
            message="the three busy steps running",
        )
        status = await oban.workflow_status(workflow.id)
        assert status.state == "executing" and status.counts["executing"] == 3
        assert status.counts["suspended"] == 1 and status.counts["completed"] == 1
        cancelled = await oban.cancel_workflow(workflow.id)
        assert len(cancelled) == 4
        await wait_until(lambda: all_final(oban_dsn, oban_prefix), message="all final")
        # the running steps were stopped (pkill), not left to finish
        await wait_until(
            lambda: sum(e == "stop" for v in events(log).values() for e, _ in v) == 4,
            message="the busy steps to stop",
        )
        status = await oban.workflow_status(workflow.id)
    assert not started.exists()
    assert status.state == "cancelled" and status.counts["cancelled"] == 4
    assert status.finished_at is not None and status.started_at is not None
    found = by_name(oban_dsn, oban_prefix)
    assert found["last"]["id"] not in events(log)
    assert "workflow" in found["last"]["errors"][-1]["error"]


# -- results downstream -----------------------------------------------------------------------


@pytest.mark.parametrize("collector", [SumResults, AsyncSumResults])
async def test_results_reach_the_steps_downstream(
    oban_dsn, oban_prefix, tmp_path, monkeypatch, collector
):
    # Worker processes (the default start method) read the database of the node they serve.
    log = tmp_path / "log"
    workflow = (
        Workflow()
        .add("one", step(log, value=1))
        .add_many("many", {"x": step(log, value=10), "y": step(log, value=20)}, deps="one")
        .add("plain", step(log), deps="one")
        .add("sum", collector.new({"log": str(log)}), deps=["one", "many", "plain"])
    )
    await run_to_the_end(oban_dsn, oban_prefix, workflow)
    found = by_name(oban_dsn, oban_prefix)
    assert found["sum"]["state"] == "completed", found["sum"]["errors"]
    value = decode_recorded(found["sum"]["meta"]["return"])
    assert value == {
        "sum": 31,
        "results": {"one": 1, "many": {"x": 10, "y": 20}, "plain": None},
    }


async def test_results_outside_a_workflow_say_so(oban_dsn, oban_prefix):
    with pytest.raises(WorkflowError, match="not a step of a workflow"):
        Job("W", id=5).workflow.results_sync()


# -- operations and repair --------------------------------------------------------------------


async def test_status_list_and_retry_of_failed_steps(oban_dsn, oban_prefix, tmp_path):
    log = tmp_path / "log"
    workflow = (
        Workflow(name="retry-me")
        .add("ok", step(log))
        .add("fails_once", step(log, fail_times=1).update({"max_attempts": 1}), deps="ok")
        .add("after", step(log), deps="fails_once")
        .add("side", step(log), deps="ok")
    )
    async with node(oban_dsn, oban_prefix) as oban:
        jobs = await oban.enqueue_many(workflow)
        await wait_until(lambda: all_final(oban_dsn, oban_prefix), message="final states")
        status = await oban.workflow_status(workflow.id)
        assert status.state == "discarded" and status.name == "retry-me"
        assert status.counts["completed"] == 2 and status.counts["discarded"] == 1
        assert status.counts["cancelled"] == 1 and status.total == 4
        listed = await oban.workflow_jobs(workflow.id)
        assert [j.id for j in listed] == [j.id for j in jobs]
        retried = await oban.retry_workflow(workflow.id)
        names = {j.meta["name"]: j.id for j in jobs}
        assert retried == sorted([names["fails_once"], names["after"]])
        await wait_until(
            lambda: {r["state"] for r in rows(oban_dsn, oban_prefix).values()} == {"completed"},
            message="every step completed after the retry",
        )
        status = await oban.workflow_status(workflow.id)
    assert status.state == "completed" and status.finished_at is not None
    assert_order(oban_dsn, oban_prefix, log)
    with Client(oban_dsn, prefix=oban_prefix) as client:
        with pytest.raises(WorkflowError, match="no workflow with id 'nope'"):
            client.workflow_status("nope")


async def lifeline_step(pool, prefix):
    from plugin_support import FakeNode

    from oban_pro.plugins.lifeline import Lifeline
    from oban_pro.workflow_repair import WorkflowRepair

    await Lifeline(
        Store(pool, Queries(prefix)), FakeNode(), interval=5, heartbeat_ttl=30, reconnect_bound=0,
        rescue_after=3600, repair=WorkflowRepair(Store(pool, Queries(prefix))),
    ).step()  # fmt: skip


async def test_lifeline_repairs_upstream_cancelled_or_deleted_outside_an_ack(
    oban_dsn, oban_prefix, pool
):
    cancel_me, delete_me = (
        Workflow().add("up", Job("W")).add("down", Job("W"), deps="up")
        .add("tolerant", Job("W"), deps="up", ignore_cancelled=True)
        .add("below", Job("W"), deps="down"),
        Workflow().add("up", Job("W")).add("down", Job("W"), deps="up")
        .add("tolerant", Job("W"), deps="up", ignore_deleted=True),
    )  # fmt: skip
    with Client(oban_dsn, prefix=oban_prefix) as client:
        first = client.enqueue_many(cancel_me)
        second = client.enqueue_many(delete_me)
        client.cancel_jobs([first[0].id])  # not through an ack: nobody told its waiting jobs
        client.delete_jobs([second[0].id])
        assert {j.state for j in client.workflow_jobs(cancel_me.id)[1:]} == {"suspended"}
        await lifeline_step(pool, oban_prefix)
        states = {j.meta["name"]: j.state for j in client.workflow_jobs(cancel_me.id)}
        assert states == {"up": "cancelled", "down": "cancelled", "tolerant": "available",
                          "below": "cancelled"}  # fmt: skip
        states = {j.meta["name"]: j.state for j in client.workflow_jobs(delete_me.id)}
        assert states == {"down": "cancelled", "tolerant": "available"}
        down = client.workflow_jobs(delete_me.id)[0]
        assert "was deleted" in down.errors[-1]["error"]
        # a second pass finds nothing left to do
        before = rows(oban_dsn, oban_prefix)
        await lifeline_step(pool, oban_prefix)
        assert rows(oban_dsn, oban_prefix) == before


async def test_workflows_cli(oban_dsn, oban_prefix):
    import json
    import subprocess
    import sys

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "oban_pro", "workflows", *args, "--dsn", oban_dsn,
             "--prefix", oban_prefix],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    workflow = Workflow(name="cli").add("a", Job("W")).add("b", Job("W"), deps="a")
    with Client(oban_dsn, prefix=oban_prefix) as client:
        jobs = client.enqueue_many(workflow)
    shown = cli("status", workflow.id)
    assert shown.returncode == 0, shown.stderr
    assert f"workflow {workflow.id} (cli): executing, 2 jobs" in shown.stdout
    assert "available 1, suspended 1" in shown.stdout
    listed = cli("jobs", workflow.id, "--json")
    assert [json.loads(line)["name"] for line in listed.stdout.splitlines()] == ["a", "b"]
    cancelled = cli("cancel", workflow.id)
    assert cancelled.returncode == 0 and f"cancelled 2 jobs: {jobs[0].id}, {jobs[1].id}" in (
        cancelled.stdout
    )
    retried = cli("retry", workflow.id, "--json")
    assert json.loads(retried.stdout) == {"retry": [jobs[0].id, jobs[1].id]}
    states = {r["meta"]["name"]: r["state"] for r in rows(oban_dsn, oban_prefix).values()}
    assert states == {"a": "available", "b": "suspended"}
    missing = cli("status", "no-such-workflow")
    assert missing.returncode == 1 and "no workflow with id" in missing.stdout


@pytest.mark.parametrize("layout", ["elixir", "obanpy"])
async def test_workflow_on_tables_made_by_elixir_or_obanpy(
    oban_dsn, oban_empty_prefix, tmp_path, layout
):
    """Elixir's table (bigserial id, errors jsonb[]) and Oban.py's (identity id, errors jsonb,
    suspended after scheduled in the enum): insert, release and cascade work on both."""
    from test_migrations import load_fixture

    from oban_pro.migrations import migrate_up

    prefix = oban_empty_prefix
    load_fixture(oban_dsn, prefix, {"elixir": "elixir_v14", "obanpy": "obanpy"}[layout])
    migrate_up(oban_dsn, prefix=prefix)
    log = tmp_path / "log"
    workflow = (
        Workflow()
        .add("a", step(log))
        .add("b", step(log), deps="a")
        .add("c", step(log, fail_times=9).update({"max_attempts": 1}), deps="a")
        .add("d", step(log), deps=["b", "c"])
        .add("e", step(log), deps=["b", "c"], ignore_discarded=True)
    )
    await run_to_the_end(oban_dsn, prefix, workflow)
    states = {name: r["state"] for name, r in by_name(oban_dsn, prefix).items()}
    assert states == {"a": "completed", "b": "completed", "c": "discarded", "d": "cancelled",
                      "e": "completed"}  # fmt: skip
    assert "upstream step c" in by_name(oban_dsn, prefix)["d"]["errors"][-1]["error"]
    assert_order(oban_dsn, prefix, log)


# -- the leader's gauge -----------------------------------------------------------------------


async def test_workflow_gauge_counts_workflows_by_their_current_state(oban_dsn, oban_prefix):
    from psycopg_pool import AsyncConnectionPool

    from oban_pro.plugins.gauges import WorkflowGauges

    def two_steps(name: str) -> Workflow:
        return Workflow(name=name).add("a", Job("W", args={})).add("b", Job("W"), deps="a")

    with Client(oban_dsn, prefix=oban_prefix) as client:
        ids = {n: client.enqueue_many(two_steps(n))[0].meta["workflow_id"] for n in "wxyz"}
        client.enqueue(Job("W"))  # not a workflow: not counted
    p = f'"{oban_prefix}".oban_jobs'
    final = {"x": "completed", "y": "cancelled", "z": "discarded"}
    for name, state in final.items():
        query(oban_dsn, f"UPDATE {p} SET state = 'completed' WHERE meta->>'workflow_id' = %s",
              (ids[name],))  # fmt: skip
        query(oban_dsn, f"UPDATE {p} SET state = %s WHERE meta->>'workflow_id' = %s "
              f"AND meta->>'name' = 'b'", (state, ids[name]))  # fmt: skip
    published: list[dict[str, int]] = []
    async with AsyncConnectionPool(oban_dsn, min_size=1, max_size=1, open=False) as pool:
        store = Store(pool, Queries(oban_prefix))
        await WorkflowGauges(store, published.append, interval=5).step()
    assert published == [{"executing": 1, "completed": 1, "cancelled": 1, "discarded": 1}]
