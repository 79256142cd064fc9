-- oban_pro migration v004: the sliding windows of rate-limited queues (oban_pro/limits.py).
--   One row per queue and partition: when its most recent jobs started (at most `allowed` of
--   them, only those within the period). Logged (unlike the lease tables): a rate limit must
--   hold across a node restart and a database restart, so its state outlives both.
--
-- creates: table oban_rate_limits
--
-- Placeholders: see v001_oban_jobs.sql.

DO $$
BEGIN
  IF NOT EXISTS (
    SELECT 1
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = {schema} AND c.relname = 'oban_rate_limits'
  ) THEN
    CREATE TABLE {prefix}.oban_rate_limits (
      queue text NOT NULL,
      key text NOT NULL DEFAULT '',
      starts timestamp without time zone[] NOT NULL DEFAULT '{}',
      CONSTRAINT oban_rate_limits_pkey PRIMARY KEY (queue, key)
    );
    COMMENT ON CONSTRAINT oban_rate_limits_pkey ON {prefix}.oban_rate_limits IS {marker};
  END IF;
END
$$;
