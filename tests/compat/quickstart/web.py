# The "web app" side of Oban.py's docs/quickstart.md ("Running in Standalone Mode"): a client-only
# Oban that enqueues; the jobs run on a separate `obanpro start` node. Lines copied from the
# docs are marked; the one change to them is the `await` that the docs' enqueue_many example
# omits (without it nothing is inserted, in Oban.py too).
import asyncio
import json
import os
import sys
from datetime import timedelta


async def main():
    from oban import Oban

    from exports import ExportWorker
    from mailer import send_email

    # ---- docs/quickstart.md, "In your web app" (unchanged) ---------------------------------
    pool = await Oban.create_pool()
    oban = Oban(pool=pool)  # No queues, client-only
    # ---- end of the copy -----------------------------------------------------------------

    async with oban:
        # ---- docs/quickstart.md, "Enqueueing Jobs" (unchanged) -----------------------------
        await send_email.enqueue("user@example.com", "Welcome", "Thanks for signing up!")
        # ---- end of the copy; the README's ExportWorker takes these args ------------------
        await ExportWorker.enqueue({"report_id": 123, "email": "x@y"})
        # ---- "Batch Enqueueing" (the docs write it without await) --------------------------
        await oban.enqueue_many(
            send_email.new("user1@example.com", "Hello", "Message 1"),
            send_email.new("user2@example.com", "Hello", "Message 2"),
        )
        # ---- "Scheduled Jobs" (unchanged) ---------------------------------------------------
        await send_email.enqueue(
            "user@example.com",
            "Reminder",
            "Don't forget!",
            schedule_in=timedelta(hours=6)
        )
        # ---- end of the copies --------------------------------------------------------------
        async with oban._connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM oban_jobs")
            (count,) = await cur.fetchone()
    await pool.close()
    print(json.dumps({"enqueued": count}), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    asyncio.run(main())
