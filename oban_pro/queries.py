"""Every SQL statement the engine runs, by name, in one place (the "driver seam").

Statements are written with tokens: ``{p}`` for the quoted prefix, ``{now}`` for the current UTC
time (or the ``now`` parameter), ``{server_start}`` and ``{job_columns}``. :class:`Queries`
substitutes them once for a validated prefix, so runtime code never builds SQL. Time-sensitive
statements take an optional ``now`` parameter (a naive UTC timestamp) so tests can move time
instead of sleeping.
"""

from __future__ import annotations

from .naming import quoted_prefix

NOW = "coalesce(%(now)s::timestamp, timezone('UTC', now()))"

# When the server (re)started, as a UTC timestamp. Unlogged tables such as oban_producers are
# emptied by crash recovery, and no node could heartbeat while the server was down.
SERVER_START = "(pg_postmaster_start_time() AT TIME ZONE 'UTC')"

FRAGMENTS = ("NOW", "SERVER_START", "JOB_COLUMNS", "FRAGMENTS")

# -- enqueue ----------------------------------------------------------------------------------

# The batch travels as one JSON array of [queue, worker, args, meta, tags, max_attempts,
# priority, scheduled_at or null] (one msgspec-encoded parameter instead of eight typed arrays).
INSERT_JOBS = """
INSERT INTO {p}.oban_jobs
  (state, queue, worker, args, meta, tags, max_attempts, priority, scheduled_at)
SELECT
  (CASE WHEN r.v->>7 IS NULL THEN 'available' ELSE 'scheduled' END)::{p}.oban_job_state,
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

UNIQUE_FIND = """
SELECT id, state::text, inserted_at, scheduled_at FROM {p}.oban_jobs
WHERE meta @> jsonb_build_object('uniq_key', %(uniq_key)s::text)
  AND state::text = ANY(%(states)s::text[])
  AND (%(period)s::float8 IS NULL
       OR inserted_at >= timezone('UTC', now()) - make_interval(secs => %(period)s::float8))
ORDER BY id
LIMIT 1
"""

# -- producers and fetching -------------------------------------------------------------------

FETCH_JOBS = """
WITH next AS (
  SELECT id FROM {p}.oban_jobs
  WHERE state = 'available' AND queue = %(queue)s
  ORDER BY priority, scheduled_at, id
  LIMIT %(demand)s
  FOR UPDATE SKIP LOCKED
)
UPDATE {p}.oban_jobs AS j
SET state = 'executing',
    attempt = j.attempt + 1,
    attempted_at = timezone('UTC', now()),
    attempted_by = ARRAY[%(node)s::text, %(uuid)s::text]
FROM next
WHERE j.id = next.id AND j.attempt < j.max_attempts
RETURNING j.id, j.worker, j.args::text, coalesce(j.meta, '{}'::jsonb)::text, j.attempt,
  j.max_attempts, j.priority, j.tags, to_jsonb(j.errors)::text,
  extract(epoch FROM j.inserted_at)::float8, extract(epoch FROM j.scheduled_at)::float8,
  extract(epoch FROM j.attempted_at)::float8
"""

REGISTER_PRODUCER = """
INSERT INTO {p}.oban_producers (uuid, name, node, queue, meta, started_at, updated_at)
VALUES (%(uuid)s::uuid, %(name)s, %(node)s, %(queue)s, %(meta)s::jsonb,
        timezone('UTC', now()), timezone('UTC', now()))
ON CONFLICT (uuid) DO UPDATE SET meta = excluded.meta, updated_at = excluded.updated_at
"""

HEARTBEAT_PRODUCERS = """
UPDATE {p}.oban_producers AS p
SET updated_at = timezone('UTC', now()), meta = m.meta
FROM unnest(%(uuids)s::uuid[], %(metas)s::jsonb[]) AS m(uuid, meta)
WHERE p.uuid = m.uuid
RETURNING p.uuid::text
"""

DELETE_PRODUCERS = "DELETE FROM {p}.oban_producers WHERE uuid = ANY(%(uuids)s::uuid[])"

# -- acking -----------------------------------------------------------------------------------

# One statement per batch (UPDATE ... FROM unnest of typed arrays: measured cheaper for the
# database than decoding one JSON document, and the database is this loop's bottleneck). Each
# row is fenced by state, attempt and producer uuid, so an ack for an attempt that was rescued
# (and maybe re-run elsewhere) changes nothing. Kinds: completed, record, error, crash (an error
# that counts toward the poison guard), cancel, snooze, release (shutdown: back to available,
# attempt given back). The arrays travel in binary (``%(x)b``): half the client CPU of the text
# form, whose array dumper escapes every element (measured 6.3 vs 12.0 us per acked job).
ACK_JOBS = """
WITH a AS (
  SELECT * FROM unnest(
    %(ids)b::bigint[], %(attempts)b::int[], %(uuids)b::text[], %(kinds)b::text[],
    %(delays)b::float8[], %(errors)b::jsonb[], %(metas)b::jsonb[]
  ) AS a(id, attempt, uuid, kind, delay, error, meta)
), t AS (
  SELECT j.id, a.kind, a.delay, a.error, a.meta,
    timezone('UTC', now()) AS now,
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
  WHERE j.state = 'executing' AND j.attempt = a.attempt AND j.attempted_by[2] = a.uuid
  FOR UPDATE OF j
)
UPDATE {p}.oban_jobs AS j SET
  state = t.new_state::{p}.oban_job_state,
  completed_at = CASE WHEN t.new_state = 'completed' THEN t.now ELSE j.completed_at END,
  cancelled_at = CASE WHEN t.new_state = 'cancelled' THEN t.now ELSE j.cancelled_at END,
  discarded_at = CASE WHEN t.new_state = 'discarded' THEN t.now ELSE j.discarded_at END,
  scheduled_at = CASE
    WHEN t.new_state IN ('retryable', 'scheduled') THEN t.now + make_interval(secs => t.delay)
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
  meta = CASE
    WHEN t.kind = 'snooze' THEN t.old_meta || coalesce(t.meta, '{}'::jsonb)
      || jsonb_build_object('snoozed', coalesce((t.old_meta->>'snoozed')::int, 0) + 1)
    WHEN t.kind = 'crash' THEN t.old_meta || jsonb_build_object('crashes', t.crashes)
    WHEN t.meta IS NOT NULL THEN t.old_meta || t.meta
    ELSE j.meta END
FROM t
WHERE j.id = t.id
RETURNING j.id, j.state::text
"""

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

# Orphans: executing jobs whose producer is known to heartbeat but has stopped (its row is
# stale, or missing while the queue is served by heartbeating producers), plus the time-only
# fallback for jobs of engines that never heartbeat (compat.md §4 hazard).
RESCUE_JOBS = """
WITH orphans AS (
  SELECT j.id,
    CASE
      WHEN p.uuid IS NOT NULL THEN format(
        'rescued: node %%s (producer %%s) stopped heartbeating; last heartbeat at %%sZ',
        j.attempted_by[1], j.attempted_by[2], p.updated_at)
      WHEN EXISTS (SELECT 1 FROM {p}.oban_producers AS q WHERE q.queue = j.queue) THEN format(
        'rescued: node %%s (producer %%s) is gone (no producer row)',
        j.attempted_by[1], j.attempted_by[2])
      ELSE format('rescued: executing since %%sZ, longer than rescue_after (%%s s)',
        j.attempted_at, %(rescue_after)s::float8)
    END AS reason
  FROM {p}.oban_jobs AS j
  LEFT JOIN {p}.oban_producers AS p ON p.uuid::text = j.attempted_by[2]
  WHERE j.state = 'executing'
    AND (
      (p.uuid IS NOT NULL
        AND greatest(p.updated_at, {server_start}) < {now} - make_interval(secs => %(ttl)s))
      OR (p.uuid IS NULL
        AND {server_start} < {now} - make_interval(secs => %(ttl)s)
        AND EXISTS (SELECT 1 FROM {p}.oban_producers AS q WHERE q.queue = j.queue))
      OR (p.uuid IS NULL
          AND j.attempted_at < {now} - make_interval(secs => %(rescue_after)s))
    )
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
WHERE greatest(p.updated_at, {server_start}) < {now} - make_interval(secs => %(ttl)s)
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
            "{p}": quoted_prefix(prefix),
            "{now}": NOW,
            "{server_start}": SERVER_START,
            "{job_columns}": JOB_COLUMNS,
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
    fetch_jobs: str
    register_producer: str
    heartbeat_producers: str
    delete_producers: str
    ack_jobs: str
    stage_jobs: str
    rescue_jobs: str
    delete_dead_producers: str
    prune_jobs: str
    elect_leader: str
    resign_leader: str
    current_leader: str
    queue_counts: str
    get_job: str
    list_jobs: str
    retry_jobs: str
    cancel_jobs: str
    delete_jobs: str
    count_finished: str
    enqueued_jobs: str
    all_leaders: str
    all_producers: str
    job_outcomes: str
