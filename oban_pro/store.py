"""The Store: the statements the engine runs, behind typed methods.

Components get a :class:`Store` at construction and call its methods; they never open a
connection or read a row by position themselves. Each method takes keyword arguments and
returns plain values or the msgspec records below, so a statement's column order is known in
one place (here), and a component can be unit-tested against a fake Store.

It holds the producers' fetches (plain and limited) and producer rows, the acker's write, the
heartbeat, the maintenance plugins' statements (staging, pruning, rescue, workflow repair,
gauges, notices), leadership, cron's inserts, the signals the client sends, the notifier's
LISTEN (:func:`listening`, on a connection of its own), the schema check at start and what
``oban-pro status``, the demo and the testing helpers read. The client API's job operations
(enqueue, get, list, retry, cancel, ...) run as sans-IO steps shared with the sync
:class:`~oban_pro.Client` (oban_pro/operations.py), on the caller's connection when it gives
one (to join its transaction); the Store's inserts run the same steps.

``now`` parameters: the moment to act as of, for tests (a naive UTC ``datetime``); None means
the database's own clock, which every node shares.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import msgspec
import psycopg

from .binary_arrays import (
    float8_array,
    int4_array,
    int8_array,
    jsonb_array,
    text_array,
)
from .enqueue import insert_steps, run_async
from .job import Job
from .limits import LimitStatus, PartitionUse, QueueLimits
from .naming import channel, quote_ident
from .payloads import encode_payload
from .prepared import Prepared, PreparedStatements, prepared
from .queries import Queries
from .workflow_ops import workflow_queries

__all__ = [
    "BeatAnswer",
    "ChangedJob",
    "ClusterStatus",
    "DeadProducer",
    "FetchedJob",
    "KnownProducer",
    "LeaderRow",
    "LocalProducer",
    "ProducerBeat",
    "ProducerRow",
    "RescuedJob",
    "RescueRules",
    "RunningJob",
    "StagedQueue",
    "Store",
]


class FetchedJob(msgspec.Struct, frozen=True):
    """A job a fetch just took for this node: ``executing``, its ``attempt`` counted.

    ``args``, ``meta`` and ``errors`` stay JSON text: the coordinator hands them to a worker
    process as they are and never decodes them on the hot path. Times are epoch seconds."""

    id: int
    worker: str
    args: str
    meta: str
    attempt: int
    max_attempts: int
    priority: int
    tags: list[str] | None
    errors: str | None
    inserted_at: float | None
    scheduled_at: float | None
    attempted_at: float | None


def _fetched_jobs(cursor: Any) -> Any:
    """psycopg row factory: each fetched row straight into a :class:`FetchedJob` (the columns
    of the fetch's RETURNING list, in the order of the fields)."""
    return lambda values: FetchedJob(*values)


class LocalProducer(msgspec.Struct, frozen=True):
    """A producer of the beating node, as its heartbeat writes its row: uuid, queue and meta
    (JSON text)."""

    uuid: str
    queue: str
    meta: str


class RunningJob(NamedTuple):
    """A job this node runs, as its row should still read (heartbeats check it). A named
    tuple, as the runtime has always handed these out (``Runtime.running()``)."""

    job_id: int
    attempt: int
    producer_uuid: str


class ChangedJob(msgspec.Struct, frozen=True):
    """A job the beating node runs whose row no longer gives it this attempt there: ``state``
    is the row's now (``deleted`` when it is gone), ``node`` the one its ``attempted_by``
    names (None when not executing)."""

    job_id: int
    state: str
    node: str | None


class BeatAnswer(msgspec.Struct, frozen=True):
    """What a heartbeat found: producer rows it wrote again because they were gone, and the
    running jobs that are not this node's any more."""

    registered_again: list[str]
    changed: list[ChangedJob]


class StagedQueue(msgspec.Struct, frozen=True):
    """``count`` jobs of ``queue`` became available (an insert notice went out for it)."""

    queue: str
    count: int


class ProducerBeat(msgspec.Struct, frozen=True):
    """A producer row as the lifeline sees it: its last heartbeat and the ttl it declared."""

    uuid: str
    updated_at: datetime
    ttl: float


class KnownProducer(msgspec.Struct, frozen=True):
    """A producer this node has seen heartbeating (its row may be gone since)."""

    uuid: str
    last_beat: datetime
    ttl: float


class RescueRules(msgspec.Struct, frozen=True):
    """What a rescue judges by (see :mod:`oban_pro.plugins.lifeline`)."""

    ttl: float  # oban_pro's heartbeat_ttl
    foreign_ttl: float  # the least silence that proves another engine's producer row dead
    grace: float  # the slowest reconnect a live node's heartbeat can take
    rescue_after: float  # the time-based fallback for producers never seen heartbeating


class RescuedJob(msgspec.Struct, frozen=True):
    """A job the lifeline gave back: ``state`` is ``available``, or ``discarded`` when it had
    no attempt left."""

    id: int
    queue: str
    state: str


class DeadProducer(msgspec.Struct, frozen=True):
    uuid: str
    node: str


class LeaderRow(NamedTuple):
    name: str
    node: str
    expires_at: datetime


class ProducerRow(NamedTuple):
    node: str
    queue: str
    meta: Any
    seconds_since_beat: float


class ClusterStatus(NamedTuple):
    leaders: list[LeaderRow]
    producers: list[ProducerRow]
    #: (queue, state, jobs)
    counts: list[tuple[str, str, int]]


class Store:
    def __init__(self, pool: Any, queries: Queries) -> None:
        self._pool = pool
        self._queries = queries
        self._workflows = workflow_queries(queries.prefix)
        # Sent with the server's own $n placeholders (see ack_jobs): the statement is too long
        # for psycopg's cache of converted queries, which re-parsed its 6.8 KB on every write.
        self._ack = Prepared(queries.ack_jobs)
        self._ack_plain = Prepared(queries.ack_plain_jobs)
        self._ack_completed = Prepared(queries.ack_completed_jobs)

    @property
    def prefix(self) -> str:
        return self._queries.prefix

    @property
    def queries(self) -> Queries:
        """The statements of this Store's prefix (for the heartbeat's dedicated connection)."""
        return self._queries

    # -- fetching -----------------------------------------------------------------------------

    async def fetch_jobs(
        self, *, queue: str, demand: int, node: str, uuid: str
    ) -> list[FetchedJob]:
        """Take up to ``demand`` available jobs of ``queue`` for producer ``uuid`` of ``node``
        (``FOR UPDATE SKIP LOCKED``: nodes never take the same job)."""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=_fetched_jobs)
            # Binary results: the same Python values, parsed in half the CPU (1.6 vs 3.0 us a
            # row).
            await cur.execute(
                self._queries.fetch_jobs,
                {"queue": queue, "demand": demand, "node": node, "uuid": uuid},
                binary=True,
            )
            return await cur.fetchall()

    async def fetch_limited(
        self, limits: QueueLimits, params: dict[str, Any], *, status_when_short: bool, now: float
    ) -> tuple[list[FetchedJob], LimitStatus | None]:
        """Take up to ``params["demand"]`` jobs of a queue limited across nodes, no more than
        its limits leave (see :mod:`oban_pro.limits`); with ``status_when_short``,
        a fetch that got fewer also reads the limits' use, on the same connection."""
        async with self._pool.connection() as conn:
            rows = await _fetch_limited_rows(conn, self._queries, limits, params)
            status = None
            if status_when_short and len(rows) < params["demand"]:
                status = await _read_limit_status(conn, self._queries, limits, params, now)
        return [FetchedJob(*row) for row in rows], status

    async def limit_status(
        self, limits: QueueLimits, params: dict[str, Any], *, now: float
    ) -> LimitStatus:
        """The use of a queue's limits across nodes now."""
        async with self._pool.connection() as conn:
            return await _read_limit_status(conn, self._queries, limits, params, now)

    async def register_producer(
        self, *, uuid: str, name: str, node: str, queue: str, meta: str
    ) -> None:
        """Write (or refresh) producer ``uuid``'s row in ``oban_producers``."""
        await self._execute(
            self._queries.register_producer,
            {"uuid": uuid, "name": name, "node": node, "queue": queue, "meta": meta},
        )

    # -- heartbeats -----------------------------------------------------------------------------

    async def beat(
        self,
        *,
        name: str,
        node: str,
        producers: Sequence[LocalProducer],
        running: Sequence[RunningJob],
    ) -> BeatAnswer:
        """Refresh ``node``'s producer rows (registering again any that vanished) and, in the
        same statement, find which of its running jobs the database no longer gives it."""
        rows = await self._all(
            self._queries.heartbeat,
            {
                "name": name,
                "node": node,
                "uuids": [p.uuid for p in producers],
                "queues": [p.queue for p in producers],
                "metas": [p.meta for p in producers],
                "job_ids": [r.job_id for r in running],
                "job_attempts": [r.attempt for r in running],
                "job_uuids": [r.producer_uuid for r in running],
            },
        )
        registered, changed = [], []
        for kind, key, state, owner in rows:
            if kind == "registered":
                registered.append(key)
            else:
                changed.append(ChangedJob(int(key), state, owner))
        return BeatAnswer(registered, changed)

    async def delete_producers(self, uuids: Sequence[str]) -> None:
        """Delete these producers' rows (stopped queues)."""
        await self._execute(self._queries.delete_producers, {"uuids": list(uuids)})

    # -- acking -------------------------------------------------------------------------------

    async def ack_jobs(
        self,
        *,
        ids: list[int],
        attempts: list[int],
        uuids: list[str],
        kinds: list[str],
        delays: list[float],
        errors: list[str | None],
        metas: list[str | None],
        max_crashes: int,
        ages: list[float] | None = None,
        workflow: bool = True,
    ) -> dict[int, str]:
        """Write a batch of outcomes (one set-based statement, fenced by state, attempt and
        producer uuid; workflow steps waiting for a finished job are released in it). Returns
        the state each job is in now, as the statement decided it; acks fenced out are absent.
        ``ages``: seconds since each job ended (None: just now); its ``completed_at`` (or
        ``cancelled_at``, ``discarded_at``, the base of its backoff) is that long ago.
        ``workflow=False``: no job of the batch holds ``wf_next`` (none has jobs waiting for
        it), so the cheaper statement without the workflow release does; and when every job
        of such a batch simply completed, the cheapest one, which writes only that.
        """
        if workflow:
            statement = self._ack
        elif all(kind == "completed" for kind in kinds) and not any(errors) and not any(metas):
            statement = self._ack_completed
        else:
            statement = self._ack_plain
        # Packed here in PostgreSQL's binary array format (oban_pro/binary_arrays.py: 1.2 vs
        # 4.0 us per acked job in 50-row batches against psycopg's list dumper).
        values: dict[str, Any] = {
            "ids": int8_array(ids), "attempts": int4_array(attempts),
            "uuids": text_array(uuids),
            "ages": float8_array(ages if ages is not None else [0.0] * len(ids)),
        }  # fmt: skip
        if statement is not self._ack_completed:
            values.update(
                kinds=text_array(kinds), delays=float8_array(delays),
                errors=jsonb_array(errors), metas=jsonb_array(metas), max_crashes=max_crashes,
            )  # fmt: skip
        async with self._pool.connection() as conn:
            # A raw cursor takes the text as it is (measured: 378 vs 474 us of this process's
            # CPU per 1-row ack).
            cur = psycopg.AsyncRawCursor(conn)
            await cur.execute(statement.text, [values[name] for name in statement.params])
            return {int(job_id): state for job_id, state in await cur.fetchall()}

    # -- inserting and notifying --------------------------------------------------------------

    async def insert_jobs(self, jobs: list[Job], *, conn: Any = None) -> list[Job]:
        """Insert jobs as :meth:`oban_pro.Oban.enqueue_many` does (unique jobs checked, an
        insert notice per queue); returns them with ids, a unique conflict flagged on the job.
        ``conn``: a psycopg async connection whose transaction they join (else a pooled one).
        """
        steps = insert_steps(self._queries, jobs)
        if conn is not None:
            return await run_async(conn, steps)
        async with self._pool.connection() as own:
            return await run_async(own, steps)

    async def notify_event(self, event: str, payload: dict[str, Any]) -> None:
        """Send ``payload``, encoded as Oban does, on this prefix's channel for ``event``
        (``signal``: queue operations the client sends to nodes)."""
        await self.notify(channel(self.prefix, event), [encode_payload(payload)])

    # -- staging and pruning ------------------------------------------------------------------

    async def stage_due(
        self, *, limit: int, channel: str, now: datetime | None = None
    ) -> list[StagedQueue]:
        """Make at most ``limit`` scheduled/retryable jobs whose time has come available, and
        send an insert notice per queue on ``channel`` in the same statement."""
        rows = await self._all(
            self._queries.stage_jobs, {"limit": limit, "channel": channel, "now": now}
        )
        return [StagedQueue(queue, int(n)) for queue, n, _notified in rows]

    async def prune_finished(
        self, *, max_age: float, limit: int, now: datetime | None = None
    ) -> int:
        """Delete at most ``limit`` finished jobs older than ``max_age`` seconds; how many."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                self._queries.prune_jobs, {"max_age": max_age, "limit": limit, "now": now}
            )
            return int(cur.rowcount)

    # -- producer rows and rescue -------------------------------------------------------------

    async def producer_beats(self, *, ttl: float, foreign_ttl: float) -> list[ProducerBeat]:
        rows = await self._all(
            self._queries.producer_beats, {"ttl": ttl, "foreign_ttl": foreign_ttl}
        )
        return [ProducerBeat(uuid, beat, float(row_ttl)) for uuid, beat, row_ttl in rows]

    async def rescue_orphans(
        self,
        *,
        rules: RescueRules,
        known: Sequence[KnownProducer],
        limit: int,
        now: datetime | None = None,
    ) -> list[RescuedJob]:
        """Give back at most ``limit`` executing jobs whose producer is dead by ``rules``."""
        params = {
            "ttl": rules.ttl,
            "foreign_ttl": rules.foreign_ttl,
            "grace": rules.grace,
            "rescue_after": rules.rescue_after,
            "limit": limit,
            "now": now,
            "known_uuids": [k.uuid for k in known],
            "known_beats": [k.last_beat for k in known],
            "known_ttls": [k.ttl for k in known],
        }
        rows = await self._all(self._queries.rescue_jobs, params)
        return [RescuedJob(int(job_id), queue, state) for job_id, queue, state in rows]

    async def delete_dead_producers(
        self, *, rules: RescueRules, now: datetime | None = None
    ) -> list[DeadProducer]:
        """Delete the rows of dead producers none of whose jobs still executes."""
        params = {"ttl": rules.ttl, "foreign_ttl": rules.foreign_ttl, "grace": rules.grace,
                  "now": now}  # fmt: skip
        rows = await self._all(self._queries.delete_dead_producers, params)
        return [DeadProducer(uuid, node) for uuid, node in rows]

    # -- leadership -----------------------------------------------------------------------------

    async def elect_leader(
        self, *, name: str, node: str, ttl: float, now: datetime | None = None
    ) -> bool:
        """Take ``name``'s lease for ``node`` (or refresh it) unless another node holds one
        that has not expired; whether ``node`` leads now."""
        rows = await self._all(
            self._queries.elect_leader, {"name": name, "node": node, "ttl": ttl, "now": now}
        )
        return bool(rows) and rows[0][0] == node

    async def resign_leader(self, *, name: str, node: str, channel: str, payload: str) -> None:
        """Give up ``node``'s lease of ``name`` and tell the others (``payload`` on ``channel``)
        so one takes over at once."""
        await self._execute(self._queries.resign_leader, {"name": name, "node": node})
        await self.notify(channel, [payload])

    # -- workflow repair ----------------------------------------------------------------------

    async def repair_unsealed(self, *, limit: int) -> tuple[int, int]:
        """Seal at most ``limit`` finished jobs that still hold ``wf_next`` (put in a final
        state outside an ack) and release their waiting jobs: ``(sealed, released)``."""
        rows = await self._all(self._workflows.repair_unsealed, {"limit": limit})
        sealed, released = rows[0] if rows else (0, 0)
        return int(sealed), int(released)

    async def repair_deleted(self, *, after: int, limit: int) -> tuple[int, int, int]:
        """Look at up to ``limit`` suspended jobs with ids above ``after``; cancel (or release)
        the ones short of a deleted dependency: ``(last id looked at, looked, moved)``."""
        rows = await self._all(self._workflows.repair_deleted, {"after": after, "limit": limit})
        last, looked, moved = rows[0] if rows else (0, 0, 0)
        return int(last or 0), int(looked), int(moved)

    # -- gauges and notices -------------------------------------------------------------------

    async def job_counts(self) -> dict[tuple[str, str], int]:
        """Jobs per (queue, state), for the states that wait or run."""
        rows = await self._all(self._queries.queue_counts, None)
        return {(queue, state): int(count) for queue, state, count in rows}

    async def workflow_counts(self) -> dict[str, int]:
        """Workflows per state (a workflow's state as ``workflow_status`` gives it)."""
        rows = await self._all(self._workflows.workflow_counts, None)
        return {state: int(count) for state, count in rows}

    async def notify(self, channel: str, payloads: Sequence[str]) -> None:
        """Send each payload as a notice on ``channel``, in one statement."""
        await self._execute(
            self._queries.notify_many, {"channel": channel, "payloads": list(payloads)}
        )

    # -- schema, tools and tests --------------------------------------------------------------

    async def missing_tables(self) -> list[str]:
        """The engine's tables absent from this prefix (empty: the schema is ready)."""
        return [name for (name,) in await self._all(
            self._queries.missing_tables, {"prefix": self.prefix}
        )]  # fmt: skip

    async def stage_queue(self, *, queue: str, now: datetime) -> None:
        """Make ``queue``'s scheduled and retryable jobs due by ``now`` available (the testing
        drain's ``with_scheduled``)."""
        await self._execute(self._queries.stage_queue, {"queue": queue, "now": now})

    async def reset_tables(self) -> None:
        """Empty oban_jobs, oban_leaders and oban_producers, ids restarting at 1 (tests)."""
        await self._execute(self._queries.reset_tables, None)

    async def count_finished(self, ids: Sequence[int]) -> int:
        """How many of these jobs reached a final state."""
        rows = await self._all(self._queries.count_finished, {"ids": list(ids)})
        return int(rows[0][0]) if rows else 0

    async def job_outcomes(self, ids: Sequence[int]) -> list[tuple[str, dict[str, Any]]]:
        """Each job's state and meta (the demo's summary)."""
        rows = await self._all(self._queries.job_outcomes, {"ids": list(ids)})
        return [(state, meta) for state, meta in rows]

    async def cluster_status(self) -> ClusterStatus:
        """Leaders, producers and job counts per queue and state, for ``oban-pro status``."""
        async with self._pool.connection() as conn:
            leaders = await (await conn.execute(self._queries.all_leaders)).fetchall()
            producers = await (await conn.execute(self._queries.all_producers)).fetchall()
            counts = await (await conn.execute(self._queries.queue_counts)).fetchall()
        return ClusterStatus(
            leaders=[LeaderRow(*row) for row in leaders],
            producers=[ProducerRow(*row) for row in producers],
            counts=[(queue, state, int(n)) for queue, state, n in counts],
        )

    async def _execute(self, sql: str, params: dict[str, Any] | None) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(sql, params)

    async def _all(self, sql: str, params: dict[str, Any] | None) -> list[Any]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()


# -- the limited fetch ----------------------------------------------------------------------


async def _read_limit_status(
    conn: Any, queries: Any, limits: QueueLimits, params: dict[str, Any], now: float
) -> LimitStatus:
    """A limited queue's use of its limits now (one statement; see ``LIMITED_QUEUE_STATUS``)."""
    cur = await conn.execute(queries.limited_queue_status, params)
    rows = await cur.fetchall()
    openings = [row[3] for row in rows if row[3] is not None and row[3] > 0]
    return LimitStatus(
        limits=limits,
        partitions=tuple(PartitionUse(key, running, used) for key, running, used, _ in rows),
        opens_in=min(openings) if openings else None,
        observed_at=now,
    )


async def _fetch_limited_rows(
    conn: Any, queries: Any, limits: QueueLimits, params: dict[str, Any]
) -> list[tuple[Any, ...]]:
    """Fetch up to ``params["demand"]`` jobs of a limited queue, in one transaction: the
    queue's advisory lock first, then count, fetch and record (see :mod:`oban_pro.limits`).
    Returns rows shaped like ``fetch_jobs``."""
    statement = queries.fetch_partitioned_jobs if limits.partition else queries.fetch_limited_jobs
    # Two statements, not one: a statement's snapshot is taken when it starts, so the count must
    # come after the lock was granted.
    if not conn.autocommit:  # a caller's connection in transaction mode
        async with conn.transaction():
            await conn.execute(queries.lock_limited_queue, params)
            cur = await conn.execute(statement, params, binary=True)
            return await cur.fetchall()
    # Both in one simple-protocol message: the server runs them as one implicit transaction,
    # each statement with a snapshot of its own, so the fetch sees every commit made before the
    # lock was granted. One round trip instead of four (BEGIN, lock, fetch, COMMIT), and the
    # statements are prepared once per connection (oban_pro.prepared). psycopg's pipeline mode
    # was tried first and cost more client CPU per fetch (1.2 ms vs 0.8 ms measured).
    lock, fetch = prepared(queries.lock_limited_queue), prepared(statement)
    for attempt in (1, 2):
        try:
            await _PREPARED.ensure(conn, (lock, fetch))
            lock_sql, lock_args = lock.call(params)
            fetch_sql, fetch_args = fetch.call(params)
            cur = psycopg.AsyncClientCursor(conn)
            await cur.execute(f"{lock_sql}; {fetch_sql}", [*lock_args, *fetch_args])
            cur.nextset()
            return await cur.fetchall()
        except psycopg.errors.InvalidSqlStatementName:
            _PREPARED.forget(conn)  # the server lost them (DISCARD ALL, a pooler): once more
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


#: The limited fetch's statements prepared on each connection.
_PREPARED = PreparedStatements()


# -- notifications --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def listening(
    conninfo: str, channels: Iterable[str]
) -> AsyncIterator[AsyncIterator[tuple[str, str]]]:
    """A connection of its own that LISTENs on ``channels`` (a pooled one would go back to the
    pool, and LISTEN with it); yields its notifications as ``(channel, payload)`` until closed.
    """
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        for name in channels:
            await conn.execute(f"LISTEN {quote_ident(name)}")
        yield ((notice.channel, notice.payload) async for notice in conn.notifies())
