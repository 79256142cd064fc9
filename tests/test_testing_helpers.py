"""The helpers applications use in their own tests (oban_pro.testing)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from engine_workers import CancelSelf, Fail, Noop, RecordIt

from oban_pro import Client, Oban
from oban_pro.testing import (
    all_enqueued,
    assert_enqueued,
    drain_queue,
    perform_job,
    refute_enqueued,
    reset_oban,
)


def test_perform_job_runs_in_process():
    assert perform_job(RecordIt, {"values": [1, 2]}).kind == "record"
    failed = perform_job(Fail, {})
    assert failed.kind == "error" and "boom on attempt 1" in failed.error
    assert perform_job("engine_workers.CancelSelf").reason == "not needed any more"
    assert perform_job("no.such.Worker").kind == "error"


def test_assert_and_refute_enqueued(oban_dsn, oban_prefix):
    with Client(oban_dsn, prefix=oban_prefix) as client:
        client.enqueue(Noop.new({"user": 7, "extra": True}))
    assert_enqueued(oban_dsn, prefix=oban_prefix, worker=Noop, args={"user": 7})
    refute_enqueued(oban_dsn, prefix=oban_prefix, worker=Noop, args={"user": 8})
    with pytest.raises(AssertionError, match="expected a job matching"):
        assert_enqueued(oban_dsn, prefix=oban_prefix, worker=Fail)
    with pytest.raises(AssertionError, match="expected no job"):
        refute_enqueued(oban_dsn, prefix=oban_prefix, queue="default")
    assert len(all_enqueued(oban_dsn, prefix=oban_prefix)) == 1


async def test_drain_queue_uses_the_real_fetch_and_ack_path(oban_dsn, oban_prefix):
    with Client(oban_dsn, prefix=oban_prefix) as client:
        client.enqueue_many(
            [
                Noop.new({}),
                Noop.new({}),
                Fail.new({}),
                CancelSelf.new({}),
                Noop.new({}, queue="other"),
            ]
        )
    counts = await drain_queue(oban_dsn, "default", prefix=oban_prefix)
    assert counts == {"completed": 2, "retryable": 1, "cancelled": 1}
    refute_enqueued(oban_dsn, prefix=oban_prefix, queue="default")
    assert_enqueued(oban_dsn, prefix=oban_prefix, queue="other")


async def test_the_oban_instance_fixture_serves_the_obanpy_helpers(oban_instance, oban_prefix):
    assert Oban.get_instance() is oban_instance and oban_instance.config.prefix == oban_prefix
    await Noop.enqueue({"user": 1})
    await assert_enqueued(worker=Noop, args={"user": 1})
    assert (await drain_queue())["completed"] == 1
    await refute_enqueued(worker=Noop)
    await oban_instance.enqueue(Noop.new({}))
    await reset_oban()
    assert await all_enqueued() == []


async def test_drain_queue_dsn_form_takes_the_flags_too(oban_dsn, oban_prefix):
    with Client(oban_dsn, prefix=oban_prefix) as client:
        client.enqueue_many([Noop.new({}, scheduled_in=timedelta(hours=1)), Fail.new({})])
    assert await drain_queue(oban_dsn, "default", prefix=oban_prefix) == {"retryable": 1}
    counts = await drain_queue("default", dsn=oban_dsn, prefix=oban_prefix, with_scheduled=True)
    # The retried job is due again at once: it runs until discarded (attempts 2 and 3 of 3).
    assert counts == {"completed": 1, "retryable": 1, "discarded": 1}
    with Client(oban_dsn, prefix=oban_prefix) as client:
        client.enqueue_many([Fail.new({})])
    with pytest.raises(RuntimeError, match="boom on attempt 1"):
        await drain_queue(oban_dsn, "default", prefix=oban_prefix, with_scheduled=True,
                          with_safety=False)  # fmt: skip
