# Oban.py's README "Quick Start", steps 2 and 3 (the embedded form), copied unchanged between
# the marked lines; around them, what the README leaves to the application: a pool (made the
# way Oban.py's docs make it, from oban.toml / OBAN_DSN) and a wait until the jobs are done.
import asyncio
import json
import os
import sys

from exports import ExportWorker


async def wait_for_jobs(oban, expected):
    # Polls the jobs table through Oban.py's documented oban._connection() until every queued
    # job reached a state in ``expected`` (e.g. {"completed", "scheduled"}).
    for _ in range(3000):
        async with oban._connection() as conn:
            cur = await conn.execute("SELECT id, state::text FROM oban_jobs ORDER BY id")
            rows = await cur.fetchall()
        if rows and all(state in expected for _, state in rows):
            return rows
        await asyncio.sleep(0.02)
    raise TimeoutError(f"jobs never reached {expected}: {rows}")


async def main():
    from oban import Oban

    pool = await Oban.create_pool()

    # ---- Oban.py README, Quick Start, step 3 "embed in your application" (unchanged) ------
    oban = Oban(pool=pool, queues={"exports": 10})

    async with oban:
        # ---- Oban.py README, Quick Start, step 2 (unchanged) -------------------------------
        await ExportWorker.enqueue({"report_id": 123, "email": "user@example.com"})
        # ---- end of the copy ----------------------------------------------------------------
        await ExportWorker.enqueue({"report_id": 7, "email": "later@example.com"})
        rows = await wait_for_jobs(oban, {"completed", "scheduled"})
        print(json.dumps({"jobs": rows}), flush=True)

    await pool.close()


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    asyncio.run(main())
