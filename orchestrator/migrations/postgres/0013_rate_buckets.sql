-- Rate keys (orchestrator/src/engine/rates.rs): one bucket per key, the
-- instant its next task could go were none to go meanwhile. UNLOGGED: a
-- server crash empties it, which only gives every key its burst again.
-- Rows in the past hold nothing (a full bucket): maintenance prunes them.
CREATE UNLOGGED TABLE rate_buckets (
    key TEXT PRIMARY KEY,
    tat TIMESTAMPTZ NOT NULL
);

-- The buckets of `keys`, each locked first (a transaction advisory lock,
-- in key order, in a space of its own beside the concurrency keys') for
-- the rest of the transaction; then read in a statement of its own, so
-- its snapshot is taken once the locks are held. `us`: microseconds from
-- now() to the bucket's instant (negative when it is past).
CREATE FUNCTION engine_rate_load(keys text[])
RETURNS TABLE (key text, us bigint)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(x.k, 8))
        FROM (SELECT DISTINCT unnest(keys) AS k ORDER BY 1) x;
    RETURN QUERY SELECT b.key, (extract(epoch FROM (b.tat - now())) * 1000000)::bigint
        FROM rate_buckets b WHERE b.key = ANY(keys);
END $$;
