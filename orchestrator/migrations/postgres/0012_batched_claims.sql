-- Batches (orchestrator/src/engine/shared_db/batch.rs): one call of
-- engine_load_batch serves the events and the takes of a batch. `claim_for`
-- names one worker per task wanted (a worker may appear more than once):
-- for each, in turn,
-- the first queued task (by rank, then seq) of that worker's skills is
-- claimed — deleted, skipping rows other transactions hold — unless the
-- worker is unknown or offline, and its job joins `job_ids`; the workers
-- named there join `worker_ids`. The rest is as before (0008, 0011): the
-- jobs named are locked in id order, then, in a statement of its own (so
-- its snapshot is taken once the locks are held), their timers, the leases
-- of those jobs and of the workers named, and the workers holding any of
-- them. One row per item, by kind `k`:
--   0 timer:   n = id, a = kind, b = task_id, ts = due_at, job = job_id
--   1 lease:   a = task_id, b = worker_id, ts = since, job = job_id
--   2 worker:  a = id, ts = last_seen, rec = record
--   3 job:     a = body, job = id (locked)
--   4 claimed: n = seq, a = task_id, b = task_type, job = job_id,
--              rec = the worker it was claimed for (a JSON string), r = rank
-- (r is NULL on the other kinds).
-- engine_load (0011) stays for instances of the previous release during a
-- rolling upgrade.
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
    claimed record;
    wid text;
    types text[];
BEGIN
    IF claim_for IS NOT NULL THEN
        FOREACH wid IN ARRAY claim_for LOOP
            SELECT array_agg(s->>'name') INTO types
                FROM workers w, jsonb_array_elements(w.record->'skills') s
                WHERE w.id = wid AND w.record->>'status' IS DISTINCT FROM 'offline';
            CONTINUE WHEN types IS NULL;
            DELETE FROM task_queue q WHERE q.seq = (
                SELECT s.seq FROM task_queue s WHERE s.task_type = ANY(types)
                ORDER BY s.rank, s.seq LIMIT 1 FOR UPDATE SKIP LOCKED)
            RETURNING q.seq, q.job_id, q.task_id, q.task_type, q.rank INTO claimed;
            CONTINUE WHEN NOT FOUND;
            job_ids := array_append(job_ids, claimed.job_id);
            RETURN QUERY SELECT 4::int2, claimed.seq, claimed.task_id, claimed.task_type,
                NULL::timestamptz, claimed.job_id, to_jsonb(wid), claimed.rank;
        END LOOP;
        worker_ids := worker_ids || claim_for;
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
