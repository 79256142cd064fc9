-- oban_pro migration v003: the Python-side tables, as Oban.py's installer makes them, so that
-- Oban.py nodes (which rely on these defaults when they insert) and oban_pro share them.
--   oban_leaders: Python nodes elect their leader here, apart from Elixir's oban_peers.
--   oban_producers: one row per running queue per node; updated_at is the heartbeat.
--
-- creates: table oban_leaders
-- creates: table oban_producers
--
-- Placeholders: see v001_oban_jobs.sql.

DO $$
BEGIN
  IF NOT EXISTS (
    SELECT 1
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = {schema} AND c.relname = 'oban_leaders'
  ) THEN
    CREATE UNLOGGED TABLE {prefix}.oban_leaders (
      name text NOT NULL DEFAULT 'oban',
      node text NOT NULL,
      elected_at timestamp without time zone NOT NULL,
      expires_at timestamp without time zone NOT NULL,
      CONSTRAINT oban_leaders_pkey PRIMARY KEY (name)
    );
    COMMENT ON CONSTRAINT oban_leaders_pkey ON {prefix}.oban_leaders IS {marker};
  END IF;
END
$$;

DO $$
BEGIN
  IF NOT EXISTS (
    SELECT 1
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = {schema} AND c.relname = 'oban_producers'
  ) THEN
    CREATE UNLOGGED TABLE {prefix}.oban_producers (
      uuid uuid NOT NULL,
      name text NOT NULL DEFAULT 'oban',
      node text NOT NULL,
      queue text NOT NULL,
      meta jsonb NOT NULL DEFAULT '{}',
      started_at timestamp without time zone NOT NULL DEFAULT timezone('UTC', now()),
      updated_at timestamp without time zone NOT NULL DEFAULT timezone('UTC', now()),
      CONSTRAINT oban_producers_pkey PRIMARY KEY (uuid)
    );
    COMMENT ON CONSTRAINT oban_producers_pkey ON {prefix}.oban_producers IS {marker};
  END IF;
END
$$;
