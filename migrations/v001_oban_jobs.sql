-- oban_pro migration v001: the job table, exactly as Elixir Oban's migrations V01..V14 leave it.
--
-- creates: type oban_job_state
-- creates: table oban_jobs
--
-- Placeholders (replaced by oban_pro.migrations before running): {prefix} is the schema as a
-- quoted identifier ("public"), {schema} the same name as a string literal ('public') for
-- catalog look-ups, {marker} the literal 'oban_pro:<this file>' that tells `migrate down` which
-- objects oban_pro made.
--
-- Each object is created only when it is missing, and everything that belongs to oban_jobs
-- (constraints, indexes, the version comment) only together with the table: an oban_jobs made by
-- Elixir Oban or Oban.py is adopted as it is, never altered.

-- The enum in Elixir's order (V01 + 'cancelled' from V09 + 'suspended' before 'scheduled' from
-- V14). An enum made by Oban.py (suspended after scheduled) is kept: order only matters for
-- ORDER BY state.
DO $$
BEGIN
  IF NOT EXISTS (
    SELECT 1
    FROM pg_type t
    JOIN pg_namespace n ON n.oid = t.typnamespace
    WHERE n.nspname = {schema} AND t.typname = 'oban_job_state'
  ) THEN
    CREATE TYPE {prefix}.oban_job_state AS ENUM (
      'available',
      'suspended',
      'scheduled',
      'executing',
      'retryable',
      'completed',
      'discarded',
      'cancelled'
    );
    COMMENT ON TYPE {prefix}.oban_job_state IS {marker};
  END IF;
END
$$;

DO $$
BEGIN
  IF NOT EXISTS (
    SELECT 1
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = {schema} AND c.relname = 'oban_jobs'
  ) THEN
    -- Columns in the order Elixir's migrations add them (V01, V03, V08, V09), so that
    -- `SELECT *` and tools that read by position see the same table as on an Elixir database.
    CREATE TABLE {prefix}.oban_jobs (
      id bigserial,
      state {prefix}.oban_job_state NOT NULL DEFAULT 'available',
      queue text NOT NULL DEFAULT 'default',
      worker text NOT NULL,
      args jsonb NOT NULL DEFAULT '{}',
      errors jsonb[] NOT NULL DEFAULT ARRAY[]::jsonb[],
      attempt integer NOT NULL DEFAULT 0,
      max_attempts integer NOT NULL DEFAULT 20,
      inserted_at timestamp without time zone NOT NULL DEFAULT timezone('UTC', now()),
      scheduled_at timestamp without time zone NOT NULL DEFAULT timezone('UTC', now()),
      attempted_at timestamp without time zone,
      completed_at timestamp without time zone,
      attempted_by text[],
      discarded_at timestamp without time zone,
      priority integer NOT NULL DEFAULT 0,
      tags text[] DEFAULT ARRAY[]::text[],
      meta jsonb DEFAULT '{}',
      cancelled_at timestamp without time zone,
      CONSTRAINT oban_jobs_pkey PRIMARY KEY (id),
      CONSTRAINT worker_length CHECK (char_length(worker) > 0 AND char_length(worker) < 128),
      CONSTRAINT queue_length CHECK (char_length(queue) > 0 AND char_length(queue) < 128),
      CONSTRAINT positive_max_attempts CHECK (max_attempts > 0),
      CONSTRAINT attempt_range CHECK (attempt BETWEEN 0 AND max_attempts)
    );

    -- Elixir's V12 adds this one NOT VALID; keep it so, the catalogs then match exactly.
    ALTER TABLE {prefix}.oban_jobs
      ADD CONSTRAINT non_negative_priority CHECK (priority >= 0) NOT VALID;

    CREATE INDEX oban_jobs_state_queue_priority_scheduled_at_id_index
      ON {prefix}.oban_jobs USING btree (state, queue, priority, scheduled_at, id);
    CREATE INDEX oban_jobs_args_index ON {prefix}.oban_jobs USING gin (args);
    CREATE INDEX oban_jobs_meta_index ON {prefix}.oban_jobs USING gin (meta);
    CREATE INDEX oban_jobs_state_cancelled_at_index
      ON {prefix}.oban_jobs USING btree (state, cancelled_at);
    CREATE INDEX oban_jobs_state_discarded_at_index
      ON {prefix}.oban_jobs USING btree (state, discarded_at);

    -- Elixir reads this comment as the migrated version. It is written only here, on a table
    -- made by this very statement: a table made by anyone else keeps the comment it has.
    COMMENT ON TABLE {prefix}.oban_jobs IS '14';

    -- The ownership marker goes on the primary key, never on the table or its columns: Elixir
    -- finds its version by joining pg_description on the table's oid alone, so any second
    -- comment with that objoid (a column comment) would make it read version 0.
    COMMENT ON CONSTRAINT oban_jobs_pkey ON {prefix}.oban_jobs IS {marker};
  END IF;
END
$$;
