"""A cron worker for the chaos suite: ``* * * * *``, into a queue no test node serves.

Only node subprocesses import this module (``--import chaos.cron_workers``): importing it in the
pytest process would add the entry to every Oban instance of the session. The scheduler test
imports it and removes the entry from the process-wide list at once.
"""

from __future__ import annotations

from oban_pro import worker

CRON_QUEUE = "chaos_cron"


@worker(queue=CRON_QUEUE, cron="* * * * *")
class CronTick:
    def process(self, job):
        return None
