# The worker of Oban.py's README "Quick Start", step 1, copied unchanged between the marked
# lines below. Oban.py leaves generate_report and send_to_user to the reader; the two stubs
# above the copy stand in for them (report 7 is still "pending", every other one is ready).
import json
import os
from types import SimpleNamespace


async def generate_report(report_id):
    return SimpleNamespace(id=report_id, status="pending" if report_id == 7 else "ready")


async def send_to_user(email, report):
    with open(os.environ["QUICKSTART_OUTBOX"], "a") as outbox:
        outbox.write(json.dumps({"email": email, "report": report.id, "pid": os.getpid()}) + "\n")


# ---- Oban.py README, Quick Start, step 1 (unchanged) -------------------------------------
from oban import worker, Snooze, Cancel

@worker(queue="exports", max_attempts=5)
class ExportWorker:
    async def process(self, job):
        # Check if user cancelled their export request
        if job.cancelled():
            return Cancel("Export cancelled by user")

        report = await generate_report(job.args["report_id"])

        # Not ready? Check again in 30 seconds (doesn't count as a failure)
        if report.status == "pending":
            return Snooze(seconds=30)

        await send_to_user(job.args["email"], report)
# ---- end of the copy -----------------------------------------------------------------------
