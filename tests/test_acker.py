"""The acker against a real database: caught_up() waits for the acks added before it, not for
later ones, and says so when they cannot be written in time."""

from __future__ import annotations

import asyncio

from helpers import query
from psycopg_pool import AsyncConnectionPool

from oban_pro.coordinator.acker import Ack, Acker
from oban_pro.queries import Queries

UUID = "00000000-0000-0000-0000-0000000000aa"


def executing_jobs(dsn: str, prefix: str, n: int) -> list[int]:
    rows = query(
        dsn,
        f'INSERT INTO "{prefix}".oban_jobs (state, queue, worker, args, attempt, attempted_at, '
        f"attempted_by) SELECT 'executing', 'q', 'W', '{{}}', 1, now(), ARRAY['n', %s] "
        f"FROM generate_series(1, %s) RETURNING id",
        (UUID, n),
    )
    return [r[0] for r in rows]


async def test_caught_up_waits_for_earlier_acks_only(oban_dsn, oban_prefix):
    ids = executing_jobs(oban_dsn, oban_prefix, 3)
    async with AsyncConnectionPool(oban_dsn, min_size=1, max_size=2, open=False) as pool:
        acker = Acker(pool, Queries(oban_prefix).ack_jobs, max_crashes=3)
        assert await acker.caught_up(0.01)  # nothing added yet
        acker.add(Ack(ids[0], 1, UUID, "completed", queue="q"))
        acker.add(Ack(ids[1], 1, UUID, "completed", queue="q"))
        assert not await acker.caught_up(0.05)  # the loop is not running: nothing is written
        acker.start()
        waiting = asyncio.ensure_future(acker.caught_up(10))
        await asyncio.sleep(0)
        acker.add(Ack(ids[2], 1, UUID, "completed", queue="q"))  # added after the wait began
        assert await waiting
        states = dict(query(oban_dsn, f'SELECT id, state::text FROM "{oban_prefix}".oban_jobs'))
        assert states[ids[0]] == states[ids[1]] == "completed"
        await acker.stop()
    assert (
        dict(query(oban_dsn, f'SELECT id, state::text FROM "{oban_prefix}".oban_jobs'))[ids[2]]
        == "completed"
    )
