-- oban_pro migration v002: Elixir Oban's leadership table (its V11), where Elixir nodes elect
-- their leader. oban_pro never writes it; it exists so that an Elixir app can share the schema.
--
-- creates: table oban_peers
--
-- Placeholders: see v001_oban_jobs.sql.

DO $$
BEGIN
  IF NOT EXISTS (
    SELECT 1
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = {schema} AND c.relname = 'oban_peers'
  ) THEN
    -- Elixir creates it logged, then SET UNLOGGED; creating it UNLOGGED gives the same table.
    CREATE UNLOGGED TABLE {prefix}.oban_peers (
      name text NOT NULL,
      node text NOT NULL,
      started_at timestamp without time zone NOT NULL,
      expires_at timestamp without time zone NOT NULL,
      CONSTRAINT oban_peers_pkey PRIMARY KEY (name)
    );
    COMMENT ON CONSTRAINT oban_peers_pkey ON {prefix}.oban_peers IS {marker};
  END IF;
END
$$;
