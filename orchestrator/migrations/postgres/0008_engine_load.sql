-- An engine event's scratch state in one call (see
-- orchestrator/src/engine/shared_db/scratch.rs). With `claim_types`, first
-- the oldest queued task of those types is claimed (deleted, skipping rows
-- other transactions hold) and its job joins `job_ids`; nothing is returned
-- when none is queued. Then the jobs named are locked in id order; then, in
-- a statement of its own (so its snapshot is taken once the locks are
-- held), their timers, the leases of those jobs and of the workers named,
-- and the workers holding any of them. One row per item, by kind `k`:
--   0 timer:   n = id, a = kind, b = task_id, ts = due_at, job = job_id
--   1 lease:   a = task_id, b = worker_id, ts = since, job = job_id
--   2 worker:  a = id, ts = last_seen, rec = record
--   3 job:     a = body, job = id (locked)
--   4 claimed: n = seq, a = task_id, b = task_type, job = job_id
CREATE FUNCTION engine_load(job_ids uuid[], worker_ids text[], claim_types text[])
RETURNS TABLE (k int2, n bigint, a text, b text, ts timestamptz, job uuid, rec jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    claimed record;
BEGIN
    IF claim_types IS NOT NULL THEN
        DELETE FROM task_queue q WHERE q.seq = (
            SELECT s.seq FROM task_queue s WHERE s.task_type = ANY(claim_types)
            ORDER BY s.seq LIMIT 1 FOR UPDATE SKIP LOCKED)
        RETURNING q.seq, q.job_id, q.task_id, q.task_type INTO claimed;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        job_ids := array_append(job_ids, claimed.job_id);
        RETURN QUERY SELECT 4::int2, claimed.seq, claimed.task_id, claimed.task_type,
            NULL::timestamptz, claimed.job_id, NULL::jsonb;
    END IF;
    RETURN QUERY SELECT 3::int2, NULL::bigint, j.body, NULL::text, NULL::timestamptz, j.id, NULL::jsonb
        FROM jobs j WHERE j.id = ANY(job_ids) ORDER BY j.id FOR UPDATE;
    RETURN QUERY
        WITH l AS MATERIALIZED (
            SELECT t.task_id, t.job_id, t.worker_id, t.since FROM task_leases t
            WHERE t.job_id = ANY(job_ids) OR t.worker_id = ANY(worker_ids))
        SELECT 0::int2, t.id, t.kind, t.task_id, t.due_at, t.job_id, NULL::jsonb
            FROM timers t WHERE t.job_id = ANY(job_ids)
        UNION ALL
        SELECT 1::int2, NULL::bigint, l.task_id, l.worker_id, l.since, l.job_id, NULL::jsonb FROM l
        UNION ALL
        SELECT 2::int2, NULL::bigint, w.id, NULL::text, w.last_seen, NULL::uuid, w.record
            FROM workers w WHERE w.id = ANY(worker_ids) OR w.id IN (SELECT l.worker_id FROM l);
END $$;
