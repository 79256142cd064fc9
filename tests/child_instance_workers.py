"""Workers that use ``Oban.get_instance()`` from inside their job (imported by child processes).

Each records what it did (``Record``), so the test reads it from the job's ``meta.return``.
"""

from __future__ import annotations

from oban_pro import Job, Oban, Record, worker

HELD = "held"  # a queue no test node runs: jobs enqueued there stay where they are put


def held_job(n: int) -> Job:
    return Job(worker="child_instance_workers.Held", queue=HELD, args={"n": n})


@worker(queue=HELD)
class Held:
    def process(self, job):
        pass


@worker(queue="default")
class ArticleSnippet:
    """Oban.py's documented call, unchanged: the default instance name, awaited."""

    async def process(self, job):
        oban = Oban.get_instance()
        follow = await oban.enqueue(held_job(0))
        return Record({"follow": follow.id, "face": type(oban).__name__})


@worker(queue="default")
class UseInstanceAsync:
    async def process(self, job):
        oban = Oban.get_instance(job.args["instance"])
        a = await oban.enqueue(held_job(1))
        b, c = await oban.enqueue_many(held_job(2), held_job(3))
        await oban.update_job(b, {"priority": 5, "tags": ["Moved"]})
        await oban.cancel_job(a)
        await oban.cancel_job(b)
        await oban.retry_job(b)
        await oban.delete_job(c)
        seen = await oban.get_job(a.id)
        await oban.pause_queue(job.args["pause"])
        await oban.scale_queue(job.args["pause"], limit=7)
        return Record(_summary(oban, a, b, c, seen))


@worker(queue="default")
class UseInstanceSync:
    def process(self, job):
        oban = Oban.get_instance(job.args["instance"])
        a = oban.enqueue(held_job(1))
        b, c = oban.enqueue_many([held_job(2), held_job(3)])
        oban.update_job(b, {"priority": 5, "tags": ["Moved"]})
        oban.cancel_job(a)
        oban.cancel_job(b)
        oban.retry_job(b)
        oban.delete_job(c)
        seen = oban.get_job(a.id)
        oban.pause_queue(job.args["pause"])
        oban.scale_queue(job.args["pause"], limit=7)
        return Record(_summary(oban, a, b, c, seen))


def _summary(oban, a, b, c, seen) -> dict:
    return {
        "face": type(oban).__name__,
        "ids": [a.id, b.id, c.id],
        "seen_state": seen.state,
        # update_job makes the caller's Job read as the updated row, as in Oban.py
        "b_priority": b.priority,
        "b_tags": b.tags,
    }


def _error(call) -> str:
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the test reads what was raised
        return f"{type(exc).__name__}: {exc}"
    return "no error"


@worker(queue="default")
class CoordinatorOnlyAsync:
    async def process(self, job):
        oban = Oban.get_instance(job.args["instance"])
        return Record(
            {
                "check_queue": _error(lambda: oban.check_queue("default")),
                "kill_job": _error(lambda: oban.kill_job(job.id)),
                "is_leader": _error(lambda: oban.is_leader),
                "wrong_name": _error(lambda: Oban.get_instance("NoSuchInstance")),
            }
        )


@worker(queue="default")
class CoordinatorOnlySync:
    def process(self, job):
        oban = Oban.get_instance(job.args["instance"])
        return Record(
            {
                "face": type(oban).__name__,
                "check_all_queues": _error(oban.check_all_queues),
                "kill_job": _error(lambda: oban.kill_job(job.id)),
            }
        )
