"""The acker against a real database: caught_up() waits for the acks added before it, not for
later ones, and says so when they cannot be written in time."""

from __future__ import annotations

import asyncio

from helpers import generic_plan, plan_nodes, query
from psycopg_pool import AsyncConnectionPool

from oban_pro.coordinator.acker import Ack, Acker
from oban_pro.queries import Queries
from oban_pro.store import Store

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
        acker = Acker(Store(pool, Queries(oban_prefix)), max_crashes=3)
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


def generic_ack_plan(dsn: str, prefix: str, values: dict, statement: str = "ack_jobs") -> dict:
    """The root of the EXPLAIN ANALYZE of an ack statement's generic plan (rolled back)."""
    return generic_plan(dsn, getattr(Queries(prefix), statement), values)


def ack_values(ids: list[int]) -> dict:
    n = len(ids)
    return {"ids": ids, "attempts": [1] * n, "uuids": [UUID] * n, "kinds": ["completed"] * n,
            "delays": [0.0] * n, "errors": [None] * n, "metas": [None] * n, "ages": [0.0] * n,
            "max_crashes": 3}  # fmt: skip


async def test_the_acks_generic_plan_finds_rows_by_primary_key(oban_dsn, oban_prefix):
    """With statistics older than a burst of executing rows, the prepared ack's generic plan
    once walked every executing row through the state index and re-read its arrays for each
    (400 ms for 30 acks beside 17,000 executing jobs)."""
    # Statistics of a table with a small backlog; then a burst of executing jobs.
    query(oban_dsn, f"INSERT INTO \"{oban_prefix}\".oban_jobs (state, queue, worker, args) "
                    f"SELECT CASE WHEN i % 2 = 0 THEN 'available' ELSE 'completed' END"
                    f"::text::\"{oban_prefix}\".oban_job_state, 'other', 'W', '{{}}' "
                    f"FROM generate_series(1, 1000) AS i")  # fmt: skip
    query(oban_dsn, f'VACUUM ANALYZE "{oban_prefix}".oban_jobs')
    ids = executing_jobs(oban_dsn, oban_prefix, 20000)
    for statement in ("ack_jobs", "ack_plain_jobs", "ack_completed_jobs"):
        plan = generic_ack_plan(oban_dsn, oban_prefix, ack_values(ids[:30]), statement)
        unnests = [n for n in plan_nodes(plan) if n["Node Type"] == "Function Scan"]
        assert unnests and all(n["Actual Loops"] <= 1 for n in unnests), [
            (statement, n.get("Alias"), n["Actual Loops"]) for n in unnests
        ]


async def test_the_ack_reads_no_table_scan_with_or_without_workflow_steps(oban_dsn, oban_prefix):
    """The workflow release in the ack joined its (usually empty) CTEs to oban_jobs with a
    hash join, so every ack scanned the whole table for suspended rows: 0.55 ms of 1.8 ms of
    PostgreSQL CPU per ack beside 2,000 rows (the planner chose it beside 20,000 too, with
    statistics from before the rows came). Waiting steps are looked up by id only, whether
    the acked job has any or not."""
    # Statistics from before a drain's burst of inserts (as in a benchmark or a backlog).
    query(oban_dsn, f'VACUUM ANALYZE "{oban_prefix}".oban_jobs')
    query(
        oban_dsn,
        f'INSERT INTO "{oban_prefix}".oban_jobs (state, queue, worker, args) '
        f"SELECT 'available', 'other', 'W', '{{}}' FROM generate_series(1, 20000)",
    )
    plain = executing_jobs(oban_dsn, oban_prefix, 1)[0]
    waiting = query(oban_dsn, f'INSERT INTO "{oban_prefix}".oban_jobs (state, queue, worker, '
                              f"args, meta) VALUES ('suspended', 'q', 'W', '{{}}', "
                              f"'{{\"wf_wait\": 1}}') RETURNING id")[0][0]  # fmt: skip
    upstream = executing_jobs(oban_dsn, oban_prefix, 1)[0]
    query(oban_dsn, f'UPDATE "{oban_prefix}".oban_jobs SET meta = jsonb_build_object('
                    f"'wf_next', jsonb_build_array(%s::bigint)) WHERE id = %s",
          (waiting, upstream))  # fmt: skip
    for ids in ([plain], [upstream]):
        plan = generic_ack_plan(oban_dsn, oban_prefix, ack_values(ids))
        scans = [(n.get("Alias"), n.get("Actual Rows")) for n in plan_nodes(plan)
                 if n["Node Type"] == "Seq Scan"]  # fmt: skip
        assert not scans, (ids, scans)
    # And the release itself ran (the plan was executed, then rolled back).
    moved = [n for n in plan_nodes(plan) if n["Node Type"] == "ModifyTable"
             and n.get("Actual Rows", 0) >= 1]  # fmt: skip
    assert len(moved) == 2, "the upstream job's ack and its waiting step's release"


class Batches:
    """The acker's written batches (job ids), with an event per batch."""

    def __init__(self) -> None:
        self.written: list[list[int]] = []
        self.event = asyncio.Event()

    def __call__(self, written) -> None:
        self.written.append([ack.job_id for ack, _state in written])
        self.event.set()

    async def next(self, timeout: float = 10.0) -> list[int]:
        await asyncio.wait_for(self.event.wait(), timeout)
        self.event.clear()
        return self.written[-1]


def done(job_id: int, ran_for: float) -> Ack:
    return Ack(job_id, 1, UUID, "completed", queue="q", duration=ran_for)


async def test_acks_of_long_jobs_linger_to_share_one_write(oban_dsn, oban_prefix):
    ids = executing_jobs(oban_dsn, oban_prefix, 2)
    batches = Batches()
    async with AsyncConnectionPool(oban_dsn, min_size=1, max_size=2, open=False) as pool:
        acker = Acker(Store(pool, Queries(oban_prefix)), max_crashes=3, linger=0.2,
                      on_written=batches)  # fmt: skip
        acker.start()
        loop = asyncio.get_running_loop()
        added = loop.time()
        acker.add(done(ids[0], 5.0))  # ran longer than the linger: waits up to 0.2 s
        await asyncio.sleep(0.01)  # the acker loop is lingering now
        acker.add(done(ids[1], 5.0))
        assert await batches.next() == ids  # one statement for both
        assert loop.time() - added >= 0.2  # not before the first one's linger ran out
        await acker.stop()
    # Their rows say when each job ended, not when the lingering batch was written.
    ((first_age, second_age),) = query(
        oban_dsn,
        f"SELECT extract(epoch FROM timezone('UTC', now()) - max(completed_at) FILTER "
        f"(WHERE id = {ids[0]}))::float8, extract(epoch FROM timezone('UTC', now()) - "
        f"max(completed_at) FILTER (WHERE id = {ids[1]}))::float8 "
        f'FROM "{oban_prefix}".oban_jobs',
    )
    assert first_age >= 0.2 and first_age - second_age >= 0.01


async def test_short_jobs_and_waiting_callers_do_not_linger(oban_dsn, oban_prefix):
    """Held up to a minute, an ack is written at once when its job ran for no time, when a
    short job's ack joins it, when someone waits for it (caught_up), and at stop."""
    a, b, c, d, e = executing_jobs(oban_dsn, oban_prefix, 5)
    batches = Batches()
    async with AsyncConnectionPool(oban_dsn, min_size=1, max_size=2, open=False) as pool:
        acker = Acker(Store(pool, Queries(oban_prefix)), max_crashes=3, linger=60.0,
                      on_written=batches)  # fmt: skip
        acker.start()
        acker.add(done(a, 0.0))
        assert await batches.next() == [a]
        acker.add(done(b, 60.0))
        assert await acker.caught_up(10.0)
        assert await batches.next() == [b]
        acker.add(done(c, 60.0))
        await asyncio.sleep(0.01)
        acker.add(done(d, 0.0))  # its own wait is none: c goes with it
        assert await batches.next() == [c, d]
        acker.add(done(e, 60.0))
        await acker.stop(timeout=10.0)
    states = dict(query(oban_dsn, f'SELECT id, state::text FROM "{oban_prefix}".oban_jobs'))
    assert set(states.values()) == {"completed"}


class RecordingStore(Store):
    """The real Store, noting which ack statement each write used."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.workflow_flags: list[bool] = []

    async def ack_jobs(self, **kwargs):
        self.workflow_flags.append(kwargs["workflow"])
        return await super().ack_jobs(**kwargs)


async def test_a_batch_with_a_job_others_wait_for_is_written_with_the_workflow_release(
    oban_dsn, oban_prefix
):
    (plain,) = executing_jobs(oban_dsn, oban_prefix, 1)
    (step,) = query(oban_dsn, f"INSERT INTO \"{oban_prefix}\".oban_jobs (state, queue, worker, "
                              f"args, meta) VALUES ('suspended', 'q', 'W', '{{}}', "
                              f"'{{\"wf_wait\": 1}}') RETURNING id")  # fmt: skip
    (upstream,) = executing_jobs(oban_dsn, oban_prefix, 1)
    query(oban_dsn, f'UPDATE "{oban_prefix}".oban_jobs SET meta = %s::jsonb WHERE id = %s',
          (f'{{"wf_next": [{step[0]}]}}', upstream))  # fmt: skip
    async with AsyncConnectionPool(oban_dsn, min_size=1, max_size=2, open=False) as pool:
        store = RecordingStore(pool, Queries(oban_prefix))
        acker = Acker(store, max_crashes=3)
        acker.start()
        acker.add(Ack(plain, 1, UUID, "completed", queue="q"))
        assert await acker.flush(10.0)
        acker.add(Ack(plain + 10**9, 1, UUID, "completed", queue="q"))  # fenced out: no row
        acker.add(Ack(upstream, 1, UUID, "completed", queue="q", workflow=True))
        assert await acker.flush(10.0)
        await acker.stop()
    assert store.workflow_flags == [False, True]
    states = dict(query(oban_dsn, f'SELECT id, state::text FROM "{oban_prefix}".oban_jobs'))
    assert (states[plain], states[upstream], states[step[0]]) == (
        "completed", "completed", "available"
    )  # fmt: skip


def test_a_job_fetched_with_wf_next_in_its_meta_is_known_to_have_waiting_jobs():
    from oban_pro.coordinator.dispatcher import _has_waiting_jobs

    assert _has_waiting_jobs(b'{"wf_next": [12], "workflow_id": "w"}')
    assert _has_waiting_jobs('{"workflow_id": "w", "wf_next":[3]}')
    assert not _has_waiting_jobs(b'{"wf_sent": [12], "workflow_id": "w"}')  # already told
    assert not _has_waiting_jobs(b"{}") and not _has_waiting_jobs(None)
