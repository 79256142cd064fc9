"""``Oban.get_instance()`` inside jobs running in worker processes (real node, processes=2):
enqueueing, job operations and queue signals from async and sync job code, the connections the
children open for it, and the clear error for what only the coordinator can do."""

from __future__ import annotations

import pytest
from child_instance_workers import (
    HELD,
    ArticleSnippet,
    CoordinatorOnlyAsync,
    CoordinatorOnlySync,
    UseInstanceAsync,
    UseInstanceSync,
)
from helpers import FAST_TIMINGS, job_row, query, wait_until

from oban_pro import Oban
from oban_pro.pool.child_instance import application_name
from oban_pro.term import decode_recorded

pytestmark = pytest.mark.asyncio

FAST = dict(FAST_TIMINGS, processes=2, imports=["child_instance_workers"], shutdown_timeout=5.0)


def node(dsn: str, prefix: str, **overrides) -> Oban:
    opts = {
        **FAST,
        "queues": {"default": 5, "other": 3},
        "name": f"Oban-{prefix}",
        **overrides,
    }
    return Oban(dsn=dsn, prefix=prefix, node="n1", **opts)


async def recorded(dsn: str, prefix: str, job_id: int) -> dict:
    row = await wait_until(
        lambda: (
            (r := job_row(dsn, prefix, job_id)).get("state") in ("completed", "discarded") and r
        ),
        timeout=30,
        message=f"job {job_id} to finish",
    )
    assert row["state"] == "completed", row["errors"]
    return decode_recorded(row["meta"]["return"])


def job_sessions(dsn: str, instance: str) -> int:
    sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
    return query(dsn, sql, (application_name(instance),))[0][0]


def check_operations(dsn: str, prefix: str, done: dict) -> None:
    a, b, c = (job_row(dsn, prefix, job_id) for job_id in done["ids"])
    assert a["state"] == "cancelled" and done["seen_state"] == "cancelled"
    assert b["state"] == "available"  # cancelled, then retried
    assert c == {}  # deleted
    assert done["b_priority"] == 5 and done["b_tags"] == ["moved"]
    (priority, tags, queue) = query(
        dsn, f'SELECT priority, tags, queue FROM "{prefix}".oban_jobs WHERE id = %s', (b["id"],)
    )[0]
    assert (priority, tags, queue) == (5, ["moved"], HELD)


async def paused_and_scaled(oban: Oban, queue: str) -> None:
    # The signals reach this node's coordinator through LISTEN, like any other node's.
    await wait_until(
        lambda: (info := oban.check_queue(queue)) is not None and info.paused and info.limit == 7,
        message=f"queue {queue} paused and scaled to 7 by the job",
    )


async def test_the_articles_snippet_enqueues_from_a_child(oban_dsn, oban_prefix):
    async with node(oban_dsn, oban_prefix, name="Oban") as oban:
        job = await oban.enqueue(ArticleSnippet.new({}))
        done = await recorded(oban_dsn, oban_prefix, job.id)
    assert done["face"] == "ChildOban"
    follow = job_row(oban_dsn, oban_prefix, done["follow"])
    assert follow["state"] == "available"


async def test_an_async_job_enqueues_cancels_and_pauses_through_get_instance(oban_dsn, oban_prefix):
    async with node(oban_dsn, oban_prefix) as oban:
        job = await oban.enqueue(UseInstanceAsync.new({"instance": oban.name, "pause": "other"}))
        done = await recorded(oban_dsn, oban_prefix, job.id)
        assert done["face"] == "ChildOban"
        check_operations(oban_dsn, oban_prefix, done)
        await paused_and_scaled(oban, "other")
        # The child keeps its connection for later jobs; it closes when the child exits.
        assert job_sessions(oban_dsn, oban.name) == 1
    await wait_until(
        lambda: job_sessions(oban_dsn, oban.name) == 0,
        timeout=10,
        message="the children's connections closed at shutdown",
    )


async def test_a_sync_job_does_the_same_with_blocking_calls(oban_dsn, oban_prefix):
    async with node(oban_dsn, oban_prefix) as oban:
        job = await oban.enqueue(UseInstanceSync.new({"instance": oban.name, "pause": "other"}))
        done = await recorded(oban_dsn, oban_prefix, job.id)
        assert done["face"] == "BlockingChildOban"
        check_operations(oban_dsn, oban_prefix, done)
        await paused_and_scaled(oban, "other")
    await wait_until(lambda: job_sessions(oban_dsn, oban.name) == 0, timeout=10,
                     message="the children's connections closed at shutdown")  # fmt: skip


async def test_coordinator_only_operations_raise_a_clear_error(oban_dsn, oban_prefix):
    async with node(oban_dsn, oban_prefix) as oban:
        first = await oban.enqueue(CoordinatorOnlyAsync.new({"instance": oban.name}))
        second = await oban.enqueue(CoordinatorOnlySync.new({"instance": oban.name}))
        from_async = await recorded(oban_dsn, oban_prefix, first.id)
        from_sync = await recorded(oban_dsn, oban_prefix, second.id)
        # None of it opened a connection: the refusals need no database.
        assert job_sessions(oban_dsn, oban.name) == 0
    assert from_async["check_queue"].startswith(
        "CoordinatorOnlyError: check_queue() is not available inside a job: a queue's limit"
    )
    assert "oban_producers" in from_async["check_queue"]
    assert "Use cancel_job(job)" in from_async["kill_job"]
    assert from_async["is_leader"].startswith("CoordinatorOnlyError: is_leader")
    assert from_async["wrong_name"] == (
        "NotRunningError: no Oban instance named 'NoSuchInstance': this worker process runs "
        f"jobs for the instance {oban.name!r}; call Oban.get_instance({oban.name!r})"
    )
    assert from_sync["face"] == "BlockingChildOban"
    assert from_sync["check_all_queues"].startswith("CoordinatorOnlyError: check_all_queues()")
    assert "Use cancel_job(job)" in from_sync["kill_job"]
