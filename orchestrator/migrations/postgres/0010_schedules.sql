-- Schedules' progress, shared by every instance: a slot is claimed by a
-- compare-and-set of last_slot, so each slot starts one job.
CREATE TABLE schedule_state (
    name      TEXT PRIMARY KEY,
    last_slot TIMESTAMPTZ NOT NULL,
    last_job  UUID,
    paused    BOOLEAN NOT NULL DEFAULT false,
    pending   BOOLEAN NOT NULL DEFAULT false
);

-- Idempotency keys: per client, the job a key names (claimed before the
-- job is created, so racing creates make one job).
CREATE TABLE idempotency_keys (
    owner      TEXT NOT NULL,
    key        TEXT NOT NULL,
    job_id     UUID NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (owner, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
