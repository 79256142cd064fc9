"""The Oban.py side of the interop test: run by the Python >= 3.12 venv that holds the open-source
``oban`` package (never by the project's interpreter; oban_pro must not be importable here).

Usage: python -m obanpy_side DSN PREFIX. It starts an Oban.py node serving queue ``py``,
enqueues one job for an oban_pro worker, prints its id as JSON, and runs until stdin closes.
"""

import asyncio
import json
import sys

from oban import Job, Oban, Record, worker


@worker(queue="py")
class Echo:
    async def process(self, job):
        return Record({"echo": job.args, "engine": "oban.py"})


async def main(dsn: str, prefix: str) -> None:
    pool = await Oban.create_pool(dsn)
    try:
        async with Oban(pool=pool, prefix=prefix, queues={"py": 2}, node="obanpy-node") as oban:
            job = await oban.enqueue(
                Job(worker="engine_workers.RecordIt", args={"values": [20, 22]}, queue="default")
            )
            print(json.dumps({"enqueued": job.id}), flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        await pool.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
