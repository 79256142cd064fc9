"""The SQL of workflows (see :mod:`oban_pro.workflow` for the meta keys it reads and writes).

How a step is released: every job carries ``wf_next``, the ids of the jobs waiting for it, and a
waiting job carries ``wf_wait``, how many jobs it still waits for. When a job reaches a final
state, the statement that put it there *seals* it (``wf_next`` moves to ``wf_sent``, so no job
is ever counted twice, even if it is retried and completes again) and runs :data:`RELEASE`
over its ``wf_next``: each waiting job loses one from ``wf_wait`` per upstream job that is done
(completed, or cancelled/discarded/deleted with the matching ``ignore_*``), becomes
``available`` at zero, or is cancelled when an upstream job failed in a way it does not ignore.
A cancelled job's own ``wf_next`` is followed in the same statement (a recursive CTE), so a
cancellation cascades down the graph at once.

Why counters on the waiting job's row: two nodes acking its last two dependencies at the same
time both update that row; the second waits for the first's row lock and PostgreSQL re-reads
the row before applying its decrement (READ COMMITTED), so neither misses the other. A check
such as "no dependency left incomplete" would be evaluated on each statement's snapshot, and
both could see the other's dependency still running and leave the job suspended forever.

Cost: work proportional to the edges of the jobs that just finished, by primary key; a fan-in
of N dependencies costs one row update of the waiting job per ack batch, never a scan of its N
dependencies. Waiting jobs are looked up by id only (``state::text`` keeps the planner off the
state indexes: after a large release they hold thousands of dead ``suspended`` entries, and
scanning them made the next acks 10x slower).

Statements take the tokens of :mod:`oban_pro.queries` (``{p}``) plus ``{release}`` (the
fragment below), ``{ignored:<state>:<meta>}`` is spelled out by :func:`_ignored`.
"""

from __future__ import annotations

from .naming import channel, quoted_prefix

FINAL = "('completed', 'cancelled', 'discarded')"

NOW = "timezone('UTC', now())"

ERROR_AT = """to_char(timezone('UTC', now()), 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""


def _ignored(state: str, meta: str) -> str:
    """SQL: whether a waiting job whose meta is ``meta`` counts an upstream ``state`` as done."""
    return f"""(CASE {state}
      WHEN 'completed' THEN true
      WHEN 'cancelled' THEN coalesce({meta}->>'ignore_cancelled', 'false') = 'true'
      WHEN 'discarded' THEN coalesce({meta}->>'ignore_discarded', 'false') = 'true'
      WHEN 'deleted' THEN coalesce({meta}->>'ignore_deleted', 'false') = 'true'
      ELSE false END)"""


def _by_id(job_id: str, columns: str, *, suspended: bool = True) -> str:
    """SQL: the ``columns`` of job ``job_id`` (only if it is suspended, by default), read by
    primary key. The LIMIT keeps the subquery a lookup per row: flattened into a join, the
    planner hashed the other side and scanned every row of the table on each statement."""
    where = " AND state::text = 'suspended'" if suspended else ""
    return f"""(SELECT {columns} FROM {{p}}.oban_jobs
    WHERE id = {job_id}{where} LIMIT 1)"""


# meta with wf_next moved to wf_sent (the job has told, or is telling, its waiting jobs).
def _sealed(meta: str) -> str:
    return f"""(CASE WHEN {meta} ? 'wf_next'
      THEN ({meta} - 'wf_next') || jsonb_build_object('wf_sent', {meta}->'wf_next')
      ELSE {meta} END)"""


# A step the cascade cancels, read for its own waiting jobs (still suspended in the statement's
# snapshot, so not filtered on state).
_CANCELLED_STEP = _by_id(
    "h.dep_id", "meta->>'name' AS name, meta->'wf_next' AS next", suspended=False
)

# The release chain. Input CTEs: roots(dep_id, up_id, up_state, up_name, n): "job dep_id's
# upstream up_id (named up_name) is now up_state, worth n of its wf_wait"; wf_exclude(id): jobs
# this statement updates itself (a row must not be updated twice in one statement).
# Output CTEs: wf_moved(id, queue, state) and wf_notified(n), which the statement must
# reference (a CTE that is only a SELECT runs only when referenced).
RELEASE = f"""
wf_hit AS (
  SELECT r.dep_id, r.up_id, r.up_state, r.up_name, r.n,
    NOT {_ignored("r.up_state", "d.meta")} AS fail
  FROM roots AS r JOIN {{p}}.oban_jobs AS d ON d.id = r.dep_id
  -- The ids as an array too, here and in wf_moved: joined to a CTE alone (the planner cannot
  -- know how few rows it holds) it hashed the CTE and scanned the whole table, on every ack.
  WHERE d.id = ANY (ARRAY(SELECT dep_id FROM roots)) AND d.state::text = 'suspended'
  UNION
  SELECT e.id, h.dep_id, 'cancelled'::text, c.name, 1, NOT {_ignored("'cancelled'", "e.meta")}
  FROM wf_hit AS h
  CROSS JOIN LATERAL {_CANCELLED_STEP} AS c
  CROSS JOIN LATERAL jsonb_array_elements_text(c.next) AS nx(value)
  CROSS JOIN LATERAL {_by_id("nx.value::bigint", "id, meta")} AS e
  WHERE h.fail
), wf_verdict AS (
  SELECT h.dep_id, bool_or(h.fail) AS failed,
    coalesce(sum(h.n) FILTER (WHERE NOT h.fail), 0)::int AS done,
    (array_agg(format('cancelled: upstream step %%s (job %%s) was %%s', coalesce(h.up_name, '?'),
       coalesce(h.up_id::text, '?'), h.up_state) ORDER BY h.up_id) FILTER (WHERE h.fail))[1]
      AS reason
  FROM wf_hit AS h GROUP BY h.dep_id
), wf_moved AS (
  UPDATE {{p}}.oban_jobs AS d SET
    state = (CASE
      WHEN v.failed THEN 'cancelled'
      WHEN coalesce((d.meta->>'wf_wait')::int, 0) - v.done > 0 THEN 'suspended'
      WHEN d.scheduled_at > {NOW} THEN 'scheduled'
      ELSE 'available' END)::{{p}}.oban_job_state,
    cancelled_at = CASE WHEN v.failed THEN {NOW} ELSE d.cancelled_at END,
    errors = CASE WHEN v.failed THEN d.errors || jsonb_build_object(
      'attempt', d.attempt, 'at', {ERROR_AT}, 'error', v.reason) ELSE d.errors END,
    meta = CASE WHEN v.failed THEN {_sealed("d.meta")}
      ELSE jsonb_set(d.meta, '{{wf_wait}}',
        to_jsonb(greatest(coalesce((d.meta->>'wf_wait')::int, 0) - v.done, 0))) END
  FROM wf_verdict AS v
  WHERE d.id = ANY (ARRAY(SELECT dep_id FROM wf_verdict))
    AND d.id = v.dep_id AND d.state::text = 'suspended'
    AND NOT EXISTS (SELECT 1 FROM wf_exclude AS x WHERE x.id = d.id)
  RETURNING d.id, d.queue, d.state::text AS state
), wf_notified AS (
  SELECT count(pg_notify({{insert_channel}}, json_build_object('queue', q.queue)::text))::int AS n
  FROM (SELECT DISTINCT queue FROM wf_moved WHERE state = 'available') AS q
)"""

# What ACK_JOBS (oban_pro/queries.py) adds after its ``acked`` CTE: the acked jobs that
# reached a final state with waiting jobs are the roots.
ACK_RELEASE = f""", roots AS (
  SELECT nx.value::bigint AS dep_id, k.id AS up_id, k.state AS up_state, k.name AS up_name,
    1 AS n
  FROM acked AS k CROSS JOIN LATERAL jsonb_array_elements_text(k.wf_next) AS nx(value)
  WHERE k.wf_next IS NOT NULL
), wf_exclude AS (
  SELECT NULL::bigint AS id WHERE false
), {RELEASE}"""

# The ack's meta expression, sealed when the job reaches a final state.
ACK_SEAL = f"""(SELECT CASE WHEN t.new_state IN {FINAL} THEN {_sealed("s.m")} ELSE s.m END
    FROM (SELECT {{ack_meta}} AS m) AS s)"""

# -- insert -----------------------------------------------------------------------------------

# As INSERT_JOBS (queries.py), plus element 9 of each row: the 1-based positions in the batch
# of the jobs waiting for it. Ids are drawn from the table's sequence first (the MATERIALIZED
# CTE calls nextval once per row), so each row can carry its waiting jobs' ids in wf_next.
# OVERRIDING SYSTEM VALUE: Oban.py's table has an identity column; it is a no-op on bigserial.
INSERT_WORKFLOW_JOBS = """
WITH r AS MATERIALIZED (
  SELECT r.v, r.ord FROM jsonb_array_elements(%(jobs)s::jsonb) WITH ORDINALITY AS r(v, ord)
), ids AS MATERIALIZED (
  SELECT r.ord, nextval(pg_get_serial_sequence(%(table)s, 'id')) AS id FROM r
), nexts AS (
  SELECT e.src, jsonb_agg(i.id ORDER BY i.id) AS ids
  FROM (SELECT r.ord AS src, n.value::bigint AS dst
        FROM r CROSS JOIN LATERAL jsonb_array_elements_text(r.v->9) AS n(value)) AS e
  JOIN ids AS i ON i.ord = e.dst
  GROUP BY e.src
), ins AS (
  INSERT INTO {p}.oban_jobs
    (id, state, queue, worker, args, meta, tags, max_attempts, priority, scheduled_at)
  OVERRIDING SYSTEM VALUE
  SELECT i.id,
    (CASE WHEN coalesce(r.v->>8, 'available') = 'available'
       THEN CASE WHEN r.v->>7 IS NULL THEN 'available' ELSE 'scheduled' END
       ELSE r.v->>8 END)::{p}.oban_job_state,
    r.v->>0, r.v->>1, r.v->2,
    CASE WHEN x.ids IS NULL THEN r.v->3 ELSE (r.v->3) || jsonb_build_object('wf_next', x.ids) END,
    ARRAY(SELECT jsonb_array_elements_text(r.v->4)),
    (r.v->>5)::int, (r.v->>6)::int,
    coalesce((r.v->>7)::timestamp, timezone('UTC', now()))
  FROM r JOIN ids AS i ON i.ord = r.ord LEFT JOIN nexts AS x ON x.src = r.ord
  RETURNING id, state::text, inserted_at, scheduled_at
)
SELECT ins.* FROM ins JOIN ids ON ids.id = ins.id ORDER BY ids.ord
"""

# -- a workflow's jobs ------------------------------------------------------------------------

# The workflow and its sub-workflows (any depth), by meta (oban_jobs_meta_index serves @>).
FAMILY = """family_ids AS (
  SELECT %(workflow_id)s::text AS wid
  UNION
  SELECT j.meta->>'workflow_id' FROM family_ids AS f
  JOIN {p}.oban_jobs AS j ON j.meta @> jsonb_build_object('sup_workflow_id', f.wid)
), family AS (
  SELECT j.* FROM family_ids AS f
  JOIN {p}.oban_jobs AS j ON j.meta @> jsonb_build_object('workflow_id', f.wid)
)"""

WORKFLOW_JOBS = """
WITH RECURSIVE {family}
SELECT {job_columns} FROM family ORDER BY id
"""

WORKFLOW_STATUS = """
WITH RECURSIVE {family}
SELECT state::text, count(*)::int, min(attempted_at), max(coalesce(completed_at, cancelled_at,
    discarded_at)), min(inserted_at),
  (array_agg(meta->>'workflow_name') FILTER (WHERE meta->>'workflow_id' = %(workflow_id)s))[1]
FROM family GROUP BY state
"""

# Workflows by current state, as workflow_status decides it (any job unfinished: executing;
# else discarded, cancelled, completed in that order). A sub-workflow has an id of its own and
# counts as one. For the leader's gauge: jobs carrying a workflow_id, through the meta index.
WORKFLOW_COUNTS = """
SELECT state, count(*)::int FROM (
  SELECT CASE
      WHEN bool_or(state NOT IN ('completed', 'cancelled', 'discarded')) THEN 'executing'
      WHEN bool_or(state = 'discarded') THEN 'discarded'
      WHEN bool_or(state = 'cancelled') THEN 'cancelled'
      ELSE 'completed' END AS state
  FROM {p}.oban_jobs WHERE meta ? 'workflow_id'
  GROUP BY meta->>'workflow_id'
) AS w GROUP BY state
"""

# Cancel every unfinished job of the workflow (sub-workflows included), seal them, and release
# or cancel what waits for them outside it (a parent workflow's steps). Executing jobs are
# cancelled in the row at once, so their acks are fenced out; the caller sends pkill.
CANCEL_WORKFLOW = """
WITH RECURSIVE {family}, targets AS (
  SELECT j.id, j.state AS old_state FROM {p}.oban_jobs AS j JOIN family AS f ON f.id = j.id
  WHERE j.state NOT IN ('completed', 'discarded', 'cancelled')
  FOR UPDATE OF j
), cancelled AS (
  UPDATE {p}.oban_jobs AS j SET state = 'cancelled', cancelled_at = {now_utc},
    errors = j.errors || jsonb_build_object('attempt', j.attempt, 'at', {error_at},
      'error', 'cancelled: workflow ' || %(workflow_id)s::text || ' was cancelled'),
    meta = {sealed_j}
  FROM targets AS t WHERE j.id = t.id
  RETURNING j.id, t.old_state::text AS old_state, j.meta->'wf_sent' AS wf_next,
    j.meta->>'name' AS name
), roots AS (
  SELECT nx.value::bigint AS dep_id, c.id AS up_id, 'cancelled'::text AS up_state,
    c.name AS up_name, 1 AS n
  FROM cancelled AS c CROSS JOIN LATERAL jsonb_array_elements_text(c.wf_next) AS nx(value)
  WHERE c.wf_next IS NOT NULL
), wf_exclude AS (
  SELECT id FROM family
), {release}
SELECT id, old_state FROM cancelled WHERE (SELECT n FROM wf_notified) IS NOT NULL
"""

# Retry the workflow's cancelled and discarded jobs: each comes back ``available`` when every
# job it waits for is completed (or is retried too... then it waits for it), else ``suspended``
# with wf_wait recounted; retried jobs tell their waiting jobs again (wf_sent back to wf_next).
# Edges come from every job of the family (``wf_next`` or ``wf_sent``).
RETRY_WORKFLOW = """
WITH RECURSIVE {family}, targets AS (
  SELECT j.id FROM {p}.oban_jobs AS j JOIN family AS f ON f.id = j.id
  WHERE j.state IN ('cancelled', 'discarded')
  FOR UPDATE OF j
), edges AS (
  SELECT f.id AS up_id, nx.value::bigint AS dep_id,
    (f.state <> 'completed' OR f.id IN (SELECT id FROM targets)) AS pending
  FROM family AS f
  CROSS JOIN LATERAL jsonb_array_elements_text(coalesce(f.meta->'wf_next', f.meta->'wf_sent'))
    AS nx(value)
), waits AS (
  SELECT t.id, count(e.up_id) FILTER (WHERE e.pending)::int AS wait
  FROM targets AS t LEFT JOIN edges AS e ON e.dep_id = t.id
  GROUP BY t.id
), retried AS (
  UPDATE {p}.oban_jobs AS j SET
    state = (CASE WHEN w.wait > 0 THEN 'suspended' ELSE 'available' END)::{p}.oban_job_state,
    scheduled_at = {now_utc},
    max_attempts = greatest(j.max_attempts, j.attempt + 1),
    completed_at = NULL, cancelled_at = NULL, discarded_at = NULL,
    meta = (CASE WHEN j.meta ? 'wf_sent'
      THEN (j.meta - 'wf_sent') || jsonb_build_object('wf_next', j.meta->'wf_sent')
      ELSE j.meta END)
      || CASE WHEN j.meta ? 'wf_need' THEN jsonb_build_object('wf_wait', w.wait)
         ELSE '{}'::jsonb END
  FROM waits AS w WHERE j.id = w.id
  RETURNING j.id, j.queue, j.state::text AS state
), notified AS (
  SELECT count(pg_notify({insert_channel}, json_build_object('queue', q.queue)::text))::int AS n
  FROM (SELECT DISTINCT queue FROM retried WHERE state = 'available') AS q
)
SELECT id, state FROM retried WHERE (SELECT n FROM notified) IS NOT NULL ORDER BY id
"""

# The recorded results of the jobs a job waited for: every job whose wf_sent (or wf_next, for a
# job not sealed yet) holds its id.
WORKFLOW_UPSTREAM = """
SELECT id, state::text, meta FROM {p}.oban_jobs
WHERE meta @> jsonb_build_object('wf_sent', jsonb_build_array(%(id)s::bigint))
   OR meta @> jsonb_build_object('wf_next', jsonb_build_array(%(id)s::bigint))
ORDER BY id
"""

# -- lifeline repair --------------------------------------------------------------------------

# Jobs that reached a final state without telling their waiting jobs: cancelled or deleted by
# a person or another engine, discarded by a rescue with no attempts left. Sealed and released
# here, as the ack would have done.
REPAIR_UNSEALED = """
WITH RECURSIVE stuck AS (
  SELECT id FROM {p}.oban_jobs
  WHERE meta ? 'wf_next' AND state IN ('completed', 'cancelled', 'discarded')
  ORDER BY id
  LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED
), sealed AS (
  UPDATE {p}.oban_jobs AS j SET meta = {sealed_j}
  FROM stuck WHERE j.id = stuck.id AND j.meta ? 'wf_next'
  RETURNING j.id, j.state::text AS state, j.meta->'wf_sent' AS wf_next, j.meta->>'name' AS name
), roots AS (
  SELECT nx.value::bigint AS dep_id, s.id AS up_id, s.state AS up_state, s.name AS up_name,
    1 AS n
  FROM sealed AS s CROSS JOIN LATERAL jsonb_array_elements_text(s.wf_next) AS nx(value)
), wf_exclude AS (
  SELECT id FROM sealed
), {release}
SELECT (SELECT count(*) FROM sealed)::int, (SELECT count(*) FROM wf_moved)::int
WHERE (SELECT n FROM wf_notified) IS NOT NULL
"""

# Waiting jobs that wait for more jobs than still exist to tell them: the others were deleted.
# Checked a page at a time after %(after)s (the lifeline walks the suspended jobs in id order).
REPAIR_DELETED = """
WITH RECURSIVE page AS (
  SELECT d.id, (d.meta->>'wf_wait')::int AS wait FROM {p}.oban_jobs AS d
  WHERE d.state = 'suspended' AND d.id > %(after)s AND d.meta ? 'wf_wait'
  ORDER BY d.id
  LIMIT %(limit)s
), counted AS (
  SELECT p.id, p.wait, (SELECT count(*) FROM {p}.oban_jobs AS u
    WHERE u.meta @> jsonb_build_object('wf_next', jsonb_build_array(p.id)))::int AS telling
  FROM page AS p
), roots AS (
  SELECT c.id AS dep_id, NULL::bigint AS up_id, 'deleted'::text AS up_state,
    NULL::text AS up_name, c.wait - c.telling AS n
  FROM counted AS c WHERE c.telling < c.wait
), wf_exclude AS (
  SELECT NULL::bigint AS id WHERE false
), {release}
SELECT coalesce((SELECT max(id) FROM page), 0)::bigint, (SELECT count(*) FROM page)::int,
  (SELECT count(*) FROM wf_moved)::int
WHERE (SELECT n FROM wf_notified) IS NOT NULL
"""


class WorkflowQueries:
    """The statements above for one validated prefix."""

    def __init__(self, prefix: str, job_columns: str) -> None:
        p = quoted_prefix(prefix)
        tokens = {
            "{family}": FAMILY,
            "{release}": RELEASE,
            "{sealed_j}": _sealed("j.meta"),
            "{job_columns}": job_columns,
            "{insert_channel}": insert_channel_literal(prefix),
            "{now_utc}": NOW,
            "{error_at}": ERROR_AT,
            "{p}": p,
        }
        self.table = f"{p}.oban_jobs"
        for name in (
            "INSERT_WORKFLOW_JOBS",
            "WORKFLOW_JOBS",
            "WORKFLOW_STATUS",
            "WORKFLOW_COUNTS",
            "CANCEL_WORKFLOW",
            "RETRY_WORKFLOW",
            "WORKFLOW_UPSTREAM",
            "REPAIR_UNSEALED",
            "REPAIR_DELETED",
        ):
            text = globals()[name]
            for token, value in tokens.items():
                text = text.replace(token, value)
            setattr(self, name.lower(), text)

    insert_workflow_jobs: str
    workflow_jobs: str
    workflow_status: str
    workflow_counts: str
    cancel_workflow: str
    retry_workflow: str
    workflow_upstream: str
    repair_unsealed: str
    repair_deleted: str


def insert_channel_literal(prefix: str) -> str:
    """The insert channel as a SQL string literal (the prefix is validated: no quotes)."""
    return "'" + channel(prefix, "insert") + "'"
