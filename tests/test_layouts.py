"""The engine on every schema layout of compat.md §1: oban_pro's own, one made by Elixir Oban's
migrations (errors jsonb[]), and one made by Oban.py's installer (errors jsonb, smallints)."""

from __future__ import annotations

import pytest
from engine_workers import CancelSelf, Exit3, Fail, Noop, RecordIt, SnoozeOnce
from helpers import job_row, query, wait_until
from test_migrations import load_fixture

from oban_pro import Job, Oban
from oban_pro.migrations import migrate_up, migration_status
from oban_pro.term import decode_recorded


# Conformance: every test here runs on the embedded PostgreSQL 18 and on Debian's 15.
@pytest.fixture
def oban_dsn(any_server_dsn):
    return any_server_dsn


@pytest.mark.parametrize("layout", ["oban_pro", "elixir", "obanpy"])
async def test_every_outcome_on_each_layout(oban_dsn, oban_empty_prefix, layout):
    prefix = oban_empty_prefix
    if layout != "oban_pro":
        load_fixture(oban_dsn, prefix, {"elixir": "elixir_v14", "obanpy": "obanpy"}[layout])
    migrate_up(oban_dsn, prefix=prefix)
    assert migration_status(oban_dsn, prefix=prefix).layout == layout
    oban = Oban(
        dsn=oban_dsn,
        prefix=prefix,
        queues={"default": 4},
        processes=2,
        imports=["engine_workers"],
        name=f"layout-{prefix}",
        poll_interval=0.2,
        stage_interval=0.2,
    )
    async with oban:
        jobs = await oban.enqueue_many(
            [
                Noop.new({}, tags=["a", "b"]),
                Fail.new({}),
                SnoozeOnce.new({}),
                CancelSelf.new({}),
                RecordIt.new({"values": [2, 3]}),
                Exit3.new({}),
                Job("missing.Worker"),
            ]
        )
        expected = [
            "completed",
            "retryable",
            "completed",
            "cancelled",
            "completed",
            "retryable",
            "retryable",
        ]

        def done():
            return all(
                job_row(oban_dsn, prefix, j.id)["state"] == s
                for j, s in zip(jobs, expected, strict=True)
            )

        await wait_until(done, timeout=30, message=f"every outcome on the {layout} layout")
    noop, fail, snooze, cancel, record, exit3, missing = (
        job_row(oban_dsn, prefix, j.id) for j in jobs
    )
    # The last entry is the job's own outcome: a job that shared a child with Exit3 when it
    # crashed was given back uncharged first, which leaves an earlier entry saying so.
    assert "boom" in fail["errors"][-1]["error"] and fail["errors"][-1]["attempt"] == 1
    assert snooze["meta"]["snoozed"] == 1 and snooze["attempt"] == 1
    assert "not needed" in cancel["errors"][-1]["error"]
    assert decode_recorded(record["meta"]["return"]) == {"sum": 5, "label": "done"}
    assert "exited with code 3" in exit3["errors"][-1]["error"] and exit3["meta"]["crashes"] == 1
    assert "unknown worker" in missing["errors"][-1]["error"]
    for row in (fail, cancel, exit3, missing):
        assert all("given back without being charged" in e["error"] for e in row["errors"][:-1])
    async with Oban(dsn=oban_dsn, prefix=prefix, name=f"read-{prefix}") as reader:
        got = await reader.get_job(jobs[0].id)
    assert got is not None and got.tags == ["a", "b"] and got.state == "completed"


async def test_live_elixir_jobs_on_a_shared_queue_are_never_rescued(oban_dsn, oban_empty_prefix):
    """compat.md §4 hazard: Elixir's open-source engine writes no producer rows, yet its
    executing jobs carry a valid uuid in attempted_by[2], and it may serve a queue that an
    oban_pro node serves too. The lifeline leaves those jobs to the time-based fallback, while
    it does rescue the job of a known oban_pro producer that stopped heartbeating."""
    import uuid as uuidlib

    prefix = oban_empty_prefix
    p = f'"{prefix}"'
    load_fixture(oban_dsn, prefix, "elixir_v14")
    migrate_up(oban_dsn, prefix=prefix)

    def executing_row(worker: str, node: str, uuid: str) -> int:
        # As Elixir's Basic engine leaves a fetched job: attempt + 1, attempted_at,
        # attempted_by [node, producer uuid], errors and meta untouched.
        return query(
            oban_dsn,
            f"INSERT INTO {p}.oban_jobs (state, queue, worker, args, attempt, attempted_at, "
            f"attempted_by) VALUES ('executing', 'default', %s, '{{\"id\": 1}}', 1, "
            f"timezone('UTC', now()), ARRAY[%s, %s]) RETURNING id",
            (worker, node, uuid),
        )[0][0]

    elixir = executing_row("MyApp.Workers.Print", "elixir@print", str(uuidlib.uuid4()))
    oban = Oban(
        dsn=oban_dsn, prefix=prefix, queues={"default": 4}, processes=1,
        imports=["engine_workers"], name=f"shared-{prefix}", poll_interval=0.2,
        heartbeat_interval=0.2, heartbeat_ttl=1.0, lifeline_interval=0.2, leader_ttl=1.0,
    )  # fmt: skip
    async with oban:
        await wait_until(lambda: oban.is_leader, timeout=10, message="leadership")
        for _ in range(3):  # three lifeline rounds that rescue something, so surely ran
            dead = str(uuidlib.uuid4())
            # The producer row and its job in one statement: a row already silent for an hour
            # with no job executing is a dead producer the lifeline may delete at once, before
            # it ever saw the row, and a job inserted after that would have an unknown producer.
            marker = query(oban_dsn,
                  f"WITH producer AS (INSERT INTO {p}.oban_producers (uuid, name, node, queue, "
                  f"meta, started_at, updated_at) VALUES (%s, 'Oban', 'dead', 'default', "
                  f"'{{\"heartbeat_ttl\": 1}}', timezone('UTC', now()) - interval '1 hour', "
                  f"timezone('UTC', now()) - interval '1 hour')) "
                  f"INSERT INTO {p}.oban_jobs (state, queue, worker, args, attempt, attempted_at, "
                  f"attempted_by) VALUES ('executing', 'default', %s, '{{\"id\": 1}}', 1, "
                  f"timezone('UTC', now()), ARRAY['dead', %s]) RETURNING id",
                  (dead, Noop._worker_name, dead))[0][0]  # fmt: skip
            row = await wait_until(
                lambda m=marker: (
                    (r := job_row(oban_dsn, prefix, m)).get("state") == "completed" and r
                ),
                timeout=15,
                message="the dead oban_pro producer's job to be rescued and run",
            )
            assert row["meta"]["rescued"] == 1
        row = job_row(oban_dsn, prefix, elixir)
        assert row["state"] == "executing" and row["errors"] == [] and row["meta"] == {}, row
