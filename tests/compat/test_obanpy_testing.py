"""Oban.py's ``oban.testing`` on oban_pro: its helpers, modes and their behaviour.

The cases follow Oban.py 0.7's own tests of the module (``test/testing_test.py``), run against
oban_pro's ``oban_pro.testing``, plus what oban_pro adds: jobs drained here go through the real
fetch and ack statements, so the rows end as a node leaves them. Workers are defined inside the
tests, as Oban.py's tests define them: the helpers run jobs in this process, where they are
registered.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from helpers import query

from oban_pro import Cancel, Job, Oban, Record, Snooze, job, worker
from oban_pro.errors import ConfigError, NotRunningError, UnknownWorkerError, ValidationError
from oban_pro.testing import (
    all_enqueued,
    assert_enqueued,
    drain_queue,
    mode,
    process_job,
    refute_enqueued,
    reset_oban,
)


def future(**kwargs):
    return datetime.now(UTC) + timedelta(**kwargs)


@pytest.fixture
async def oban_factory(oban_dsn, oban_prefix):
    """Oban.py's ``oban_instance`` fixture: builds clients on the test's schema, stops them."""
    made = []

    def make(**overrides):
        oban = Oban(**{"dsn": oban_dsn, "prefix": oban_prefix, **overrides})
        made.append(oban)
        return oban

    yield make
    for oban in made:
        await oban.stop()


# -- process_job ----------------------------------------------------------------------------


class TestProcessJob:
    def test_with_worker_new(self):
        @worker()
        class SampleWorker:
            async def process(self, job):
                return job.args

        assert process_job(SampleWorker.new({"user_id": 123}))["user_id"] == 123

    def test_with_function_new(self):
        @job()
        def echo(email):
            return email

        assert process_job(echo.new("test@example.com")) == "test@example.com"

    def test_with_attempt_number(self):
        @worker()
        class RetryAware:
            async def process(self, job):
                if job.attempt < 3:
                    raise ValueError("boom")
                return {"success": True, "attempt": job.attempt}

        job = RetryAware.new()
        job.attempt = 3
        assert process_job(job) == {"success": True, "attempt": 3}

    def test_a_failing_worker_raises_its_own_error(self):
        @worker()
        class Failing:
            async def process(self, job):
                raise ValueError("boom")

        with pytest.raises(ValueError, match="boom"):
            process_job(Failing.new())

    def test_sets_execution_defaults(self):
        seen = {}

        @worker()
        class Verifying:
            async def process(self, job):
                seen.update(id=job.id, attempt=job.attempt, attempted_at=job.attempted_at,
                            scheduled_at=job.scheduled_at, inserted_at=job.inserted_at)  # fmt: skip

        job = Verifying.new({"data": "test"})
        assert (job.id, job.attempt, job.attempted_at) == (None, 0, None)
        process_job(job)
        assert seen["id"] is not None and seen["attempt"] == 1
        assert None not in (seen["attempted_at"], seen["scheduled_at"], seen["inserted_at"])

    def test_preserves_explicit_values(self):
        @worker()
        class Verifying:
            async def process(self, job):
                return (job.id, job.attempt)

        assert process_job(Verifying.new({}, attempt=5, id=999)) == (999, 5)

    def test_args_and_meta_go_through_json(self):
        @worker()
        class Json:
            async def process(self, job):
                return job.args["value"], job.meta["tuple"]

        job = Json.new({"value": (1, 2, 3)}, meta={"tuple": ("a",)})
        assert process_job(job) == ([1, 2, 3], ["a"])

    def test_args_json_cannot_hold_are_refused_when_the_job_is_built(self):
        # Oban.py raises TypeError in process_job; oban_pro validates a job when it is built.
        @worker()
        class Bad:
            async def process(self, job):
                pass

        with pytest.raises(ValidationError, match="not JSON-serialisable"):
            Bad.new({"function": lambda x: x})

    def test_sync_workers_and_results_are_returned_as_they_are(self):
        @worker()
        class Snoozer:
            def process(self, job):
                return Snooze(seconds=5)

        @job()
        def cancel_me():
            return Cancel(reason="no")

        assert process_job(Snoozer.new()) == Snooze(seconds=5)
        assert process_job(cancel_me.new()).reason == "no"

    def test_an_unknown_worker_raises_unknown_worker_error(self):
        with pytest.raises(UnknownWorkerError, match="no.such.Worker"):
            process_job(Job("no.such.Worker"))

    async def test_inside_an_event_loop_it_is_awaited(self):
        @worker()
        class Activation:
            async def process(self, job):
                await asyncio.sleep(0)
                return {"activated": job.args["email"]}

        result = await process_job(Activation.new({"email": "parker@example.com"}))
        assert result == {"activated": "parker@example.com"}


# -- modes --------------------------------------------------------------------------------


class TestInlineMode:
    async def test_inline_mode_executes_immediately_without_the_database(self, oban_factory):
        executed = asyncio.Event()

        @worker()
        class Inline:
            async def process(self, job):
                executed.set()
                return Record({"value": job.args["value"]})

        with mode("inline"):
            oban = oban_factory()
            job = await oban.enqueue(Inline.new({"value": 42}))
            assert executed.is_set()
            assert job.args["value"] == 42 and job.worker.endswith("Inline")
            assert job.state == "completed" and job.completed_at is not None
            assert job.meta["recorded"] is True
        await refute_enqueued()
        assert await oban.list_jobs() == []

    async def test_outcomes_inline(self, oban_factory):
        oban_factory()

        @job(queue="default")
        async def send_email(to, subject):
            return Snooze(seconds=30) if subject == "later" else None

        @worker(max_attempts=1)
        class Failing:
            async def process(self, job):
                raise RuntimeError("inline boom")

        with mode("inline"):
            assert (await send_email.enqueue("user@example.com", "Hello")).state == "completed"
            snoozed = await send_email.enqueue("user@example.com", "later")
            assert snoozed.state == "scheduled" and snoozed.meta["snoozed"] == 1
            failing = Failing.new()
            with pytest.raises(RuntimeError, match="inline boom"):
                await Oban.get_instance().enqueue(failing)
            assert failing.state == "discarded" and "inline boom" in failing.errors[-1]["error"]

    async def test_manual_mode_and_no_mode_insert(self, oban_factory):
        oban = oban_factory()

        @worker()
        class Manual:
            async def process(self, job):
                raise AssertionError("must not run")

        with mode("inline"):
            with mode("manual"):
                await oban.enqueue(Manual.new({"n": 1}))
        await oban.enqueue(Manual.new({"n": 2}))
        assert [j.args["n"] for j in await all_enqueued(worker=Manual)] == [2, 1]

    def test_an_unknown_mode_is_refused(self):
        with pytest.raises(ConfigError, match="testing mode"):
            with mode("sideways"):
                pass


# -- all_enqueued / assert_enqueued / refute_enqueued ---------------------------------------


class TestAllEnqueued:
    async def test_no_filters_worker_args_and_descending_order(self, oban_factory):
        @worker(queue="alpha")
        class Alpha:
            async def process(self, job):
                pass

        @worker(queue="omega")
        class Omega:
            async def process(self, job):
                pass

        oban = oban_factory()
        await oban.enqueue_many(
            Alpha.new({"id": 1}), Omega.new(), Alpha.new({"id": 1, "extra": "data"}),
            Alpha.new({"id": 2}),
        )  # fmt: skip
        assert len(await all_enqueued()) == 4
        assert [j.args for j in await all_enqueued(worker=Alpha)] == [
            {"id": 2}, {"id": 1, "extra": "data"}, {"id": 1},
        ]  # fmt: skip
        assert len(await all_enqueued(worker=Alpha, args={"id": 1})) == 2
        assert len(await all_enqueued(queue="omega")) == 1
        assert await all_enqueued(worker=Omega, args={"id": 1}) == []

    async def test_fields_states_and_scheduled_in(self, oban_factory):
        @worker()
        class Fields:
            async def process(self, job):
                pass

        oban = oban_factory()
        await oban.enqueue_many(
            Fields.new({"n": 1}, priority=5, tags=["a"]),
            Fields.new({"n": 2}, scheduled_in=timedelta(hours=1)),
            Fields.new({"n": 3}, state="suspended"),
            Fields.new({"n": 4}, state="completed"),
        )
        assert [j.args["n"] for j in await all_enqueued(priority=5, tags=["a"])] == [1]
        assert [j.args["n"] for j in await all_enqueued(scheduled_in=3600)] == [2]
        assert await all_enqueued(scheduled_in=timedelta(minutes=30)) == []
        assert [j.args["n"] for j in await all_enqueued(state="suspended")] == [3]
        assert sorted(j.args["n"] for j in await all_enqueued()) == [1, 2, 3]
        # Partial args are top-level keys compared whole, as in Oban.py (not containment).
        await oban.enqueue(Fields.new({"nested": {"a": 1, "b": 2}}))
        assert await all_enqueued(args={"nested": {"a": 1}}) == []
        assert len(await all_enqueued(args={"nested": {"a": 1, "b": 2}})) == 1

    async def test_an_instance_given_or_named(self, oban_factory):
        other = oban_factory(name="batch")
        await other.enqueue(Job("app.Batch", args={"n": 1}))
        assert len(await all_enqueued(oban="batch")) == 1
        assert len(await all_enqueued(oban=other)) == 1
        with pytest.raises(NotRunningError, match="no Oban instance named 'Oban'"):
            await all_enqueued()


class TestAssertEnqueued:
    async def test_matching_by_worker_queue_and_args(self, oban_factory):
        @worker(queue="alpha")
        class Alpha:
            async def process(self, job):
                pass

        @worker(queue="omega", max_attempts=5)
        class Omega:
            async def process(self, job):
                pass

        oban = oban_factory()
        await oban.enqueue_many(
            Alpha.new(), Alpha.new({"id": 1, "xd": 1}), Omega.new({"id": 1, "xd": 2})
        )
        await assert_enqueued(worker=Alpha)
        await assert_enqueued(worker=Alpha, queue="alpha")
        await assert_enqueued(worker=Omega, args={})
        await assert_enqueued(worker=Omega, args={"id": 1, "xd": 2})
        await assert_enqueued(worker=Omega, max_attempts=5, oban="Oban")

    async def test_no_match_lists_the_waiting_jobs(self, oban_factory):
        @worker(queue="alpha")
        class Alpha:
            async def process(self, job):
                pass

        await oban_factory().enqueue(Alpha.new({"id": 1}))
        with pytest.raises(AssertionError) as raised:
            await assert_enqueued(worker=Alpha, args={"id": 999})
        message = str(raised.value)
        assert message.startswith("Expected a job matching: {'worker': ")
        assert "Alpha', 'args': {'id': 999}} to be enqueued. Instead found:" in message
        assert "  Job(id=1, worker=Alpha" in message

    async def test_timeout_waits_for_a_job_enqueued_later(self, oban_factory):
        @worker()
        class Later:
            async def process(self, job):
                pass

        oban = oban_factory()

        async def enqueue_after_delay():
            await asyncio.sleep(0.05)
            await oban.enqueue(Later.new({"id": 1}))

        task = asyncio.create_task(enqueue_after_delay())
        await assert_enqueued(worker=Later, timeout=10)
        await task

    async def test_timeout_expires(self, oban_factory):
        oban_factory()
        with pytest.raises(AssertionError, match="within 0.01s"):
            await assert_enqueued(worker="app.Never", timeout=0.01)


class TestRefuteEnqueued:
    async def test_passes_when_nothing_matches(self, oban_factory):
        @worker(queue="alpha")
        class Alpha:
            async def process(self, job):
                pass

        await oban_factory().enqueue(Alpha.new({"id": 1}))
        await refute_enqueued(worker=Alpha, args={"id": 999})
        await refute_enqueued(queue="omega")
        await refute_enqueued(worker=Alpha, timeout=0.05, args={"id": 2})

    async def test_fails_on_a_match_listing_it(self, oban_factory):
        @worker(queue="alpha")
        class Alpha:
            async def process(self, job):
                pass

        await oban_factory().enqueue(Alpha.new({"id": 1}))
        with pytest.raises(AssertionError) as raised:
            await refute_enqueued(worker=Alpha)
        assert "Expected no jobs matching: {'worker': " in str(raised.value)
        assert "  Job(id=1, worker=Alpha" in str(raised.value)

    async def test_timeout_catches_a_job_enqueued_later(self, oban_factory):
        @worker()
        class Later:
            async def process(self, job):
                pass

        oban = oban_factory()

        async def enqueue_after_delay():
            await asyncio.sleep(0.05)
            await oban.enqueue(Later.new({"id": 1}))

        task = asyncio.create_task(enqueue_after_delay())
        with pytest.raises(AssertionError, match="within 10s"):
            await refute_enqueued(worker=Later, timeout=10)
        await task


# -- drain_queue ----------------------------------------------------------------------------


class TestDrainQueue:
    async def test_available_and_scheduled_jobs_in_oban_pys_result_shape(
        self, oban_factory, oban_dsn, oban_prefix
    ):
        ran = []

        @worker(queue="default")
        class Simple:
            async def process(self, job):
                ran.append(job.id)

        @worker(queue="other")
        class Elsewhere:
            async def process(self, job):
                raise AssertionError("another queue must not run")

        oban = oban_factory()
        jobs = await oban.enqueue_many(
            Simple.new(), Simple.new(), Simple.new(scheduled_at=future(hours=1)),
            Elsewhere.new(scheduled_at=future(hours=1)),
        )  # fmt: skip
        result = await drain_queue(queue="default")
        assert result == {
            "cancelled": 0, "completed": 3, "discarded": 0, "retryable": 0, "scheduled": 0,
        }  # fmt: skip
        assert sorted(ran) == [j.id for j in jobs[:3]]
        rows = query(
            oban_dsn,
            f'SELECT state::text, attempted_by FROM "{oban_prefix}".oban_jobs ORDER BY id',
        )
        assert [state for state, _ in rows] == ["completed"] * 3 + ["scheduled"]
        node, producer = rows[0][1]
        assert node == "drain" and uuid.UUID(producer)

    async def test_without_scheduled_jobs(self, oban_factory):
        @worker(queue="default")
        class Scheduled:
            async def process(self, job):
                pass

        oban_factory()
        await Scheduled.enqueue(scheduled_at=future(hours=1))
        assert (await drain_queue(queue="default", with_scheduled=False))["completed"] == 0
        await assert_enqueued(worker=Scheduled, state="scheduled")

    async def test_with_safety_errors_are_recorded(self, oban_factory, oban_dsn, oban_prefix):
        @worker(queue="default", max_attempts=2)
        class Failing:
            async def process(self, job):
                raise ValueError("boom")

        oban_factory()
        await Failing.enqueue()
        # As Oban.py 0.7.0 does (checked against it): the retried job is due again at once
        # (with_scheduled), so it runs until discarded, each failure recorded.
        result = await drain_queue(queue="default", with_safety=True)
        assert (result["retryable"], result["discarded"]) == (1, 1)
        ((state, errors),) = query(
            oban_dsn, f'SELECT state::text, to_jsonb(errors) FROM "{oban_prefix}".oban_jobs'
        )
        assert state == "discarded" and all("ValueError: boom" in e["error"] for e in errors)
        assert len(errors) == 2

    async def test_without_safety_the_error_propagates_after_it_is_recorded(
        self, oban_factory, oban_dsn, oban_prefix
    ):
        @worker(queue="default")
        class FailingWorker:
            async def process(self, job):
                raise RuntimeError("test error")

        @worker(queue="default")
        class Fine:
            async def process(self, job):
                pass

        oban = oban_factory()
        failing = await FailingWorker.enqueue()
        await oban.enqueue(Fine.new())
        with pytest.raises(RuntimeError, match="test error"):
            await drain_queue(queue="default", with_safety=False)
        states = dict(query(oban_dsn, f'SELECT id, state::text FROM "{oban_prefix}".oban_jobs'))
        assert states[failing.id] == "retryable"

    async def test_single_pass_without_safety_gives_back_the_jobs_it_did_not_run(
        self, oban_factory, oban_dsn, oban_prefix
    ):
        @worker(queue="default")
        class Explodes:
            async def process(self, job):
                raise RuntimeError("first")

        @worker(queue="default")
        class Untouched:
            async def process(self, job):
                raise AssertionError("must not run after the error")

        oban = oban_factory()
        await oban.enqueue_many(Explodes.new(), Untouched.new())
        with pytest.raises(RuntimeError, match="first"):
            await drain_queue(queue="default", with_recursion=False)
        rows = query(
            oban_dsn, f'SELECT state::text, attempt FROM "{oban_prefix}".oban_jobs ORDER BY id'
        )
        assert rows == [("retryable", 1), ("available", 0)]

    async def test_recursion_runs_the_jobs_that_jobs_enqueue(self, oban_factory):
        @worker(queue="default")
        class Recursive:
            async def process(self, job):
                depth = job.args["depth"]
                if depth < 2:
                    await Recursive.enqueue({"depth": depth + 1})

        oban_factory()
        await Recursive.enqueue({"depth": 0})
        assert (await drain_queue(queue="default", with_recursion=True))["completed"] == 3

    async def test_without_recursion_one_pass_over_the_jobs_available(self, oban_factory):
        # Oban.py 0.7 runs a single job here; oban_pro runs the pass its docs describe: the
        # jobs available when the drain starts, and not the jobs they enqueue.
        @worker(queue="default")
        class Spawner:
            def process(self, job):  # a sync job: it runs on a thread, as in a child
                return None

        @worker(queue="default")
        class Parent:
            async def process(self, job):
                await Spawner.enqueue({"from": job.id})

        oban_factory()
        await Parent.enqueue()
        await Parent.enqueue()
        result = await drain_queue(queue="default", with_recursion=False)
        assert result["completed"] == 2
        assert len(await all_enqueued(worker=Spawner)) == 2
        assert (await drain_queue(queue="default"))["completed"] == 2

    async def test_alternate_states(self, oban_factory):
        @worker(queue="default")
        class CancelWorker:
            async def process(self, job):
                return Cancel(reason="test cancel")

        @worker(queue="default")
        class SnoozeWorker:
            async def process(self, job):
                if job.meta.get("snoozed", 0) < 1:
                    return Snooze(seconds=60)

        oban = oban_factory()
        await oban.enqueue_many(SnoozeWorker.new(), CancelWorker.new())
        result = await drain_queue(queue="default", with_scheduled=False)
        assert (result["cancelled"], result["scheduled"], result["completed"]) == (1, 1, 0)
        # With scheduled jobs, the snoozed one runs again (and now completes).
        assert (await drain_queue(queue="default"))["completed"] == 1

    async def test_async_worker_timeouts_apply(self, oban_factory, oban_dsn, oban_prefix):
        @worker(queue="default", timeout=0.05, max_attempts=1)
        class Slow:
            async def process(self, job):
                await asyncio.sleep(30)

        oban_factory()
        await Slow.enqueue()
        assert (await drain_queue(with_safety=True))["discarded"] == 1
        ((errors,),) = query(oban_dsn, f'SELECT to_jsonb(errors) FROM "{oban_prefix}".oban_jobs')
        assert (
            "JobTimeoutError" in errors[0]["error"]
            and "timed out after 0.05s" in errors[0]["error"]
        )


class TestResetOban:
    async def test_reset_empties_the_tables_and_restarts_ids(self, oban_factory):
        oban = oban_factory()
        await oban.enqueue_many(Job("app.A"), Job("app.B"))
        await reset_oban()
        assert await all_enqueued() == []
        assert (await oban.enqueue(Job("app.C"))).id == 1
        await reset_oban(oban)
        assert await oban.list_jobs() == []
