"""A module with a cron worker, found by ``--cron-paths`` discovery (and named by
``--cron-modules``)."""

from oban_pro import worker


@worker(queue="maintenance", cron="@daily")
class DailyCleanup:
    async def process(self, job):
        print("Running daily cleanup...")
