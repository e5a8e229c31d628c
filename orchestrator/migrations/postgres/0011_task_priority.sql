-- Task priorities: the queue is ordered by rank (when the task was queued,
-- in µs, moved earlier by its priority; see engine/state.rs), then seq.
ALTER TABLE task_queue ADD COLUMN rank BIGINT NOT NULL DEFAULT 0;
DROP INDEX task_queue_type;
CREATE INDEX task_queue_type ON task_queue (task_type, rank, seq);

-- engine_load (0008) claims the first task by rank.
CREATE OR REPLACE FUNCTION engine_load(job_ids uuid[], worker_ids text[], claim_types text[])
RETURNS TABLE (k int2, n bigint, a text, b text, ts timestamptz, job uuid, rec jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    claimed record;
BEGIN
    IF claim_types IS NOT NULL THEN
        DELETE FROM task_queue q WHERE q.seq = (
            SELECT s.seq FROM task_queue s WHERE s.task_type = ANY(claim_types)
            ORDER BY s.rank, s.seq LIMIT 1 FOR UPDATE SKIP LOCKED)
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
