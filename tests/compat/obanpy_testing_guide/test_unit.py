# Oban.py docs/testing.md, "Unit Testing Workers", run on oban_pro through the `oban` shim.
from standins import NotificationService, User

# ---- docs/testing.md, "Testing Process Methods" (unchanged) --------------------------------
from oban import worker
from oban.testing import process_job

@worker(queue="default")
class ActivationWorker:
    async def process(self, job):
        user = await User.activate(job.args["id"])

        return {"activated": user.email}

async def test_activating_a_new_user():
    user = await User.create(email="parker@example.com")

    job = ActivationWorker.new({"id": user.id})
    result = await process_job(job)

    assert result["activated"] == "parker@example.com"
# ---- end of the copy -----------------------------------------------------------------------


# ---- docs/testing.md, "Testing Function Workers" (unchanged) -------------------------------
from oban import job
from oban.testing import process_job

@job(queue="default")
async def send_notification(user_id: int, message: str):
    await NotificationService.send(user_id, message)
    return {"sent": True}

async def test_send_notification():
    job = send_notification.new(123, "Hello World")
    result = await process_job(job)

    assert result["sent"] is True
# ---- end of the copy -----------------------------------------------------------------------


def test_the_function_worker_really_ran():
    process_job(send_notification.new(7, "ran"))
    assert (7, "ran") in NotificationService.sent
