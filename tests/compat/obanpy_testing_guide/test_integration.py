# Oban.py docs/testing.md, "Integration Testing with Queues" and "Executing Jobs in Tests",
# run on oban_pro through the `oban` shim. The workers are stand-ins; the tests are copies.
from oban import worker
from standins import (
    Account,
    Business,
    account,
    account_with_3_owners,
    sent_emails,
    trigger_background_process,
)


@worker(queue="default")
class ActivationWorker:
    async def process(self, job):
        return None


@worker(queue="default")
class NotificationWorker:
    async def process(self, job):
        return None


@worker(queue="default")
class ProcessWorker:
    async def process(self, job):
        return None


@worker(queue="mailers")
class MeetingMailer:
    async def process(self, job):
        sent_emails.append(job.args["email"])


# ---- docs/testing.md, "Asserting Enqueued Jobs" --------------------------------------------
# One change: the docs post foo@example.com and then expect parker@example.com, which no app
# could satisfy; the copy posts parker@example.com.
from oban.testing import assert_enqueued

async def test_signup_enqueues_activation(app):
    await app.post("/signup", json={"email": "parker@example.com"})

    await assert_enqueued(
        worker=ActivationWorker,
        args={"email": "parker@example.com"},
        queue="default"
    )

async def test_enqueued_args_have_email_key():
    await Account.notify_owners(account)

    # Match jobs that have an "email" key, regardless of value
    await assert_enqueued(queue="default", args={"email": "foo@example.com"})
# ---- end of the copy -----------------------------------------------------------------------


# ---- docs/testing.md, "Refuting Enqueued Jobs" (unchanged) ---------------------------------
from oban.testing import refute_enqueued

async def test_invalid_signup_skips_activation(app):
    response = await app.post("/signup", json={"email": "invalid"})

    assert response.status_code == 400
    await refute_enqueued(worker=ActivationWorker)
# ---- end of the copy -----------------------------------------------------------------------


# ---- docs/testing.md, "Asserting Multiple Jobs" (unchanged) --------------------------------
from oban.testing import all_enqueued

async def test_notifies_all_owners():
    await Account.notify_owners(account_with_3_owners)

    jobs = await all_enqueued(worker=NotificationWorker)
    assert len(jobs) == 3

    # Make complex assertions on each job's args
    for job in jobs:
        assert "email" in job.args
        assert "name" in job.args
# ---- end of the copy -----------------------------------------------------------------------


# ---- docs/testing.md, "Waiting for Async Jobs" (unchanged) ---------------------------------
async def test_async_job_enqueued():
    # Trigger async operation that enqueues a job
    await trigger_background_process()

    # Wait up to 0.2 seconds for the job to be enqueued
    await assert_enqueued(worker=ProcessWorker, timeout=0.2)
# ---- end of the copy -----------------------------------------------------------------------


# ---- docs/testing.md, "Executing Jobs in Tests" (unchanged) --------------------------------
from oban.testing import drain_queue

async def test_email_delivery():
    await Business.schedule_meeting({"email": "monty@brewster.com"})

    result = await drain_queue(queue="mailers")
    assert result["completed"] == 1
    assert result["discarded"] == 0

    # Now assert that the email was sent
    assert len(sent_emails) == 1
# ---- end of the copy -----------------------------------------------------------------------


async def test_drain_queue_options():
    await Business.schedule_meeting({"email": "later@brewster.com"})
    # ---- docs/testing.md, the options of drain_queue() (unchanged) -------------------------
    # Drain without scheduled jobs
    await drain_queue(queue="default", with_scheduled=False)

    # Drain without recursion (jobs that enqueue other jobs won't run)
    await drain_queue(queue="default", with_recursion=False)

    # Drain with safety (errors are recorded, not raised)
    await drain_queue(queue="default", with_safety=True)
    # ---- end of the copy -------------------------------------------------------------------
    await assert_enqueued(queue="mailers")
