-- Batches (orchestrator/src/engine/shared_db/batch.rs): one call of
-- engine_load_batch serves the events and the takes of a batch. `claim_for`
-- names one worker per task wanted (a worker may appear more than once).
-- For each, in turn, unless the worker is unknown or offline:
--   - the head: the first queued task (by rank, then seq) of that worker's
--     skills that requires nothing of its worker, locked (skipping rows
--     other transactions hold);
--   - ahead of it (or anywhere, when there is none), at most 32 tasks that
--     do require something (`constrained`), read without a lock: the engine
--     matches them against the worker, and hands out one only under its
--     job's lock, which every take of that task needs.
-- Each such task's job joins `job_ids`, the workers named join
-- `worker_ids`. Nothing is deleted here: the write deletes what the engine
-- handed out (or found stale). The rest is as in engine_load (0008, 0011):
-- the jobs named are locked in id order, then, in a statement of its own
-- (so its snapshot is taken once the locks are held), their timers, the
-- leases of those jobs and of the workers named, and the workers holding
-- any of them. One row per item, by kind `k`:
--   0 timer:   n = id, a = kind, b = task_id, ts = due_at, job = job_id
--   1 lease:   a = task_id, b = worker_id, ts = since, job = job_id
--   2 worker:  a = id, ts = last_seen, rec = record
--   3 job:     a = body, job = id (locked)
--   4 queued:  n = seq, a = task_id, b = task_type, job = job_id, r = rank,
--              rec = the worker it was claimed for (a JSON string) for a
--              head, NULL for a task that requires something
--   5 key:     a = a concurrency key of those tasks, n = its tasks in flight
-- (r is NULL on the other kinds). Before the keys are counted, each is
-- locked (a transaction advisory lock, in key order) for the rest of the
-- transaction: two takes of tasks of one key, on any instances, count one
-- after the other.
-- engine_load (0011) stays for instances of the previous release during a
-- rolling upgrade.
ALTER TABLE task_queue ADD COLUMN constrained BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX task_queue_constrained ON task_queue (task_type, rank, seq) WHERE constrained;
-- A task's concurrency key, queued and in flight.
ALTER TABLE task_queue ADD COLUMN ckey TEXT;
ALTER TABLE task_leases ADD COLUMN ckey TEXT;
CREATE INDEX task_leases_ckey ON task_leases (ckey) WHERE ckey IS NOT NULL;

CREATE FUNCTION engine_load_batch(job_ids uuid[], worker_ids text[], claim_for text[])
RETURNS TABLE (k int2, n bigint, a text, b text, ts timestamptz, job uuid, rec jsonb, r bigint)
LANGUAGE plpgsql
-- Plain index scans only (each condition on one column, no bitmap scans):
-- a bitmap scan never marks the index entries of deleted rows as dead, and
-- the queue's and the leases' indexes fill with them between vacuums (each
-- claim and each load of a worker's leases then read ~700 dead entries).
SET enable_bitmapscan = off
AS $$
DECLARE
    head record;
    c record;
    wid text;
    types text[];
    seen bigint[] := '{}';
    keys text[] := '{}';
BEGIN
    IF claim_for IS NOT NULL THEN
        FOREACH wid IN ARRAY claim_for LOOP
            SELECT array_agg(s->>'name') INTO types
                FROM workers w, jsonb_array_elements(w.record->'skills') s
                WHERE w.id = wid AND w.record->>'status' IS DISTINCT FROM 'offline';
            CONTINUE WHEN types IS NULL;
            SELECT q.seq, q.rank, q.job_id, q.task_id, q.task_type INTO head
                FROM task_queue q
                WHERE q.task_type = ANY(types) AND NOT q.constrained AND q.seq <> ALL(seen)
                ORDER BY q.rank, q.seq LIMIT 1 FOR UPDATE SKIP LOCKED;
            FOR c IN SELECT q.seq, q.rank, q.job_id, q.task_id, q.task_type, q.ckey
                FROM task_queue q
                WHERE q.task_type = ANY(types) AND q.constrained AND q.seq <> ALL(seen)
                    AND (head.seq IS NULL OR (q.rank, q.seq) < (head.rank, head.seq))
                ORDER BY q.rank, q.seq LIMIT 32
            LOOP
                seen := seen || c.seq;
                job_ids := array_append(job_ids, c.job_id);
                IF c.ckey IS NOT NULL THEN
                    keys := keys || c.ckey;
                END IF;
                RETURN QUERY SELECT 4::int2, c.seq, c.task_id, c.task_type,
                    NULL::timestamptz, c.job_id, NULL::jsonb, c.rank;
            END LOOP;
            CONTINUE WHEN head.seq IS NULL;
            seen := seen || head.seq;
            job_ids := array_append(job_ids, head.job_id);
            RETURN QUERY SELECT 4::int2, head.seq, head.task_id, head.task_type,
                NULL::timestamptz, head.job_id, to_jsonb(wid), head.rank;
        END LOOP;
        worker_ids := worker_ids || claim_for;
        IF cardinality(keys) > 0 THEN
            PERFORM pg_advisory_xact_lock(hashtextextended(x.key, 7))
                FROM (SELECT DISTINCT unnest(keys) AS key ORDER BY 1) x;
            RETURN QUERY SELECT 5::int2, count(*), l.ckey, NULL::text, NULL::timestamptz,
                NULL::uuid, NULL::jsonb, NULL::bigint
                FROM task_leases l
                WHERE l.ckey = ANY(keys)
                GROUP BY l.ckey;
        END IF;
    END IF;
    RETURN QUERY SELECT 3::int2, NULL::bigint, j.body, NULL::text, NULL::timestamptz, j.id,
            NULL::jsonb, NULL::bigint
        FROM jobs j WHERE j.id = ANY(job_ids) ORDER BY j.id FOR UPDATE;
    RETURN QUERY
        WITH l AS MATERIALIZED (
            SELECT t.task_id, t.job_id, t.worker_id, t.since FROM task_leases t
                WHERE t.job_id = ANY(job_ids)
            UNION
            SELECT t.task_id, t.job_id, t.worker_id, t.since FROM task_leases t
                WHERE t.worker_id = ANY(worker_ids))
        SELECT 0::int2, t.id, t.kind, t.task_id, t.due_at, t.job_id, NULL::jsonb, NULL::bigint
            FROM timers t WHERE t.job_id = ANY(job_ids)
        UNION ALL
        SELECT 1::int2, NULL::bigint, l.task_id, l.worker_id, l.since, l.job_id, NULL::jsonb,
            NULL::bigint FROM l
        UNION ALL
        SELECT 2::int2, NULL::bigint, w.id, NULL::text, w.last_seen, NULL::uuid, w.record, NULL::bigint
            FROM workers w
            WHERE w.id = ANY(worker_ids || ARRAY(SELECT DISTINCT l.worker_id FROM l));
END $$;
