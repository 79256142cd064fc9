"""Every SQL statement the engine runs, by name, in one place (the "driver seam").

Statements are written with tokens: ``{p}`` for the quoted prefix, ``{now}`` for the current UTC
time (or the ``now`` parameter), ``{server_start}`` and ``{job_columns}``. :class:`Queries`
substitutes them once for a validated prefix, so runtime code never builds SQL. Time-sensitive
statements take an optional ``now`` parameter (a naive UTC timestamp) so tests can move time
instead of sleeping.
"""

from __future__ import annotations

from . import workflow_sql
from .naming import quoted_prefix

NOW = "coalesce(%(now)s::timestamp, timezone('UTC', now()))"

# When the server (re)started, as a UTC timestamp. Unlogged tables such as oban_producers are
# emptied by crash recovery, and no node could heartbeat while the server was down.
SERVER_START = "(pg_postmaster_start_time() AT TIME ZONE 'UTC')"

FRAGMENTS = (
    "NOW",
    "SERVER_START",
    "JOB_COLUMNS",
    "ROW_TTL",
    "TAKE_NEXT",
    "PARTITION_KEY",
    "FRAGMENTS",
    "ACK_META",
    "ACK_WRITE",
)

# -- enqueue ----------------------------------------------------------------------------------

# The batch travels as one JSON array of [queue, worker, args, meta, tags, max_attempts,
# priority, scheduled_at or null, state] (one msgspec-encoded parameter instead of nine typed
# arrays). As in Oban.py, the state is the one asked for, except that an ``available`` job with a
# scheduled_at is inserted ``scheduled`` (the stager makes it available when it is due).
INSERT_JOBS = """
INSERT INTO {p}.oban_jobs
  (state, queue, worker, args, meta, tags, max_attempts, priority, scheduled_at)
SELECT
  (CASE WHEN coalesce(r.v->>8, 'available') = 'available'
     THEN CASE WHEN r.v->>7 IS NULL THEN 'available' ELSE 'scheduled' END
     ELSE r.v->>8 END)::{p}.oban_job_state,
  r.v->>0, r.v->>1, r.v->2, r.v->3,
  ARRAY(SELECT jsonb_array_elements_text(r.v->4)),
  (r.v->>5)::int, (r.v->>6)::int,
  coalesce((r.v->>7)::timestamp, timezone('UTC', now()))
FROM jsonb_array_elements(%(jobs)s::jsonb) WITH ORDINALITY AS r(v, ord)
ORDER BY r.ord
RETURNING id, state::text, inserted_at, scheduled_at
"""

NOTIFY_MANY = """
SELECT pg_notify(%(channel)s, payload) FROM unnest(%(payloads)s::text[]) AS payload
"""

NOTIFY = "SELECT pg_notify(%(channel)s, %(payload)s)"

UNIQUE_LOCK = "SELECT pg_advisory_xact_lock(%(key)s)"

# A duplicate is either a row with this key in meta.uniq_key (oban_pro inserters), or a row that
# matches the way Elixir's open-source engine looks for one, which writes no uniq_key: same
# worker and queue, args (and meta, without our uniq_key) equal by containment both ways, or
# containing only the listed keys' values (compat.md §2, "Unique jobs"). A NULL parameter leaves
# that field out. Both branches check the states and the period.
UNIQUE_FIND = """
SELECT id, state::text, inserted_at, scheduled_at FROM (
  SELECT id, state, inserted_at, scheduled_at FROM {p}.oban_jobs
  WHERE meta @> jsonb_build_object('uniq_key', %(uniq_key)s::text)
    AND state::text = ANY(%(states)s::text[])
  UNION ALL
  SELECT id, state, inserted_at, scheduled_at FROM {p}.oban_jobs
  WHERE state::text = ANY(%(states)s::text[])
    AND (%(worker)s::text IS NULL OR worker = %(worker)s::text)
    AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
    AND (%(args)s::jsonb IS NULL OR (args @> %(args)s::jsonb
         AND (NOT %(exact)s::bool OR args <@ %(args)s::jsonb)))
    AND (%(meta)s::jsonb IS NULL OR ((coalesce(meta, '{}'::jsonb) - 'uniq_key') @> %(meta)s::jsonb
         AND (NOT %(exact)s::bool
              OR (coalesce(meta, '{}'::jsonb) - 'uniq_key') <@ %(meta)s::jsonb)))
) AS j
WHERE %(period)s::float8 IS NULL
   OR inserted_at >= timezone('UTC', now()) - make_interval(secs => %(period)s::float8)
ORDER BY id
LIMIT 1
"""

# The tables a running node needs, of those that are missing (a schema made only by Elixir's
# migrations lacks oban_producers and oban_leaders).
MISSING_TABLES = """
SELECT name FROM unnest(ARRAY['oban_jobs', 'oban_producers', 'oban_leaders']) AS name
WHERE to_regclass(format('%%I.%%I', %(prefix)s::text, name)) IS NULL
"""

# -- producers and fetching -------------------------------------------------------------------

# Every fetch ends the same way: the rows chosen in ``next`` become this producer's attempt.
# The locked rows are looked up by id from an array, not joined to ``next``: when the LIMIT is
# not known at planning (a limited fetch's expression, or the plain fetch's generic plan, which
# PostgreSQL adopts for a prepared fetch when it looks no costlier) the planner guesses a tenth
# of the table for ``next`` and joined it by a hash over a sequential scan of oban_jobs (2.0 ms
# for one job beside 6,000 rows, growing with the table). An array of ids uses the primary key
# whatever the guess (tests/test_fetch_plan.py).
TAKE_NEXT = """UPDATE {p}.oban_jobs AS j
SET state = 'executing',
    attempt = j.attempt + 1,
    attempted_at = timezone('UTC', now()),
    attempted_by = ARRAY[%(node)s::text, %(uuid)s::text]
WHERE j.id = ANY(ARRAY(SELECT id FROM next)) AND j.attempt < j.max_attempts
RETURNING j.id, j.worker, j.args::text, coalesce(j.meta, '{}'::jsonb)::text, j.attempt,
  j.max_attempts, j.priority, j.tags, to_jsonb(j.errors)::text,
  extract(epoch FROM j.inserted_at)::float8, extract(epoch FROM j.scheduled_at)::float8,
  extract(epoch FROM j.attempted_at)::float8"""

# Limited fetches stamp attempted_at with the clock time their rate window used.
TAKE_NEXT_CLOCK = TAKE_NEXT.replace(
    "attempted_at = timezone('UTC', now())", "attempted_at = (SELECT t FROM clock)"
)

FETCH_JOBS = """
WITH next AS (
  SELECT id FROM {p}.oban_jobs
  WHERE state = 'available' AND queue = %(queue)s
  ORDER BY priority, scheduled_at, id
  LIMIT %(demand)s
  FOR UPDATE SKIP LOCKED
)
{take_next}
"""

# -- globally limited queues (oban_pro/limits.py: why the lock is a statement of its own) -----

LOCK_LIMITED_QUEUE = "SELECT pg_advisory_xact_lock(%(lock_class)s::int, hashtext(%(lock_name)s))"

# Rate windows are exact sliding logs: a row keeps the start times of the queue's (or
# partition's) most recent jobs within the period, at most `allowed` of them, and a fetch takes
# no more than allowed minus those. Any period-long window then holds at most `allowed` starts.
# Times come from clock_timestamp(), not now(): a transaction that waited for the queue's lock
# must not stamp its starts earlier than those of the holder it waited for.
RATE_NOW = "coalesce(%(now)s::timestamp, timezone('UTC', clock_timestamp()))"

RATE_LEFT = """CASE WHEN %(rate_allowed)s::int IS NULL THEN 2147483647
    ELSE %(rate_allowed)s::int - (SELECT count(*) FROM unnest(w.starts) AS t
      WHERE t > clock.t - make_interval(secs => %(rate_period)s::float8))::int END"""

# The log after `n` more starts at clock.t: the ones still within the period, oldest first.
RATE_LOG = """ARRAY(SELECT t FROM unnest(w.starts || array_fill(clock.t, ARRAY[n])) AS t
    WHERE t > clock.t - make_interval(secs => %(rate_period)s::float8) ORDER BY t)"""

# A queue with a global limit and/or a rate limit, not partitioned: take no more than what
# either leaves (global: minus the queue's executing jobs, whichever node or engine runs them;
# rate: what the sliding window leaves), then count what was taken into the window.
FETCH_LIMITED_JOBS = """
WITH clock AS (
  SELECT {rate_now} AS t
), w AS (
  SELECT coalesce((SELECT starts FROM {p}.oban_rate_limits
    WHERE queue = %(queue)s AND key = ''), '{}') AS starts
), next AS (
  SELECT id FROM {p}.oban_jobs
  WHERE state = 'available' AND queue = %(queue)s
  ORDER BY priority, scheduled_at, id
  LIMIT greatest(0, least(
    %(demand)s::int,
    coalesce(%(global_limit)s::int - (SELECT count(*) FROM {p}.oban_jobs
      WHERE state = 'executing' AND queue = %(queue)s)::int, 2147483647),
    (SELECT {rate_left} FROM w, clock)))
  FOR UPDATE SKIP LOCKED
), taken AS (
  {take_next_clock}
), counted AS (
  INSERT INTO {p}.oban_rate_limits AS r (queue, key, starts)
  SELECT %(queue)s, '', {rate_log}
  FROM w, clock, (SELECT count(*)::int AS n FROM taken) AS c
  WHERE %(rate_allowed)s::int IS NOT NULL
  ON CONFLICT (queue, key) DO UPDATE SET starts = excluded.starts
)
SELECT * FROM taken
"""

# A job's partition: a JSON array of its worker, its args and its meta (each only if chosen;
# args and meta restricted to the chosen keys when there are any).
PARTITION_KEY = """jsonb_build_array(
    CASE WHEN %(by_worker)s::bool THEN to_jsonb(j.worker) END,
    CASE WHEN %(by_args)s::bool THEN CASE WHEN cardinality(%(keys)s::text[]) = 0 THEN j.args
      ELSE (SELECT jsonb_object_agg(k, j.args -> k) FROM unnest(%(keys)s::text[]) AS k) END END,
    CASE WHEN %(by_meta)s::bool THEN CASE WHEN cardinality(%(keys)s::text[]) = 0
      THEN coalesce(j.meta, '{}'::jsonb) - 'uniq_key'
      ELSE (SELECT jsonb_object_agg(k, j.meta -> k) FROM unnest(%(keys)s::text[]) AS k) END END
  )::text"""

# The same per partition: each partition has its own global limit and its own rate window.
# Every partition's n-th job comes before any partition's (n+1)-th, so a tenant with most of
# the backlog cannot starve the others. This ranks the queue's whole available backlog on each
# fetch: the price of fairness, paid only by partitioned queues.
FETCH_PARTITIONED_JOBS = """
WITH clock AS (
  SELECT {rate_now} AS t
), running AS (
  SELECT {partition_key} AS key, count(*) AS n FROM {p}.oban_jobs AS j
  WHERE j.state = 'executing' AND j.queue = %(queue)s
  GROUP BY 1
), keyed AS (
  SELECT j.id, j.priority, j.scheduled_at, {partition_key} AS key FROM {p}.oban_jobs AS j
  WHERE j.state = 'available' AND j.queue = %(queue)s
), w AS (
  SELECT k.key, coalesce(r.starts, '{}') AS starts
  FROM (SELECT DISTINCT key FROM keyed) AS k
  LEFT JOIN {p}.oban_rate_limits AS r ON r.queue = %(queue)s AND r.key = k.key
), allowance AS (
  SELECT w.key, w.starts, least(
    coalesce(%(global_limit)s::int - coalesce(x.n, 0)::int, 2147483647), {rate_left}) AS n
  FROM w CROSS JOIN clock LEFT JOIN running AS x ON x.key = w.key
), ranked AS (
  SELECT k.*, row_number() OVER (PARTITION BY k.key ORDER BY k.priority, k.scheduled_at, k.id)
    AS rn
  FROM keyed AS k
), chosen AS (
  SELECT r.id, r.key FROM ranked AS r JOIN allowance AS a ON a.key = r.key
  WHERE r.rn <= a.n
  ORDER BY r.rn, r.priority, r.scheduled_at, r.id
  LIMIT %(demand)s
), next AS (
  SELECT j.id FROM {p}.oban_jobs AS j JOIN chosen AS c ON c.id = j.id
  WHERE j.state = 'available'
  FOR UPDATE OF j SKIP LOCKED
), taken AS (
  {take_next_clock}
), counted AS (
  INSERT INTO {p}.oban_rate_limits AS r (queue, key, starts)
  SELECT %(queue)s, w.key, {rate_log}
  FROM (SELECT c.key, count(*)::int AS n FROM taken AS t JOIN chosen AS c ON c.id = t.id
        GROUP BY c.key) AS per
  JOIN (SELECT key, starts FROM allowance) AS w ON w.key = per.key CROSS JOIN clock
  WHERE %(rate_allowed)s::int IS NOT NULL
  ON CONFLICT (queue, key) DO UPDATE SET starts = excluded.starts
)
SELECT * FROM taken
"""

# What a limited queue's limits leave, per partition ('' when not partitioned): its executing
# jobs (whichever node or engine runs them), the starts in its rate window, and the seconds until
# a full window lets the next job start. For check_queue, gossip, metrics and the rate wake-up.
LIMITED_QUEUE_STATUS = """
WITH clock AS (
  SELECT timezone('UTC', clock_timestamp()) AS t
), running AS (
  SELECT CASE WHEN %(partitioned)s::bool THEN {partition_key} ELSE '' END AS key,
    count(*)::int AS n
  FROM {p}.oban_jobs AS j WHERE j.state = 'executing' AND j.queue = %(queue)s
  GROUP BY 1
), windows AS (
  SELECT r.key,
    (SELECT count(*) FROM unnest(r.starts) AS t
      WHERE t > clock.t - make_interval(secs => %(rate_period)s::float8))::int AS n,
    CASE WHEN cardinality(r.starts) >= %(rate_allowed)s::int THEN extract(epoch FROM
      r.starts[cardinality(r.starts) - %(rate_allowed)s::int + 1]
      + make_interval(secs => %(rate_period)s::float8) - clock.t)::float8 END AS opens_in
  FROM {p}.oban_rate_limits AS r CROSS JOIN clock
  WHERE r.queue = %(queue)s AND %(rate_allowed)s::int IS NOT NULL
)
SELECT coalesce(x.key, w.key), coalesce(x.n, 0), coalesce(w.n, 0), w.opens_in
FROM running AS x FULL JOIN windows AS w ON w.key = x.key
"""

REGISTER_PRODUCER = """
INSERT INTO {p}.oban_producers (uuid, name, node, queue, meta, started_at, updated_at)
VALUES (%(uuid)s::uuid, %(name)s, %(node)s, %(queue)s, %(meta)s::jsonb,
        timezone('UTC', now()), timezone('UTC', now()))
ON CONFLICT (uuid) DO UPDATE SET meta = excluded.meta, updated_at = excluded.updated_at
"""

# One round trip per beat: refresh this node's producer rows, registering again any that
# vanished ("registered" rows), and list the jobs the node runs whose row no longer belongs to
# that attempt here ("lost" rows: rescued, cancelled, deleted), so it stops its local copy.
HEARTBEAT = """
WITH beat AS (
  INSERT INTO {p}.oban_producers AS p (uuid, name, node, queue, meta, started_at, updated_at)
  SELECT b.uuid, %(name)s, %(node)s, b.queue, b.meta,
    timezone('UTC', now()), timezone('UTC', now())
  FROM unnest(%(uuids)s::uuid[], %(queues)s::text[], %(metas)s::jsonb[]) AS b(uuid, queue, meta)
  ON CONFLICT (uuid) DO UPDATE SET updated_at = excluded.updated_at, meta = excluded.meta
  RETURNING p.uuid::text AS uuid, (p.xmax = 0) AS registered
)
SELECT 'registered', uuid, NULL::text, NULL::text FROM beat WHERE registered
UNION ALL
SELECT 'lost', r.id::text, coalesce(j.state::text, 'deleted'),
  CASE WHEN j.state = 'executing' THEN j.attempted_by[1] END
FROM unnest(%(job_ids)s::bigint[], %(job_attempts)s::int[], %(job_uuids)s::text[])
  AS r(id, attempt, uuid)
LEFT JOIN {p}.oban_jobs AS j ON j.id = r.id
WHERE j.id IS NULL OR j.state <> 'executing' OR j.attempt <> r.attempt
  OR j.attempted_by[2] IS DISTINCT FROM r.uuid
"""

DELETE_PRODUCERS = "DELETE FROM {p}.oban_producers WHERE uuid = ANY(%(uuids)s::uuid[])"

# -- acking -----------------------------------------------------------------------------------

# One statement per batch (UPDATE ... FROM unnest of typed arrays: measured cheaper for the
# database than decoding one JSON document, and the database is this loop's bottleneck). Each
# row is fenced by state, attempt and producer uuid, so an ack for an attempt that was rescued
# (and maybe re-run elsewhere) changes nothing. Kinds: completed, record, error, crash (an error
# that counts toward the poison guard), cancel, snooze, release (shutdown: back to available,
# attempt given back). ``ages``: seconds since each job ended (its ack may have lingered), so
# completed_at and the others, and the base of a backoff, are when the job ended. The arrays
# travel in binary (``%(x)b``), packed by oban_pro/binary_arrays.py (the text form escapes
# every element: 12.0 us per acked job, psycopg's binary list dumper 4.0, packed 1.2).
# Workflow steps waiting for a job that reaches a final state are released (or cancelled) in
# the same statement (ACK_JOBS: {workflow_release} is oban_pro/workflow_sql.py's ACK_RELEASE);
# ACK_PLAIN_JOBS is the same write without that part. ACK_WRITE is what both share, up to the
# ``acked`` CTE; {ack_set_meta} is where each puts its meta expression.
ACK_WRITE = """
WITH RECURSIVE a AS (
  SELECT * FROM unnest(
    %(ids)b::bigint[], %(attempts)b::int[], %(uuids)b::text[], %(kinds)b::text[],
    %(delays)b::float8[], %(errors)b::jsonb[], %(metas)b::jsonb[], %(ages)b::float8[]
  ) AS a(id, attempt, uuid, kind, delay, error, meta, age)
), t AS (
  SELECT j.id, a.kind, a.delay, a.error, a.meta,
    timezone('UTC', now()) AS now,
    timezone('UTC', now()) - make_interval(secs => a.age) AS ended,
    coalesce(j.meta, '{}'::jsonb) AS old_meta,
    coalesce((j.meta->>'crashes')::int, 0) + 1 AS crashes,
    CASE
      WHEN a.kind IN ('completed', 'record') THEN 'completed'
      WHEN a.kind = 'cancel' THEN 'cancelled'
      WHEN a.kind = 'snooze' THEN 'scheduled'
      WHEN a.kind = 'release' THEN 'available'
      WHEN a.kind = 'crash' AND coalesce((j.meta->>'crashes')::int, 0) + 1 >= %(max_crashes)s
        THEN 'discarded'
      WHEN j.attempt >= j.max_attempts THEN 'discarded'
      ELSE 'retryable'
    END AS new_state
  FROM a JOIN {p}.oban_jobs AS j ON j.id = a.id
  -- state as text: no index on state can drive this join. With stale statistics (a burst of
  -- inserts since the last ANALYZE) the generic plan of this prepared statement walked every
  -- executing row through the state index and re-read the arrays once per row: 400 ms for
  -- 30 acks beside 17,000 executing jobs, against 1.6 ms by the primary key.
  WHERE j.state::text = 'executing' AND j.attempt = a.attempt AND j.attempted_by[2] = a.uuid
  FOR UPDATE OF j
), acked AS (
UPDATE {p}.oban_jobs AS j SET
  state = t.new_state::{p}.oban_job_state,
  completed_at = CASE WHEN t.new_state = 'completed' THEN t.ended ELSE j.completed_at END,
  cancelled_at = CASE WHEN t.new_state = 'cancelled' THEN t.ended ELSE j.cancelled_at END,
  discarded_at = CASE WHEN t.new_state = 'discarded' THEN t.ended ELSE j.discarded_at END,
  scheduled_at = CASE
    WHEN t.new_state IN ('retryable', 'scheduled') THEN t.ended + make_interval(secs => t.delay)
    WHEN t.new_state = 'available' THEN t.now
    ELSE j.scheduled_at END,
  attempt = CASE WHEN t.kind IN ('snooze', 'release') THEN j.attempt - 1 ELSE j.attempt END,
  errors = CASE
    WHEN t.error IS NULL THEN j.errors
    WHEN t.kind = 'crash' AND t.new_state = 'discarded' AND j.attempt < j.max_attempts
      THEN j.errors || jsonb_set(t.error, '{error}', to_jsonb((t.error->>'error') ||
        ' -- discarded by the poison-job guard: this job has now killed its child process '
        || t.crashes || ' times (max_crashes)'))
    ELSE j.errors || t.error END,
  meta = {ack_set_meta}
FROM t
WHERE j.id = t.id
RETURNING j.id, j.state::text AS state, j.meta->>'name' AS name,
  CASE WHEN t.new_state IN ('completed', 'cancelled', 'discarded') THEN t.old_meta->'wf_next' END
    AS wf_next
)"""

# The final state is sealed, and the release's last CTE is referenced so that it runs.
ACK_JOBS = (
    ACK_WRITE.replace("{ack_set_meta}", "{ack_seal}")
    + """{workflow_release}
SELECT id, state FROM acked WHERE (SELECT n FROM wf_notified) IS NOT NULL
"""
)

# For a batch in which no job waits for another (no ``wf_next`` in the meta the jobs were
# fetched with): without the workflow release and the seal, whose empty CTEs still cost the
# database ~10 us per acked job (a fifth of the ack; no-op throughput +8% in an A/B run).
# ``wf_next`` is written only when a job is inserted or a finished job is retried, so a job's
# meta at fetch time says whether its ack needs them; the workflow repair catches the rest.
ACK_PLAIN_JOBS = (
    ACK_WRITE.replace("{ack_set_meta}", "{ack_meta}")
    + """
SELECT id, state FROM acked
"""
)

# For a batch in which every job simply completed (kind ``completed``: no error, meta, delay or
# crash count to write) and none waits for another: the same fenced write as ACK_PLAIN_JOBS
# for those rows, without the CASEs of the other kinds. PostgreSQL CPU per write measured in
# one run (2,000 alternated writes each): 508 vs 1,117 us for 2 jobs, 1,583 vs 1,917 us for 50.
ACK_COMPLETED_JOBS = """
UPDATE {p}.oban_jobs AS j
SET state = 'completed',
    completed_at = timezone('UTC', now()) - make_interval(secs => a.age)
FROM unnest(%(ids)b::bigint[], %(attempts)b::int[], %(uuids)b::text[], %(ages)b::float8[])
  AS a(id, attempt, uuid, age)
-- state as text, as in ACK_WRITE: the primary key drives the join.
WHERE j.id = a.id AND j.state::text = 'executing' AND j.attempt = a.attempt
  AND j.attempted_by[2] = a.uuid
RETURNING j.id, j.state::text AS state
"""

# The ack's meta expression (ACK_SEAL wraps it: a job that reaches a final state is sealed).
ACK_META = """CASE
    WHEN t.kind = 'snooze' THEN t.old_meta || coalesce(t.meta, '{}'::jsonb)
      || jsonb_build_object('snoozed', coalesce((t.old_meta->>'snoozed')::int, 0) + 1)
    WHEN t.kind = 'crash' THEN t.old_meta || jsonb_build_object('crashes', t.crashes)
    WHEN t.meta IS NOT NULL THEN t.old_meta || t.meta
    ELSE j.meta END"""

# -- maintenance ------------------------------------------------------------------------------

STAGE_JOBS = """
WITH staged AS (
  UPDATE {p}.oban_jobs SET state = 'available'
  WHERE id IN (
    SELECT id FROM {p}.oban_jobs
    WHERE state IN ('scheduled', 'retryable') AND scheduled_at <= {now}
    ORDER BY scheduled_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
  )
  RETURNING queue
), queues AS (SELECT queue, count(*) AS n FROM staged GROUP BY queue)
SELECT queue, n, pg_notify(%(channel)s, json_build_object('queue', queue)::text) FROM queues
"""

# The ttl a producer row asks to be judged by: oban_pro producers write their own
# heartbeat_ttl in meta; rows of other engines (Oban.py refreshes every 15 s and deletes rows
# silent for 60 s) get the larger of ours and %(foreign_ttl)s. Clamped so a hostile value cannot
# break the statement.
ROW_TTL = """(CASE WHEN jsonb_typeof(p.meta->'heartbeat_ttl') = 'number'
  THEN least(greatest((p.meta->>'heartbeat_ttl')::float8, 0.1), 1e7)
  ELSE greatest(%(ttl)s::float8, %(foreign_ttl)s::float8) END)"""

# Producers as the lifeline sees them: uuid, last heartbeat, ttl.
PRODUCER_BEATS = "SELECT p.uuid::text, p.updated_at, {row_ttl} FROM {p}.oban_producers AS p"

# Orphans (compat.md §4): an executing job is judged by liveness only when its producer uuid is
# known to heartbeat, from its row or from the lifeline's memory of rows it has seen (passed as
# known_*; a row may be gone: deleted by another engine's cleanup, or emptied with the unlogged
# table by crash recovery). It is an orphan when that producer has been silent for its ttl,
# counted from no earlier than the server's start plus the slowest reconnect of a live node
# (%(grace)s), and up to the freshest heartbeat in the table rather than the clock: when every
# process stood still (a stalled machine or VM), nobody heartbeat, the judge included, so the
# first lifeline to run after it must not take the common silence for death. Jobs of
# producers never seen heartbeating (Elixir's open-source engine, older
# Oban.py) are left to the time-only rescue_after fallback, whatever queue they are on.
RESCUE_JOBS = """
WITH fresh AS (
  SELECT least({now}, coalesce(max(updated_at), {now})) AS t FROM {p}.oban_producers
), known AS (
  SELECT k.uuid, max(k.updated_at) AS updated_at, max(k.ttl) AS ttl FROM (
    SELECT p.uuid::text, p.updated_at, {row_ttl} FROM {p}.oban_producers AS p
    UNION ALL
    SELECT * FROM unnest(%(known_uuids)s::text[], %(known_beats)s::timestamp[],
      %(known_ttls)s::float8[])
  ) AS k(uuid, updated_at, ttl)
  GROUP BY k.uuid
), orphans AS (
  SELECT j.id,
    CASE
      WHEN k.uuid IS NOT NULL THEN format(
        'rescued: node %%s (producer %%s) stopped heartbeating; last heartbeat at %%sZ, ttl %%s s',
        j.attempted_by[1], j.attempted_by[2], k.updated_at, k.ttl)
      ELSE format('rescued: executing since %%sZ, longer than rescue_after (%%s s), by a '
        || 'producer never seen heartbeating', j.attempted_at, %(rescue_after)s::float8)
    END AS reason
  FROM {p}.oban_jobs AS j
  LEFT JOIN known AS k ON k.uuid = j.attempted_by[2]
  CROSS JOIN fresh
  WHERE j.state = 'executing'
    AND CASE
      WHEN k.uuid IS NOT NULL THEN
        greatest(k.updated_at, {server_start} + make_interval(secs => %(grace)s))
          < fresh.t - make_interval(secs => k.ttl)
      ELSE j.attempted_at < {now} - make_interval(secs => %(rescue_after)s)
    END
  LIMIT %(limit)s
  FOR UPDATE OF j SKIP LOCKED
)
UPDATE {p}.oban_jobs AS j SET
  state = (CASE WHEN j.attempt >= j.max_attempts THEN 'discarded' ELSE 'available' END)
    ::{p}.oban_job_state,
  discarded_at = CASE WHEN j.attempt >= j.max_attempts THEN {now} ELSE j.discarded_at END,
  meta = coalesce(j.meta, '{}'::jsonb)
    || jsonb_build_object('rescued', coalesce((j.meta->>'rescued')::int, 0) + 1),
  errors = j.errors || jsonb_build_object(
    'attempt', j.attempt,
    'at', to_char({now}, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
    'error', o.reason)
FROM orphans AS o
WHERE j.id = o.id
RETURNING j.id, j.queue, j.state::text
"""

DELETE_DEAD_PRODUCERS = """
DELETE FROM {p}.oban_producers AS p
WHERE greatest(p.updated_at, {server_start} + make_interval(secs => %(grace)s))
    < (SELECT least({now}, coalesce(max(updated_at), {now})) FROM {p}.oban_producers)
      - make_interval(secs => {row_ttl})
  AND NOT EXISTS (
    SELECT 1 FROM {p}.oban_jobs AS j
    WHERE j.state = 'executing' AND j.attempted_by[2] = p.uuid::text)
RETURNING p.uuid::text, p.node
"""

PRUNE_JOBS = """
DELETE FROM {p}.oban_jobs WHERE id IN (
  SELECT id FROM {p}.oban_jobs
  WHERE (state = 'completed' AND completed_at < {now} - make_interval(secs => %(max_age)s))
     OR (state = 'cancelled' AND cancelled_at < {now} - make_interval(secs => %(max_age)s))
     OR (state = 'discarded' AND discarded_at < {now} - make_interval(secs => %(max_age)s))
  LIMIT %(limit)s
)
"""

# -- leadership -------------------------------------------------------------------------------

ELECT_LEADER = """
INSERT INTO {p}.oban_leaders AS l (name, node, elected_at, expires_at)
VALUES (%(name)s, %(node)s, {now}, {now} + make_interval(secs => %(ttl)s))
ON CONFLICT (name) DO UPDATE SET
  node = excluded.node,
  elected_at = CASE WHEN l.node = excluded.node THEN l.elected_at ELSE excluded.elected_at END,
  expires_at = excluded.expires_at
WHERE l.node = excluded.node OR l.expires_at < {now}
RETURNING node
"""

RESIGN_LEADER = "DELETE FROM {p}.oban_leaders WHERE name = %(name)s AND node = %(node)s"

CURRENT_LEADER = """
SELECT node FROM {p}.oban_leaders WHERE name = %(name)s AND expires_at >= {now}
"""

ALL_LEADERS = "SELECT name, node, expires_at FROM {p}.oban_leaders ORDER BY name"

ALL_PRODUCERS = """
SELECT node, queue, meta, extract(epoch FROM timezone('UTC', now()) - updated_at)::float8
FROM {p}.oban_producers ORDER BY node, queue
"""

# -- queue gauges (leader only): counts of waiting jobs per queue and state --------------------

QUEUE_COUNTS = """
SELECT queue, state::text, count(*) FROM {p}.oban_jobs
WHERE state IN ('available', 'scheduled', 'retryable', 'executing')
GROUP BY queue, state
"""

# -- job operations (people and the CLI) ------------------------------------------------------

JOB_COLUMNS = """id, state::text, queue, worker, args, to_jsonb(errors) AS errors, attempt,
  max_attempts, inserted_at, scheduled_at, attempted_at, completed_at, attempted_by, discarded_at,
  priority, tags, meta, cancelled_at"""

GET_JOB = "SELECT {job_columns} FROM {p}.oban_jobs WHERE id = %(id)s"

# Oban.py's update_job: lock the rows (the caller computes the changes from what it read).
LOCK_JOBS = """
SELECT {job_columns} FROM {p}.oban_jobs WHERE id = ANY(%(ids)s::bigint[]) ORDER BY id FOR UPDATE
"""

# Writes the updatable fields of each job (one JSON array of [id, args, meta, tags, max_attempts,
# priority, queue, worker, scheduled_at]); as in Oban.py, an available job moved to the future
# becomes scheduled and a scheduled one moved to the past (or now) becomes available. The clock,
# not the transaction's start: the rows were locked before the new times were computed.
UPDATE_JOBS = """
WITH u AS (
  SELECT (r.v->>0)::bigint AS uid, r.v->1 AS uargs, r.v->2 AS umeta,
    ARRAY(SELECT jsonb_array_elements_text(r.v->3)) AS utags, (r.v->>4)::int AS umax_attempts,
    (r.v->>5)::int AS upriority, r.v->>6 AS uqueue, r.v->>7 AS uworker,
    (r.v->>8)::timestamp AS uscheduled_at
  FROM jsonb_array_elements(%(jobs)s::jsonb) AS r(v)
)
UPDATE {p}.oban_jobs AS j SET
  args = u.uargs, meta = u.umeta, tags = u.utags, max_attempts = u.umax_attempts,
  priority = u.upriority, queue = u.uqueue, worker = u.uworker,
  scheduled_at = coalesce(u.uscheduled_at, j.scheduled_at),
  state = (CASE
    WHEN j.state = 'available' AND u.uscheduled_at > timezone('UTC', clock_timestamp())
      THEN 'scheduled'
    WHEN j.state = 'scheduled' AND u.uscheduled_at <= timezone('UTC', clock_timestamp())
      THEN 'available'
    ELSE j.state::text END)::{p}.oban_job_state
FROM u WHERE j.id = u.uid
RETURNING j.id
"""

LIST_JOBS = """
SELECT {job_columns} FROM {p}.oban_jobs
WHERE (%(state)s::text IS NULL OR state::text = %(state)s)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
ORDER BY id DESC
LIMIT %(limit)s
"""

ENQUEUED_JOBS = """
SELECT {job_columns} FROM {p}.oban_jobs
WHERE state IN ('available', 'scheduled')
  AND (%(worker)s::text IS NULL OR worker = %(worker)s)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(args)s::jsonb IS NULL OR args @> %(args)s::jsonb)
ORDER BY id
"""

# -- testing helpers (oban_pro.testing, as Oban.py's) ----------------------------------------

# Oban.py's all_enqueued: every job waiting to run, newest first (the helpers filter in Python,
# with Oban.py's matching rules).
WAITING_JOBS = """
SELECT {job_columns} FROM {p}.oban_jobs
WHERE state IN ('available', 'scheduled', 'suspended')
ORDER BY id DESC
"""

# drain_queue(with_scheduled=True): the queue's scheduled and retryable jobs due by %(now)s
# (far in the future) become available; other queues are left alone.
STAGE_QUEUE = """
UPDATE {p}.oban_jobs SET state = 'available'
WHERE id IN (
  SELECT id FROM {p}.oban_jobs
  WHERE state IN ('scheduled', 'retryable') AND queue = %(queue)s AND scheduled_at <= {now}
  ORDER BY scheduled_at, id
  FOR UPDATE SKIP LOCKED
)
"""

# reset_oban: empty the tables Oban.py's reset empties, ids starting again from 1.
RESET_TABLES = """
TRUNCATE TABLE {p}.oban_jobs, {p}.oban_leaders, {p}.oban_producers RESTART IDENTITY CASCADE
"""

RETRY_JOBS = """
UPDATE {p}.oban_jobs SET
  state = 'available', scheduled_at = timezone('UTC', now()),
  max_attempts = greatest(max_attempts, attempt + 1),
  completed_at = NULL, cancelled_at = NULL, discarded_at = NULL
WHERE id = ANY(%(ids)s::bigint[]) AND state NOT IN ('available', 'executing')
RETURNING id
"""

# Executing jobs are cancelled in the row at once (so the running node's ack is fenced out) and
# the caller sends a pkill signal so the node stops the child running it.
CANCEL_JOBS = """
WITH targets AS (
  SELECT id, state AS old_state FROM {p}.oban_jobs
  WHERE id = ANY(%(ids)s::bigint[]) AND state NOT IN ('completed', 'discarded', 'cancelled')
  FOR UPDATE
)
UPDATE {p}.oban_jobs AS j SET state = 'cancelled', cancelled_at = timezone('UTC', now())
FROM targets AS t WHERE j.id = t.id
RETURNING j.id, t.old_state::text
"""

COUNT_FINISHED = """
SELECT count(*) FROM {p}.oban_jobs
WHERE id = ANY(%(ids)s::bigint[]) AND state IN ('completed', 'discarded', 'cancelled')
"""

JOB_OUTCOMES = "SELECT state::text, meta FROM {p}.oban_jobs WHERE id = ANY(%(ids)s::bigint[])"

DELETE_JOBS = """
DELETE FROM {p}.oban_jobs WHERE id = ANY(%(ids)s::bigint[]) AND state <> 'executing'
RETURNING id
"""


class Queries:
    """All statements above, ready to run for one validated, quoted prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        tokens = {
            # Fragments that hold tokens themselves come first.
            "{workflow_release}": workflow_sql.ACK_RELEASE,
            "{ack_seal}": workflow_sql.ACK_SEAL.replace("{ack_meta}", ACK_META),
            "{ack_meta}": ACK_META,
            "{insert_channel}": workflow_sql.insert_channel_literal(prefix),
            "{take_next_clock}": TAKE_NEXT_CLOCK,
            "{take_next}": TAKE_NEXT,
            "{partition_key}": PARTITION_KEY,
            "{rate_now}": RATE_NOW,
            "{rate_left}": RATE_LEFT,
            "{rate_log}": RATE_LOG,
            "{p}": quoted_prefix(prefix),
            "{now}": NOW,
            "{server_start}": SERVER_START,
            "{job_columns}": JOB_COLUMNS,
            "{row_ttl}": ROW_TTL,
        }
        for name, text in globals().items():
            if name.isupper() and isinstance(text, str) and name not in FRAGMENTS:
                for token, value in tokens.items():
                    text = text.replace(token, value)
                setattr(self, name.lower(), text)

    # Declared for type checkers; set in __init__.
    insert_jobs: str
    notify_many: str
    notify: str
    unique_lock: str
    unique_find: str
    missing_tables: str
    fetch_jobs: str
    lock_limited_queue: str
    fetch_limited_jobs: str
    fetch_partitioned_jobs: str
    limited_queue_status: str
    register_producer: str
    heartbeat: str
    producer_beats: str
    delete_producers: str
    ack_jobs: str
    ack_plain_jobs: str
    ack_completed_jobs: str
    stage_jobs: str
    rescue_jobs: str
    delete_dead_producers: str
    prune_jobs: str
    elect_leader: str
    resign_leader: str
    current_leader: str
    queue_counts: str
    get_job: str
    lock_jobs: str
    update_jobs: str
    list_jobs: str
    retry_jobs: str
    cancel_jobs: str
    delete_jobs: str
    count_finished: str
    enqueued_jobs: str
    waiting_jobs: str
    stage_queue: str
    reset_tables: str
    all_leaders: str
    all_producers: str
    job_outcomes: str
