"""The engine on every schema layout of compat.md §1: oban_pro's own, one made by Elixir Oban's
migrations (errors jsonb[]), and one made by Oban.py's installer (errors jsonb, smallints)."""

from __future__ import annotations

import pytest
from engine_workers import CancelSelf, Exit3, Fail, Noop, RecordIt, SnoozeOnce
from helpers import job_row, wait_until
from test_migrations import load_fixture

from oban_pro import Job, Oban
from oban_pro.migrations import migrate_up, migration_status
from oban_pro.term import decode_recorded


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
    assert "boom" in fail["errors"][0]["error"] and fail["errors"][0]["attempt"] == 1
    assert snooze["meta"]["snoozed"] == 1 and snooze["attempt"] == 1
    assert "not needed" in cancel["errors"][0]["error"]
    assert decode_recorded(record["meta"]["return"]) == {"sum": 5, "label": "done"}
    assert "exited with code 3" in exit3["errors"][0]["error"] and exit3["meta"]["crashes"] == 1
    assert "unknown worker" in missing["errors"][0]["error"]
    async with Oban(dsn=oban_dsn, prefix=prefix, name=f"read-{prefix}") as reader:
        got = await reader.get_job(jobs[0].id)
    assert got is not None and got.tags == ["a", "b"] and got.state == "completed"
